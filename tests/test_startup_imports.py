"""Start-up cost of the CLI: `strip` and `ls` load no typing or numpy, `import ckptio` loads nothing
heavy, and the lazy package still exports every public name, with `ckptio.rewrite` and `ckptio.verify`
the functions. dataclasses (and the inspect it imports, ~5 ms) is loaded: it is how ckptio declares
its value types (tests/test_value_types.py).

Each check runs in a fresh interpreter: this one has long since imported everything.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from ckptio.bundle.writer import BundleWriter

REPO = Path(__file__).resolve().parents[1]
SLOW = ("typing", "inspect")  # no ckptio module imports these, even lazily

# Runs `ckptio strip` and `ckptio ls` in-process, then reports what they imported.
STRIP_AND_LS = """
import json, sys
before = set(sys.modules)
from ckptio.cli.main import main
codes = [main(["strip", sys.argv[1], sys.argv[2]]), main(["ls", sys.argv[2]])]
watched = ("dataclasses", "typing", "inspect", "numpy")
print(json.dumps({"codes": codes, "preloaded": [m for m in watched if m in before],
                  "loaded": [m for m in watched if m in sys.modules and m not in before],
                  "files": sorted(m.__file__ for n, m in sys.modules.items()
                                  if n.split(".")[0] == "ckptio" and getattr(m, "__file__", None))}))
"""


def _python(code: str, *args: str) -> dict:
    """Run code in a new interpreter; its last line of output, as JSON."""
    p = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=str(REPO), timeout=120)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


def _imported_roots(path: str) -> set[str]:
    """Top-level packages a module imports anywhere in its source (lazy imports included)."""
    roots = set()
    for node in ast.walk(ast.parse(Path(path).read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_strip_and_ls_import_no_typing_or_numpy(tmp_path):
    src, out = str(tmp_path / "in" / "model.ckpt"), str(tmp_path / "out" / "model.ckpt")
    with BundleWriter(src) as w:
        w.add_array("dense/kernel", np.ones((4, 3), np.float32))
        w.add_array("dense/kernel/Adam", np.zeros((4, 3), np.float32))
        w.finish()
    report = _python(STRIP_AND_LS, src, out)
    assert report["codes"] == [0, 0]
    assert Path(out + ".index").is_file()
    # Nothing watched may be loaded by the commands but dataclasses and the inspect it imports, and
    # typing, which this check cannot see: site start-up may load it first (a .pth file's imports
    # can), and google.protobuf imports it.
    assert set(report["loaded"]) - {"typing"} <= {"dataclasses", "inspect"}
    assert "numpy" not in report["loaded"]
    # So, for typing and inspect: no ckptio module the commands loaded imports them, even lazily.
    assert len(report["files"]) > 20
    offenders = {Path(f).relative_to(REPO).as_posix(): sorted(_imported_roots(f) & set(SLOW)) for f in report["files"]}
    assert {f: m for f, m in offenders.items() if m} == {}


def test_import_ckptio_loads_only_the_package_and_its_errors():
    report = _python(
        "import json, sys\nbefore = set(sys.modules)\nimport ckptio\n"
        "missing = sorted(set(ckptio.__all__) - set(dir(ckptio)))\n"
        "print(json.dumps({'ckptio': sorted(m for m in sys.modules if m.split('.')[0] == 'ckptio'),\n"
        "                  'protobuf': 'google.protobuf' in sys.modules, 'missing': missing,\n"
        "                  'slow': [m for m in ('numpy', 'typing') if m in sys.modules and m not in before]}))"
    )
    assert report == {"ckptio": ["ckptio", "ckptio.errors"], "protobuf": False, "missing": [], "slow": []}


# `from ckptio import rewrite` and `ckptio.rewrite` must give the function however the
# submodule of the same name was first imported: the import system then sets the package's
# attribute to the submodule.
PUBLIC_NAMES = """
import json, sys
{first}
import ckptio
from ckptio import rewrite, verify
import ckptio.verify as verify_as
import ckptio.rewrite as rewrite_as
function = type(lambda: None)
print(json.dumps({{
    "functions": [type(f) is function for f in (rewrite, verify, ckptio.rewrite, ckptio.verify, verify_as,
                                                 rewrite_as)],
    "modules": [sys.modules["ckptio.rewrite"].rewrite is rewrite, sys.modules["ckptio.verify"].verify is verify],
    "all": {{name: "class" if isinstance(getattr(ckptio, name), type) else type(getattr(ckptio, name)).__name__
            for name in ckptio.__all__}},
}}))
"""


def test_public_names_resolve_and_rewrite_verify_are_functions():
    for first in (
        "",
        "from ckptio.rewrite import make_plan\nfrom ckptio.verify import Report",
        "import ckptio.rewrite, ckptio.verify",
    ):
        report = _python(PUBLIC_NAMES.format(first=first))
        assert report["functions"] == [True] * 6, first
        assert report["modules"] == [True, True], first
        kinds = report["all"]
        assert (
            len(kinds) == 35
        )  # + diff, fit, merge, plans, MismatchError, OutputBusyError, StateFileWarning, LfsPointerError
        assert {name for name, kind in kinds.items() if kind != "class"} == {
            "open",
            "rewrite",
            "verify",
            "diff",
            "fit",
            "merge",
            "plan_rewrite",
            "save_plan",
            "load_plan",
            "run_plan",
            "commit_plan",
        }
        assert kinds["open"] == kinds["rewrite"] == kinds["verify"] == "function"


# `ls` and an export to safetensors read the index through the fast entry and header parse
# (bundle/entry.py): protobuf (~20 ms to import) is loaded only for what that parse hands over.
NO_PROTOBUF = """
import json, sys
from ckptio.cli.main import main
codes = [main(["ls", "--json", sys.argv[1]]), main(["strip", sys.argv[1], sys.argv[2]]), main(["ls", sys.argv[2]])]
print(json.dumps({"codes": codes, "protobuf": sorted(m for m in sys.modules if m.startswith("google.protobuf"))}))
"""


def test_ls_and_safetensors_export_import_no_protobuf(tmp_path):
    src, out = str(tmp_path / "in" / "model.ckpt"), str(tmp_path / "out" / "model.safetensors")
    with BundleWriter(src) as w:
        w.add_array("dense/kernel", np.ones((4, 3), np.float32))
        w.add_array("dense/kernel/Adam", np.zeros((4, 3), np.float32))
        w.finish()
    report = _python(NO_PROTOBUF, src, out)
    assert report == {"codes": [0, 0, 0], "protobuf": []}
