"""ckptio diff: names only in A / B, dtype and shape changes, object-path pairing, streamed value comparison."""

from __future__ import annotations

import json

import numpy as np
import pytest

import ckptio
from ckptio import diff as diff_module_function
from ckptio.bundle.naming import OBJECT_GRAPH_KEY
from ckptio.bundle.writer import BundleWriter
from ckptio.cli.main import main
from ckptio.errors import PlanError
from ckptio.objgraph import Attribute, Child, Node, ObjectGraph, SlotVariable, attribute_key
from ckptio.transform import Rename

VALUE = "VARIABLE_VALUE"


def write_named(prefix, tensors: dict) -> str:
    """A name-based checkpoint: {name: array}."""
    with BundleWriter(str(prefix)) as w:
        for name, value in tensors.items():
            w.add_array(name, value)
        w.finish()
    return str(prefix)


def write_object_based(
    prefix, variables: dict, aliases: dict | None = None, full_names: dict | None = None, slots: dict | None = None
) -> str:
    """An object-based checkpoint: {"model/enc/kernel": array}; aliases {"optimizer/_tv/0": "model/enc/kernel"}
    are extra edges to a variable's node; slots {("optimizer", "model/enc/kernel", "m"): array} are legacy
    slot_variables. Keys are the first breadth-first paths, as TF writes them; edges listed in order given."""
    graph = ObjectGraph([Node()])
    nodes: dict[str, int] = {"": 0}

    def node(path: str) -> int:
        if path not in nodes:
            parent, _, name = path.rpartition("/")
            nid = len(graph.nodes)
            graph.nodes.append(Node())
            graph.nodes[node(parent)].children.append(Child(nid, name))
            nodes[path] = nid
        return nodes[path]

    order = list(variables)
    for alias, target in (aliases or {}).items():  # aliases may come first in BFS order
        order.insert(0, (alias, target))
    values = {}
    for item in order:
        if isinstance(item, tuple):
            alias, target = item
            parent, _, name = alias.rpartition("/")
            graph.nodes[node(parent)].children.append(Child(node(target), name))
        else:
            values[node(item)] = variables[item]
    slot_values = {}
    for (optimizer, var, name), value in (slots or {}).items():
        nid = len(graph.nodes)
        graph.nodes.append(Node())
        graph.nodes[node(optimizer)].slot_variables.append(SlotVariable(node(var), name, nid))
        slot_values[nid] = value
    prefixes = graph.key_prefixes()
    tensors = {}
    for nid, value in {**values, **slot_values}.items():
        key = attribute_key(prefixes[nid], VALUE)
        path = next((p for p, n in nodes.items() if n == nid), "")
        graph.nodes[nid].attributes.append(Attribute(VALUE, (full_names or {}).get(path, ""), key))
        tensors[key] = value
    with BundleWriter(str(prefix)) as w:
        for key, value in tensors.items():
            w.add_array(key, value)
        g = np.empty((), dtype=object)
        g[()] = graph.serialize()
        w.add_array(OBJECT_GRAPH_KEY, g)
        w.finish()
    return str(prefix)


def key(path: str) -> str:
    return f"{path}/.ATTRIBUTES/{VALUE}"


