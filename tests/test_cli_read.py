"""The read-side CLI (ls, show, verify) through ckptio.cli.main.main(argv), plus `python -m ckptio`
and the import-cost property of the entry point.

Exit codes: 0 ok, 1 bad checkpoint (or missing tensor), 2 usage.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import ckptio
from ckptio.bundle.writer import BundleWriter
from ckptio.cli.main import main

REPO = Path(__file__).resolve().parents[1]

NAMES = [
    "beta1_power",
    "beta2_power",
    "global_step",
    "dense/bias",
    "dense/bias/Adam",
    "dense/bias/Adam_1",
    "dense/kernel",
    "dense/kernel/Adam",
    "dense/kernel/Adam_1",
    "emb",
    "vocab",
]
OPTIMIZER = {
    "beta1_power",
    "beta2_power",
    "dense/bias/Adam",
    "dense/bias/Adam_1",
    "dense/kernel/Adam",
    "dense/kernel/Adam_1",
}


@pytest.fixture
def tf1(tmp_path):
    """A TF1-style Adam checkpoint written by our writer."""
    prefix = str(tmp_path / "model.ckpt-10")
    rng = np.random.RandomState(0)
    with BundleWriter(prefix) as w:
        w.add_array("beta1_power", np.float32(0.81))
        w.add_array("beta2_power", np.float32(0.998))
        w.add_array("global_step", np.int64(10))
        for v, shape in (("dense/bias", (2,)), ("dense/kernel", (3, 2))):
            w.add_array(v, rng.standard_normal(shape).astype(np.float32))
            w.add_array(v + "/Adam", np.zeros(shape, np.float32))
            w.add_array(v + "/Adam_1", np.ones(shape, np.float32))
        w.add_array("emb", np.arange(1000, dtype=np.float32).reshape(100, 10))
        w.add_array("vocab", np.array([b"the", b"cat", b""], dtype=object))
        w.finish()
    return prefix


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --------------------------------------------------------------------------- ls


def test_ls_human(tf1, capsys):
    code, out, err = run(capsys, "ls", tf1)
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert len(lines) == len(NAMES) + 1
    rows = {line.split()[0]: line for line in lines[:-1]}
    assert sorted(rows) == sorted(NAMES)
    assert "float32" in rows["dense/kernel"] and "[3, 2]" in rows["dense/kernel"]
    assert "24 B" in rows["dense/kernel"]
    for name in NAMES:
        marked = "[optimizer]" in rows[name]
        assert marked == (name in OPTIMIZER), name
    assert "[step]" in rows["global_step"]
    assert "string" in rows["vocab"]
    assert lines[-1].startswith(f"{len(NAMES)} tensors") and "v2" in lines[-1]


def test_ls_json(tf1, capsys):
    code, out, _ = run(capsys, "ls", "--json", tf1)
    assert code == 0
    doc = json.loads(out)
    entries = {e["name"]: e for e in doc["entries"]}
    assert sorted(entries) == sorted(NAMES)
    assert entries["dense/kernel"]["dtype"] == "float32"
    assert entries["dense/kernel"]["shape"] == [3, 2] and entries["dense/kernel"]["nbytes"] == 24
    assert entries["global_step"]["dtype"] == "int64" and entries["global_step"]["shape"] == []
    assert entries["emb"]["nbytes"] == 4000
    assert {n for n, e in entries.items() if e["role"] == "optimizer"} == OPTIMIZER
    assert doc["num_tensors"] == len(NAMES) and doc["format"] == "v2" and doc["num_shards"] == 1
    with ckptio.open(tf1) as ck:
        assert doc["total_bytes"] == sum(ck[n].nbytes for n in ck)


def test_ls_match(tf1, capsys):
    code, out, _ = run(capsys, "ls", "--json", "--match", r"kernel", tf1)
    assert code == 0
    assert [e["name"] for e in json.loads(out)["entries"]] == [
        "dense/kernel",
        "dense/kernel/Adam",
        "dense/kernel/Adam_1",
    ]
    code, out, _ = run(capsys, "ls", tf1, "--match", "^beta")
    assert code == 0 and [ln.split()[0] for ln in out.splitlines()[:-1]] == ["beta1_power", "beta2_power"]
    code, out, err = run(capsys, "ls", tf1, "--match", "(unclosed")
    assert code == 2 and "--match" in err and out == ""


def test_ls_tf2_optimizer_marked(corpus, capsys):
    code, out, _ = run(capsys, "ls", "--json", str(corpus / "tf2_eager_vae_adam"))
    assert code == 0
    roles = {e["name"]: e["role"] for e in json.loads(out)["entries"]}
    assert all(r == "optimizer" for n, r in roles.items() if ".OPTIMIZER_SLOT/" in n)
    assert all(r == "weight" for n, r in roles.items() if n.endswith("/kernel/.ATTRIBUTES/VARIABLE_VALUE"))
    assert roles["_CHECKPOINTABLE_OBJECT_GRAPH"] == "graph"


def test_ls_v1(corpus, capsys):
    code, out, _ = run(capsys, "ls", str(corpus / "v1_savenet" / "save_net.ckpt"))
    assert code == 0 and "weights_3" in out and "v1" in out.splitlines()[-1]


# --------------------------------------------------------------------------- show


def test_show_stats_and_preview(tf1, capsys):
    code, out, err = run(capsys, "show", tf1, "emb")
    assert code == 0 and err == ""
    assert out.startswith("emb: float32[100, 10], 4000 bytes")
    assert "min 0" in out and "max 999" in out and "mean 499.5" in out
    assert "..." in out  # a preview, not every value
    assert len(out) < 2000


def test_show_all(tf1, capsys):
    code, out, _ = run(capsys, "show", "--all", tf1, "emb")
    assert code == 0 and "..." not in out
    numbers = [float(x) for x in out.split("\n", 3)[3].replace("[", " ").replace("]", " ").split()]
    assert numbers == list(range(1000))


def test_show_json(tf1, capsys):
    code, out, _ = run(capsys, "show", "--json", tf1, "dense/kernel")
    assert code == 0
    doc = json.loads(out)
    with ckptio.open(tf1) as ck:
        value = ck["dense/kernel"].read()
    assert doc["name"] == "dense/kernel" and doc["dtype"] == "float32" and doc["shape"] == [3, 2]
    assert doc["nbytes"] == 24 and doc["stats"]["count"] == 6
    assert doc["stats"]["min"] == pytest.approx(float(value.min()))
    assert doc["stats"]["mean"] == pytest.approx(float(value.mean()))
    assert "values" not in doc
    code, out, _ = run(capsys, "show", "--json", "--all", tf1, "dense/kernel")
    assert np.allclose(np.array(json.loads(out)["values"]), value)
    code, out, _ = run(capsys, "show", "--json", "--all", tf1, "vocab")
    assert code == 0 and json.loads(out)["values"] == ["the", "cat", ""]


def test_show_scalar_and_string(tf1, capsys):
    code, out, _ = run(capsys, "show", tf1, "global_step")
    assert code == 0 and "int64[]" in out and "10" in out.splitlines()[-1]
    code, out, _ = run(capsys, "show", tf1, "vocab")
    assert code == 0 and "b'cat'" in out


def test_show_missing_name_suggests(tf1, capsys):
    code, out, err = run(capsys, "show", tf1, "dense/kernal")
    assert code == 1 and out == ""
    assert len(err.strip().splitlines()) == 1
    assert "dense/kernal" in err and "did you mean" in err and "dense/kernel" in err


# --------------------------------------------------------------------------- verify


def test_verify_clean(tf1, capsys):
    code, out, err = run(capsys, "verify", tf1)
    assert code == 0 and out.startswith(f"OK: {len(NAMES)} tensors")
    code, out, _ = run(capsys, "verify", "--json", tf1)
    doc = json.loads(out)
    assert code == 0 and doc["ok"] is True and doc["problems"] == [] and doc["tensors"] == len(NAMES)


def test_verify_lists_every_corrupted_tensor(tf1, capsys):
    with ckptio.open(tf1) as ck:
        targets = {n: ck[n].entry for n in ("dense/kernel", "emb")}
    path = tf1 + ".data-00000-of-00001"
    data = bytearray(Path(path).read_bytes())
    for e in targets.values():
        data[e.offset + e.size // 2] ^= 0x10
    Path(path).write_bytes(bytes(data))
    code, out, err = run(capsys, "verify", tf1)
    assert code == 1
    problem_lines = [ln for ln in err.splitlines() if ln.startswith("ckptio: ")]
    assert len(problem_lines) == 2
    assert any("entry dense/kernel:" in ln for ln in problem_lines)
    assert any("entry emb:" in ln for ln in problem_lines)
    assert all("checksum" in ln for ln in problem_lines)
    assert "CORRUPT: 2 problem(s)" in err
    code, out, _ = run(capsys, "verify", "--json", tf1)
    doc = json.loads(out)
    assert code == 1 and doc["ok"] is False
    assert sorted(p["entry"] for p in doc["problems"]) == ["dense/kernel", "emb"]
    # the other tensors still read fine
    with ckptio.open(tf1) as ck:
        assert ck["dense/bias"].read().shape == (2,)


def test_verify_missing_shard(tf1, capsys):
    Path(tf1 + ".data-00000-of-00001").unlink()
    code, _, err = run(capsys, "verify", tf1)
    assert code == 1 and "missing" in err


def test_verify_corpus_v1(corpus, capsys):
    code, out, _ = run(capsys, "verify", str(corpus / "v1_vocal_adam"))
    assert code == 0 and out.startswith("OK: 39 tensors")


# --------------------------------------------------------------------------- errors, help


def test_not_a_checkpoint(tmp_path, capsys):
    code, out, err = run(capsys, "ls", str(tmp_path / "nope"))
    assert code == 1 and out == ""
    assert err.startswith("ckptio: ") and len(err.strip().splitlines()) == 1


def test_usage_errors(capsys):
    code, _, err = run(capsys)
    assert code == 2
    code, _, err = run(capsys, "ls")
    assert code == 2 and "error" in err
    code, _, err = run(capsys, "frobnicate")
    assert code == 2


@pytest.mark.parametrize(
    "command,options",
    [
        ("ls", ["--json", "--match"]),
        ("show", ["--all", "--json"]),
        ("verify", ["--json"]),
    ],
)
def test_command_help(capsys, command, options):
    code, out, _ = run(capsys, command, "--help")
    assert code == 0
    assert out.startswith(f"usage: ckptio {command}")
    for opt in options:
        assert opt in out


def test_top_level_help(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for command in ("ls", "show", "verify"):
        assert command in out


def _python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args] if not code else [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=str(REPO),
        timeout=120,
    )


def test_python_m_ckptio_help():
    p = _python("", "-m", "ckptio", "--help")
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("usage: ckptio")
    for command in ("ls", "show", "verify"):
        assert f"    {command} " in p.stdout


@pytest.mark.parametrize(
    "step",
    [
        "m.build_parser(load_all=False)",
        "m.main(['--help'])",
    ],
)
def test_cli_startup_imports_neither_numpy_nor_protobuf(step):
    """`import ckptio.cli.main` + the top-level parser stay light (the benchmark times it)."""
    code = (
        "import contextlib, io, json, sys\n"
        "import ckptio.cli.main as m\n"
        f"with contextlib.redirect_stdout(io.StringIO()):\n    {step}\n"
        "heavy = sorted(k for k in sys.modules if k == 'numpy' or k.startswith('numpy.')\n"
        "               or k == 'google.protobuf' or k.startswith('google.protobuf.'))\n"
        "print(json.dumps(heavy))\n"
    )
    p = _python(code)
    assert p.returncode == 0, p.stderr
    heavy = json.loads(p.stdout.strip().splitlines()[-1])
    roots = sorted({"google.protobuf" if h.startswith("google.") else "numpy" for h in heavy})
    assert heavy == [], f"imported at startup: {roots}"


@pytest.fixture
def many(tmp_path):
    """3000 entries: `ls` prints far more than a pipe buffer holds."""
    prefix = str(tmp_path / "many" / "model.ckpt")
    with BundleWriter(prefix) as w:
        for i in range(3000):
            w.add_array(f"block_{i:04d}/w", np.zeros(2, np.float32))
        w.finish()
    return prefix


def test_process_exit_keeps_output_and_exit_code(many, tmp_path, capsys):
    """`python -m ckptio` skips interpreter teardown: its piped output must still be complete
    and its exit code the one main() returned."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # block-buffered, as usual
    for argv in (["ls", many, "--json"], ["verify", many]):  # one large write; one short line left in the buffer
        code, expected, _ = run(capsys, *argv)
        p = subprocess.run(
            [sys.executable, "-m", "ckptio", *argv], capture_output=True, text=True, cwd=str(REPO), env=env, timeout=120
        )
        untimed = [re.sub(r" in [0-9.]+ s .*", "", text) for text in (p.stdout, expected)]
        assert p.returncode == code and untimed[0] == untimed[1] and expected.endswith("\n")
    missing = str(tmp_path / "nowhere" / "model.ckpt")
    code, _, err = run(capsys, "verify", missing)
    p = _python("", "-m", "ckptio", "verify", missing)
    assert code == 1 and (p.returncode, p.stderr) == (code, err) and len(err.splitlines()) == 1


def test_process_exit_after_reader_left(many):
    """A reader that stops early (`| head`) gets no traceback and no hang."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "ckptio", "ls", many], cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout.read(10)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0 and "Traceback" not in err, err
