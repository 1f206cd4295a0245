"""ckptio never imports TensorFlow: checked statically (every import in ckptio/) and at run time
(a subprocess whose import system refuses tensorflow, tf_keras and keras, and records any attempt,
opens, reads, verifies and lists real corpus checkpoints through the API and the CLI).
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "ckptio"
FORBIDDEN = ("tensorflow", "tf_keras", "keras")


def _forbidden(module: str | None) -> bool:
    return bool(module) and module.split(".")[0] in FORBIDDEN


def test_no_module_under_ckptio_imports_tensorflow():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 20
    offenders = []
    for path in files:
        text = path.read_text(encoding="utf-8")
        tree = ast.parse(text, filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                offenders += [
                    f"{path.relative_to(REPO)}:{node.lineno}: import {a.name}" for a in node.names if _forbidden(a.name)
                ]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and _forbidden(node.module):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}: from {node.module} import ...")
        # dynamic imports by name
        for m in re.finditer(r"""(import_module|__import__|find_spec)\(\s*["'](tensorflow|tf_keras|keras)\b""", text):
            offenders.append(f"{path.relative_to(REPO)}: {m.group(0)}")
    assert offenders == []


_SCRIPT = r"""
import contextlib, hashlib, importlib.abc, io, json, struct, sys

attempts = []

class RefuseTensorFlow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "tf_keras", "keras"):
            attempts.append(name)
            raise ImportError(f"{name} is blocked in this test")
        return None

sys.meta_path.insert(0, RefuseTensorFlow())
try:
    import tensorflow  # noqa: F401
    blocked = False
except ImportError:
    blocked = True
attempts.clear()

import numpy as np
import ckptio
from ckptio.cli.main import main
from ckptio.verify import verify

def hash_array(a):
    h = hashlib.sha256()
    if a.dtype == object:
        for e in a.flat:
            h.update(struct.pack("<Q", len(e)))
            h.update(e)
    else:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()

corpus = sys.argv[1]
manifest = json.load(open(corpus + "/MANIFEST.json"))
out = {"blocked": blocked, "checked": {}, "mismatches": [], "cli": {}}
for rec in manifest["checkpoints"]:
    if rec["short_name"] not in sys.argv[2:]:
        continue
    prefix = corpus + "/" + rec["prefix"]
    with ckptio.open(prefix) as ck:
        for name, want in rec["tensors"].items():
            t = ck[name]
            if (t.dtype_name, list(t.shape), hash_array(t.read())) != (want["dtype"], want["shape"], want["sha256"]):
                out["mismatches"].append(rec["short_name"] + ":" + name)
        out["checked"][rec["short_name"]] = [len(ck), verify(ck).ok]
        first = sorted(rec["tensors"])[0]
    codes = []
    for argv in (["ls", prefix], ["ls", "--json", prefix], ["show", prefix, first], ["verify", "-q", prefix]):
        with contextlib.redirect_stdout(io.StringIO()):
            codes.append(main(argv))
    out["cli"][rec["short_name"]] = codes
out["attempts"] = attempts
out["tensorflow_loaded"] = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "tf_keras", "keras"))
print(json.dumps(out))
"""

CHECKPOINTS = ["tf2_eager_vae_adam", "tf1_t2t_transformer", "v1_vocal_adam", "sm_a2c_2shard", "tf2_bert_lite"]


def test_open_read_verify_without_tensorflow(corpus):
    p = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(corpus), *CHECKPOINTS],
        capture_output=True,
        text=True,
        cwd=str(REPO),
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["blocked"] is True  # the finder really refuses tensorflow
    assert sorted(out["checked"]) == sorted(CHECKPOINTS)
    assert all(ok for _, ok in out["checked"].values()), out["checked"]
    assert out["mismatches"] == []
    assert out["cli"] == {name: [0, 0, 0, 0] for name in CHECKPOINTS}
    assert out["attempts"] == [], "ckptio tried to import TensorFlow"
    assert out["tensorflow_loaded"] == []
