"""Imports point one way among the modules split out of large ones (issue 13): the pieces never
import the front modules that re-export them, and sstable/ knows nothing of bundle/ or doctor."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "ckptio"


def _imports(path: Path) -> set[str]:
    """Absolute ckptio module names a file imports anywhere (lazy imports included)."""
    package = ".".join(path.relative_to(PKG.parent).with_suffix("").parts)
    if path.name != "__init__.py":
        package = package.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            out.add(name)
            out.update(f"{name}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {n for n in out if n.split(".")[0] == "ckptio"}


def _reaches(imports: set[str], target: str) -> bool:
    return any(n == target or n.startswith(target + ".") for n in imports)


def test_objgraph_pieces_do_not_import_the_front_module():
    for name in (
        "objgraph_model",
        "objgraph_check",
        "objgraph_moves",
        "objgraph_select",
        "objgraph_rekey",
        "objgraph_strip",
        "objgraph_rename",
        "objgraph_edit",
    ):
        imports = _imports(PKG / f"{name}.py")
        assert "ckptio.objgraph" not in imports, name
        assert not any(n.startswith("ckptio.objgraph.") for n in imports), name


def test_objgraph_model_is_the_bottom():
    imports = _imports(PKG / "objgraph_model.py")
    assert not any(
        _reaches(imports, f"ckptio.{m}")
        for m in (
            "objgraph_check",
            "objgraph_edit",
            "objgraph_moves",
            "objgraph_select",
            "objgraph_rekey",
            "objgraph_strip",
            "objgraph_rename",
            "transform",
        )
    ), imports


def test_objgraph_edit_pieces_do_not_import_the_edit_front():
    for name in ("objgraph_rekey", "objgraph_strip", "objgraph_rename"):
        imports = _imports(PKG / f"{name}.py")
        assert not _reaches(imports, "ckptio.objgraph_edit"), name
    assert not _reaches(_imports(PKG / "objgraph_rekey.py"), "ckptio.objgraph_strip")
    assert not _reaches(_imports(PKG / "objgraph_rekey.py"), "ckptio.objgraph_rename")


def test_key_roles_do_not_import_the_steps():
    assert not _reaches(_imports(PKG / "optimizer_keys.py"), "ckptio.transform")


def test_sstable_imports_nothing_about_checkpoints():
    for path in (PKG / "sstable").glob("*.py"):
        imports = _imports(path)
        for above in ("ckptio.bundle", "ckptio.doctor", "ckptio.checkpoint", "ckptio.archive"):
            assert not _reaches(imports, above), (path.name, above)


def test_archive_and_doctor_pieces_do_not_import_their_package_front():
    for package in ("archive", "doctor"):
        for path in (PKG / package).glob("*.py"):
            if path.name != "__init__.py":
                imports = _imports(path)
                assert f"ckptio.{package}" not in imports, path


def test_output_side_does_not_import_the_sources():
    assert not _reaches(_imports(PKG / "output.py"), "ckptio.io")
    assert not _reaches(_imports(PKG / "store" / "atomic.py"), "ckptio.io")


def test_store_imports_nothing_about_checkpoints():
    """store/ knows where bytes live and nothing of what they mean (the tar codec and stream live there too)."""
    above = ("bundle", "sstable", "checkpoint", "archive", "doctor", "remote", "sources", "rewrite", "verify", "cli")
    for path in (PKG / "store").glob("*.py"):
        imports = _imports(path)
        for name in above:
            assert not _reaches(imports, f"ckptio.{name}"), (path.name, name)


def test_split_pieces_do_not_import_their_front_module():
    for piece, front in (
        ("rewrite_plan", "rewrite"),
        ("fit_write", "fit"),
        ("optimizer_keys", "transform"),
        ("merge_job", "merge"),
        ("formats/safetensors_header", "formats.safetensors"),
        ("formats/safetensors_write", "formats.safetensors"),
    ):
        imports = _imports(PKG / f"{piece}.py")
        assert f"ckptio.{front}" not in imports and not any(n.startswith(f"ckptio.{front}.") for n in imports), (
            piece,
            front,
        )


def _module_graph() -> dict[str, set[str]]:
    """Every ckptio module -> the ckptio modules it imports anywhere in its file (lazy and TYPE_CHECKING
    imports included). `from .x import name` counts as importing x.name when that is a module, else x;
    a module importing its own parent package (or the package ckptio) is no edge: Python runs the
    parent's __init__ first anyway, and the parent is the front that re-exports it."""
    files = {}
    for path in PKG.rglob("*.py"):
        if "_proto" in path.parts:
            continue
        name = ".".join(path.relative_to(PKG.parent).with_suffix("").parts)
        files[name.removesuffix(".__init__")] = path
    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package
                for _ in range(max(node.level - 1, 0)):
                    base = base.rpartition(".")[0]
                module = (f"{base}.{node.module}" if node.module else base) if node.level else (node.module or "")
                targets = [module] + [f"{module}.{a.name}" for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in files:
                    target = target.rpartition(".")[0]
                if target and target != name and not name.startswith(target + "."):
                    found.add(target)
        graph[name] = found
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that reach each other (strongly connected components of more than one)."""
    reach = {}
    for start in graph:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        reach[start] = seen
    groups, done = [], set()
    for m in sorted(graph):
        if m not in done and m in reach[m]:
            group = sorted(x for x in graph if x == m or (x in reach[m] and m in reach[x]))
            groups.append(group)
            done.update(group)
    return groups


def test_no_import_cycles_among_ckptio_modules():
    """Imports point one way, down the layers (issue 13): no two modules reach each other, lazily or not."""
    cycles = _cycles(_module_graph())
    assert not cycles, "modules importing each other in a loop: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_the_cycle_check_sees_lazy_imports_and_ignores_parents():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    built = _module_graph()
    assert "ckptio.rewrite" in built["ckptio.cli.rewrite"]  # a lazy import inside a function
    assert "ckptio.formats" not in built["ckptio.formats.keras_archive"]  # `from . import kind_of`: its parent


def test_checkpoint_and_the_rewrite_core_sit_below_the_router():
    """Checkpoint is under every reader, and the core of rewrite (plan, write to a local prefix) under
    the writers that call it; only the fronts (ckptio.open, rewrite(), archive's package) open any path."""
    graph = _module_graph()
    assert graph["ckptio.checkpoint"] <= {"ckptio.bundle", "ckptio.store", "ckptio.errors"} | {
        m for m in graph if m.startswith(("ckptio.bundle.", "ckptio.store.", "ckptio.sstable."))
    }, graph["ckptio.checkpoint"]
    for low in ("ckptio.rewrite_plan", "ckptio.rewrite_exec", "ckptio.archive.write", "ckptio.formats.export"):
        assert not graph[low] & {"ckptio.sources", "ckptio.rewrite", "ckptio.remote"}, (low, graph[low])
    assert "ckptio.remote" not in graph["ckptio.sources"]