def run(capsys, *argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().out


F32 = np.arange(12, dtype=np.float32).reshape(3, 4)


def test_name_based_differences_and_json_schema(tmp_path, capsys):
    a = write_named(
        tmp_path / "a/ckpt", {"w": F32, "b": np.zeros(4, np.float32), "old": np.ones(2, np.int32), "step": np.int64(3)}
    )
    b = write_named(
        tmp_path / "b/ckpt",
        {"w": F32.astype(np.float16), "b": np.zeros(5, np.float32), "new": np.ones(2, np.int32), "step": np.int64(4)},
    )
    code, out = run(capsys, "diff", a, b, "--json")
    assert code == 1
    assert json.loads(out) == {
        "only_a": ["old"],
        "only_b": ["new"],
        "mismatched": [
            {"a": "b", "b": "b", "a_dtype": "float32", "b_dtype": "float32", "a_shape": [4], "b_shape": [5]},
            {"a": "w", "b": "w", "a_dtype": "float32", "b_dtype": "float16", "a_shape": [3, 4], "b_shape": [3, 4]},
        ],
        "changed": [],
        "equal": 1,
    }
    code, out = run(capsys, "diff", a, b)
    assert code == 1 and "only in A   old" in out and "mismatch    b: float32[4] vs float32[5]" in out


def test_values_changed_exact_numbers(tmp_path, capsys):
    x = np.array([[1.0, -2.0], [3.0, 4.0]], np.float32)
    y = x.copy()
    y[1, 0] = 3.5
    a = write_named(tmp_path / "a/ckpt", {"x": x, "s": np.int64(1), "t": np.array([b"p", b"q"], object)})
    b = write_named(tmp_path / "b/ckpt", {"x": y, "s": np.int64(1), "t": np.array([b"p", b"r"], object)})
    result = ckptio.diff(a, b, values=True)
    assert result.only_a == result.only_b == [] and result.mismatched == []
    assert result.equal == 1
    changed = {c.a: c for c in result.changed}
    assert changed["x"].max_abs == 0.5
    assert changed["x"].rel_l2 == pytest.approx(0.5 / np.sqrt(30))
    assert changed["t"].max_abs is None and changed["t"].rel_l2 is None
    assert ckptio.diff(a, b, values=True, atol=0.5).changed[0].a == "t"  # x within atol now
    assert [c.a for c in ckptio.diff(a, b, values=True, rtol=0.5 / 3.5).changed] == ["t"]  # |a-b| <= rtol*|b|
    assert [c.a for c in ckptio.diff(a, b, values=True, rtol=0.5 / 3.5 * 0.99).changed] == ["t", "x"]
    assert run(capsys, "diff", a, a, "--values")[0] == 0
    assert run(capsys, "diff", a, b, "--atol", "1")[0] == 2  # tolerances need --values


def test_values_stream_in_chunks_of_different_dtypes(tmp_path, monkeypatch):
    """float32 against float16: the two sides' chunks hold different element counts and must be re-paired."""
    import sys

    diff_module = sys.modules["ckptio.diff"]  # `import ckptio.diff as m` gives the function
    rng = np.random.default_rng(0)
    x = rng.standard_normal((37, 3)).astype(np.float32)
    a = write_named(tmp_path / "a/ckpt", {"x": x})
    b = write_named(tmp_path / "b/ckpt", {"x": x.astype(np.float16)})
    monkeypatch.setattr(diff_module, "CHUNK_BYTES", 30)  # chunks of 2 float32 rows (6 values), 5 float16 rows (15)
    pieces, paired = [], diff_module._paired
    monkeypatch.setattr(diff_module, "_paired", lambda xs, ys: (pieces.append(len(p[0])) or p for p in paired(xs, ys)))
    c = ckptio.diff(a, b, values=True).changed[0]
    assert len(pieces) > 19 and 3 in pieces and sum(pieces) == x.size  # chunks were cut to pair up
    d = np.abs(x.astype(np.float64) - x.astype(np.float16).astype(np.float64))
    assert c.max_abs == d.max()
    assert c.rel_l2 == pytest.approx(np.sqrt((d**2).sum()) / np.sqrt((x.astype(np.float64) ** 2).sum()))


def test_nan_in_both_is_equal_and_nan_in_one_is_not_a_number(tmp_path):
    x = np.array([np.nan, 1.0], np.float32)
    a = write_named(tmp_path / "a/ckpt", {"x": x})
    b = write_named(tmp_path / "b/ckpt", {"x": x})
    c = write_named(tmp_path / "c/ckpt", {"x": np.array([0.0, 1.0], np.float32)})
    assert ckptio.diff(a, b, values=True).identical
    changed = ckptio.diff(a, c, values=True).changed
    assert [(ch.max_abs, ch.rel_l2) for ch in changed] == [(None, None)]


def test_object_path_pairs_a_weight_stored_under_different_keys(tmp_path, capsys):
    """Keras 3 with its optimizer keys the weight `optimizer/_trainable_variables/0`; a model-only save `model/...`."""
    k = np.ones((2, 2), np.float32)
    a = write_object_based(
        tmp_path / "a/ckpt", {"model/enc/_kernel": k}, aliases={"optimizer/_trainable_variables/0": "model/enc/_kernel"}
    )
    b = write_object_based(tmp_path / "b/ckpt", {"model/enc/_kernel": k})
    with ckptio.open(a) as c:
        assert list(c) == [OBJECT_GRAPH_KEY, key("optimizer/_trainable_variables/0")]
    code, out = run(capsys, "diff", a, b, "--values", "--json")
    assert code == 0, out
    assert json.loads(out) == {"only_a": [], "only_b": [], "mismatched": [], "changed": [], "equal": 1}


def test_optimizer_list_positions_do_not_pair_different_weights(tmp_path):
    """Both files name a weight `optimizer/_trainable_variables/0`, but it is another layer's in each."""
    a = write_object_based(
        tmp_path / "a/ckpt",
        {"model/old/_kernel": np.ones(2, np.float32)},
        aliases={"optimizer/_trainable_variables/0": "model/old/_kernel"},
    )
    b = write_object_based(
        tmp_path / "b/ckpt",
        {"model/new/_kernel": np.ones(2, np.float32)},
        aliases={"optimizer/_trainable_variables/0": "model/new/_kernel"},
    )
    result = ckptio.diff(a, b)
    assert result.only_a == [key("optimizer/_trainable_variables/0")]
    assert result.only_b == [key("optimizer/_trainable_variables/0")]


def test_map_renames_a_before_comparing(tmp_path, capsys):
    a = write_object_based(tmp_path / "a/ckpt", {"model/encoder/_kernel": F32})
    b = write_object_based(tmp_path / "b/ckpt", {"model/backbone/_kernel": F32})
    assert run(capsys, "diff", a, b)[0] == 1
    assert run(capsys, "diff", a, b, "--map", "model/encoder/=model/backbone/")[0] == 0
    assert run(capsys, "diff", a, b, "--map", "^model/encoder/=model/backbone/", "--regex")[0] == 0
    assert run(capsys, "diff", a, b, "--map", "nowhere/=x/")[0] == 2  # a rule matching nothing is a usage error


def test_full_name_pairs_name_based_with_object_based(tmp_path):
    a = write_named(tmp_path / "a/ckpt", {"dense/kernel": F32, "dense/kernel/Adam": F32})
    b = write_object_based(
        tmp_path / "b/ckpt",
        {"model/_operations/1/_kernel": F32},
        full_names={"model/_operations/1/_kernel": "dense/kernel"},
    )
    result = ckptio.diff(a, b)
    assert result.pairs == [("dense/kernel", key("model/_operations/1/_kernel"), "full_name")]
    assert result.only_a == ["dense/kernel/Adam"] and result.only_b == []
    reverse = ckptio.diff(b, a)
    assert reverse.pairs == [(key("model/_operations/1/_kernel"), "dense/kernel", "full_name")]


def test_shared_full_names_pair_nothing(tmp_path):
    """Keras 3 subclassed models repeat full_names (`net/kernel`); TF lets the last one win, diff refuses to guess."""
    a = write_named(tmp_path / "a/ckpt", {"net/kernel": F32})
    b = write_object_based(
        tmp_path / "b/ckpt",
        {"model/x/_kernel": F32, "model/y/_kernel": F32},
        full_names={"model/x/_kernel": "net/kernel", "model/y/_kernel": "net/kernel"},
    )
    assert ckptio.diff(a, b).pairs == []


def test_two_candidates_for_one_tensor_is_an_error_naming_both(tmp_path):
    a = write_named(tmp_path / "a/ckpt", {"x": F32, "y": F32})
    b = write_named(tmp_path / "b/ckpt", {"z": F32})
    with pytest.raises(PlanError, match="'x' and 'y'"):
        ckptio.diff(a, b, rules=Rename((("x", "z"), ("y", "z"))))


def test_legacy_slots_pair_through_their_variables(tmp_path):
    """A slot is the same slot when its variable is the same variable, whatever the path shift."""
    m = np.full(2, 7.0, np.float32)
    a = write_object_based(
        tmp_path / "a/ckpt",
        {"model/encoder/kernel": np.ones(2, np.float32), "optimizer/iter": np.int64(1)},
        slots={("optimizer", "model/encoder/kernel", "m"): m},
    )
    b = write_object_based(
        tmp_path / "b/ckpt",
        {"model/backbone/kernel": np.ones(2, np.float32), "optimizer/iter": np.int64(1)},
        slots={("optimizer", "model/backbone/kernel", "m"): m},
    )
    result = ckptio.diff(a, b, rules=Rename((("model/encoder/", "model/backbone/"),)), values=True)
    assert result.identical, result.pairs
    assert {how for _, _, how in result.pairs} == {"map", "path", "slot"}


def test_unreadable_input_is_exit_2(tmp_path, capsys):
    a = write_named(tmp_path / "a/ckpt", {"x": F32})
    (tmp_path / "bad.index").write_bytes(b"not a table")
    assert run(capsys, "diff", a, tmp_path / "missing/ckpt")[0] == 2
    assert run(capsys, "diff", a, tmp_path / "bad")[0] == 2
    assert run(capsys, "diff", a)[0] == 2


def test_public_api_is_the_function():
    assert callable(diff_module_function) and ckptio.diff is diff_module_function
    import importlib

    importlib.import_module("ckptio.diff")  # importing the submodule must not replace the function
    assert ckptio.diff is diff_module_function


def _tf_keras_like(prefix, layer: str, slot_value) -> str:
    """tf_keras >= 2.11 optimizer: slots in `_momentums/i`, named after their variable (`Adam/m/<variable>`)."""
    return write_object_based(
        prefix,
        {
            f"model/{layer}/kernel": np.ones(2, np.float32),
            "optimizer/_iterations": np.int64(1),
            "optimizer/_variables/1": slot_value,
        },
        aliases={"optimizer/_momentums/0": "optimizer/_variables/1"},
        full_names={f"model/{layer}/kernel": f"{layer}/kernel", "optimizer/_variables/1": f"Adam/m/{layer}/kernel"},
    )


def test_keras_slot_lists_pair_by_variable_never_by_position(tmp_path):
    m = np.full(2, 3.0, np.float32)
    a = _tf_keras_like(tmp_path / "a/ckpt", "dense", m)
    b = _tf_keras_like(tmp_path / "b/ckpt", "dense_1", m)
    slot = key("optimizer/_momentums/0")
    # the slot of another variable at the same list position is not the same slot
    result = ckptio.diff(a, b)
    assert slot in result.only_a and slot in result.only_b
    # once the variables pair, their slots do
    result = ckptio.diff(a, b, rules=Rename((("model/dense/", "model/dense_1/"),)), values=True)
    assert result.identical and (slot, slot, "slot") in result.pairs


def test_exact_map_rules_may_name_object_paths_as_ls_objects_shows_them(tmp_path, capsys):
    a = write_object_based(tmp_path / "a/ckpt", {"model/dense/kernel": F32, "model/dense/bias": F32[0]})
    b = write_object_based(tmp_path / "b/ckpt", {"model/head/kernel": F32, "model/dense/bias": F32[0]})
    for rule in (
        "model/dense/kernel=model/head/kernel",
        f"{key('model/dense/kernel')}=model/head/kernel",
        f"model/dense/kernel={key('model/head/kernel')}",
    ):
        code, out = run(capsys, "diff", a, b, "--json", "--map", rule)
        assert (code, json.loads(out)["only_a"]) == (0, []), rule
    result = ckptio.diff(a, b, rules=Rename((("model/dense/kernel", "model/head/kernel"),)))
    assert (key("model/dense/kernel"), key("model/head/kernel"), "map") in result.pairs
    # name-based into object-based: NEW is the template's object path
    n = write_named(tmp_path / "n/ckpt", {"dense/kernel": F32})
    pairs = ckptio.diff(n, b, rules=Rename((("dense/kernel", "model/head/kernel"),))).pairs
    assert pairs == [("dense/kernel", key("model/head/kernel"), "map")]
    assert run(capsys, "diff", a, b, "--map", "model/dense/kern=model/head/kernel")[0] == 2  # exact means exact


def test_values_of_partitioned_tensors_are_read_a_chunk_of_rows_at_a_time(tmp_path, monkeypatch):
    import sys

    from test_fit import write_sliced

    from ckptio.checkpoint import Checkpoint

    value = np.arange(60, dtype=np.float32).reshape(20, 3)
    changed = value.copy()
    changed[17, 1] += 0.5
    a = write_sliced(tmp_path / "a/ckpt", "emb", value, [(0, 7), (7, 13)])
    b = write_sliced(tmp_path / "b/ckpt", "emb", changed, [(0, 10), (10, 10)])
    monkeypatch.setattr(sys.modules["ckptio.diff"], "CHUNK_BYTES", 24)
    monkeypatch.setattr(Checkpoint, "_read", lambda *a: pytest.fail("a partitioned tensor was read whole"))
    result = ckptio.diff(a, b, values=True)
    assert [(c.a, c.max_abs) for c in result.changed] == [("emb", 0.5)]
    assert ckptio.diff(a, a, values=True).equal == 1
