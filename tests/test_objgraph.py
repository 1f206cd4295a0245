"""The object graph model: byte-exact round trip, naming, optimizer finding, strip/select/rename/map re-keying.

Pure Python: corpus graphs (real TF2 checkpoints, used in place) and small hand-built graphs.
tests/test_objgraph_tf.py checks the same edits against real TensorFlow.
"""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest

import ckptio
from ckptio import MapNames, PlanError, Rename, Select, StripOptimizer
from ckptio.bundle.entry import Entry
from ckptio.bundle.naming import OBJECT_GRAPH_KEY
from ckptio.bundle.writer import BundleWriter
from ckptio.cli.objects import describe_objects, print_objects
from ckptio.errors import CorruptCheckpointError
from ckptio.objgraph import (
    Attribute,
    Child,
    Node,
    ObjectGraph,
    SlotVariable,
    attribute_key,
    check_consistency,
    escape_path_element,
    find_optimizers,
    graph_problems,
    optimizer_keys,
    parse_path,
    path_string,
    plan_object_based,
    slot_prefix,
    unescape_path_element,
)
from ckptio.objgraph_edit import GraphPlan

VALUE = ".ATTRIBUTES/VARIABLE_VALUE"
# Object-based corpus checkpoints and the optimizer edges find_optimizers must report.
OPTIMIZERS = {
    "tf2_keras_weights_2shard": ["optimizer"],  # Keras 2 save_weights: the model is the root
    "tf2_eager_vae_adam": ["optimizer"],  # TF1-eager AdamOptimizer with slot_variables
    "tf2_golf_int32": ["net/optimizer"],  # optimizer tracked by the model only
    "tf2_gpflow_f64": [],
    "tf2_newopt_vars": ["compensator_optimizer"],  # Keras 3 optimizer under a *_optimizer edge
    "tf2_bert_lite": [],
    "sm_tfx_keras": ["optimizer"],
    "sm_alina_vocab": ["optimizer", "layer_with_weights-1/optimizer"],  # a compiled inner model too
    "sm_tfagents_policy": [],
    "sm_a2c_2shard": [],
    "sm_tfrs_newopt": ["optimizer"],
}


@pytest.fixture(scope="module")
def graphs(corpus, corpus_manifest):
    """name -> (prefix, graph bytes) for every corpus checkpoint that has an object graph."""
    out = {}
    for c in corpus_manifest["checkpoints"]:
        if c["format"] != "v2":
            continue
        prefix = str(corpus / c["prefix"])
        with ckptio.open(prefix) as ckpt:
            data = ckpt.object_graph_bytes
        if data is not None:
            out[c["short_name"]] = (prefix, data)
    assert set(out) == set(OPTIMIZERS)
    return out


def plan(prefix, *steps):
    with ckptio.open(prefix) as ckpt:
        return plan_object_based(ckpt, steps)


def value_keys(graph: ObjectGraph) -> set[str]:
    return {a.checkpoint_key for _, a in graph.attributes()}


# -- hand-built graphs ---------------------------------------------------------------------------------


def build(spec: dict[int, dict]) -> ObjectGraph:
    """{id: {"children": [(name, id)], "value": key or None, "slots": [(var, slot name, slot node)]}}."""
    nodes = []
    for i in range(len(spec)):
        s = spec[i]
        nodes.append(
            Node(
                children=[Child(n, name) for name, n in s.get("children", ())],
                attributes=(
                    [Attribute("VARIABLE_VALUE", s.get("full", ""), s["value"], source=s["value"])]
                    if s.get("value")
                    else []
                ),
                slot_variables=[SlotVariable(v, name, n) for v, name, n in s.get("slots", ())],
                has_checkpoint_values=s.get("hcv", True),
            )
        )
    return ObjectGraph(nodes)


def entries_for(graph: ObjectGraph, shape=(2,)) -> dict:
    return {k: Entry(1, shape) for k in value_keys(graph)}


def keras3_like() -> ObjectGraph:
    """Checkpoint(model=m, optimizer=o) as Keras 3 writes it: the weight's first path is via the optimizer."""
    return build(
        {
            0: {"children": [("model", 1), ("optimizer", 2), ("save_counter", 3)]},
            1: {"children": [("net", 4), ("optimizer", 2)]},
            2: {
                "children": [
                    ("_variables", 5),
                    ("_trainable_variables", 6),
                    ("_iterations", 7),
                    ("_model_variables_moving_average", 11),
                ]
            },
            3: {"value": f"save_counter/{VALUE}"},
            4: {"children": [("layer", 8)]},
            5: {"children": [("0", 7), ("1", 10)]},
            6: {"children": [("0", 9)]},
            7: {"value": f"optimizer/_iterations/{VALUE}"},
            8: {"children": [("_kernel", 9)]},
            9: {"value": f"optimizer/_trainable_variables/0/{VALUE}", "full": "seq/d/kernel"},
            10: {"value": f"optimizer/_variables/1/{VALUE}"},
            11: {"children": [("0", 12)]},
            12: {"value": f"optimizer/_model_variables_moving_average/0/{VALUE}"},
        }
    )


def legacy_like() -> ObjectGraph:
    """A Keras 2 legacy optimizer: slot nodes appended after BFS, reachable only via slot_variables."""
    return build(
        {
            0: {"children": [("model", 1), ("optimizer", 2)]},
            1: {"children": [("layer-0", 3), ("layer_with_weights-0", 3), ("optimizer", 2)]},
            2: {"children": [("iter", 4)], "slots": [(5, "m", 7), (6, "m", 8)]},
            3: {"children": [("kernel", 5), ("bias", 6)]},
            4: {"value": f"optimizer/iter/{VALUE}"},
            5: {"value": f"model/layer-0/kernel/{VALUE}", "full": "d/kernel"},
            6: {"value": f"model/layer-0/bias/{VALUE}", "full": "d/bias"},
            7: {"value": f"model/layer-0/kernel/.OPTIMIZER_SLOT/optimizer/m/{VALUE}"},
            8: {"value": f"model/layer-0/bias/.OPTIMIZER_SLOT/optimizer/m/{VALUE}"},
        }
    )


def run(graph: ObjectGraph, *steps, entries=None):
    p = GraphPlan(graph, entries if entries is not None else entries_for(graph))
    for s in steps:
        p.apply(s)
    mapping, data = p.result()
    return mapping, ObjectGraph.parse(data)


# -- bytes ------------------------------------------------------------------------------------------------


def test_every_corpus_graph_round_trips_byte_identical(graphs):
    for name, (_, data) in graphs.items():
        graph = ObjectGraph.parse(data)
        assert graph.serialize() == data, name
        assert ObjectGraph.parse(graph.serialize()).serialize() == data


def test_unedited_plan_returns_the_input_graph(graphs):
    """A plan without graph edits (no steps, or only a cast) changes nothing, byte for byte."""
    for name, (prefix, data) in graphs.items():
        with ckptio.open(prefix) as ckpt:
            keys = set(ckpt) - {OBJECT_GRAPH_KEY}
        for steps in ((), (ckptio.Cast("bfloat16"),), (Select(exclude=("^no such key$",)),)):
            mapping, new = plan(prefix, *steps)
            assert new == data, (name, steps)
            assert mapping == {k: k for k in keys}


def test_unknown_fields_survive_a_round_trip():
    # optional_restore (field 4 of SerializedTensor, retired in TF 2.21) and an unknown node field 9.
    base = legacy_like().serialize()
    graph = ObjectGraph.parse(base)
    graph.nodes[4].attributes[0].extra = b"\x20\x01"
    graph.nodes[1].extra = b"\x48\x07"
    data = graph.serialize()
    again = ObjectGraph.parse(data)
    assert again.nodes[4].attributes[0].extra == b"\x20\x01" and again.nodes[1].extra == b"\x48\x07"
    assert again.serialize() == data


def test_has_checkpoint_values_false_is_written_present():
    graph = build({0: {"children": [("a", 1)], "hcv": False}, 1: {"hcv": False}})
    data = graph.serialize()
    assert data.count(b"\x2a\x00") == 2  # field 5 present with value false (FORMAT §8)
    assert ObjectGraph.parse(data).nodes[0].has_checkpoint_values is False


@pytest.mark.parametrize(
    "data, message",
    [
        (b"\xff\xff\xff", "not a TrackableObjectGraph"),
        (b"", "no nodes"),
        (b"\x0a\x04\x0a\x02\x08\x05", "points at node 5 of 1"),
    ],
)
def test_bad_graph_bytes_raise_corrupt(data, message):
    with pytest.raises(CorruptCheckpointError, match=message):
        ObjectGraph.parse(data)


# -- naming -----------------------------------------------------------------------------------------------


def test_escaping_and_key_generation_match_tf():
    assert escape_path_element("a.b/c") == "a..b.Sc"
    for name in ("a.b/c", "..", "x.S", "/", "plain", ".ATTRIBUTES"):
        assert unescape_path_element(escape_path_element(name)) == name
    assert path_string(["model", "layer.1", "a/b"]) == "model/layer..1/a.Sb"
    assert parse_path("model/layer..1/a.Sb/") == ("model", "layer.1", "a/b")
    assert parse_path("") == () and parse_path("/") == ()
    assert attribute_key("model/d", "VARIABLE_VALUE") == "model/d/.ATTRIBUTES/VARIABLE_VALUE"
    assert attribute_key("t", "table-keys") == "t/.ATTRIBUTES/table-keys"
    assert attribute_key("t", ".TENSORS") == "t/.ATTRIBUTES/"
    assert attribute_key("", "x.y") == "/.ATTRIBUTES/x..y"
    assert slot_prefix("model/k", "optimizer", "m") == "model/k/.OPTIMIZER_SLOT/optimizer/m"


def test_first_paths_and_prefixes_follow_bfs_and_slots():
    g = legacy_like()
    assert g.first_paths()[3] == ("model", "layer-0")  # listed before layer_with_weights-0
    prefixes = g.key_prefixes()
    assert prefixes[5] == "model/layer-0/kernel"
    assert prefixes[7] == "model/layer-0/kernel/.OPTIMIZER_SLOT/optimizer/m"
    for nid, a in g.attributes():
        assert a.checkpoint_key == attribute_key(prefixes[nid], a.name)
    assert g.live() == set(range(9))
    assert g.canonical_order() == list(range(9))


def test_corpus_keys_are_canonical_and_checkpoint_values_match_tf(graphs):
    for name, (_, data) in graphs.items():
        g = ObjectGraph.parse(data)
        prefixes = g.key_prefixes()
        for nid, a in g.attributes():
            assert a.checkpoint_key == attribute_key(prefixes[nid], a.name), (name, nid)
        assert g.canonical_order() == list(range(len(g.nodes))), name
        for node, value in zip(g.nodes, g.checkpoint_values()):
            assert node.has_checkpoint_values in (None, value), name


# -- optimizers -------------------------------------------------------------------------------------------


def test_find_optimizers_in_corpus(graphs):
    for name, (_, data) in graphs.items():
        g = ObjectGraph.parse(data)
        paths = g.first_paths()
        assert sorted(path_string(paths[i]) for i in find_optimizers(g)) == sorted(OPTIMIZERS[name]), name


def test_find_optimizers_by_signature_and_by_path():
    g = build(
        {
            0: {"children": [("trainer", 1)]},
            1: {"children": [("opt", 2), ("legacy", 3), ("plain", 4)]},
            2: {"children": [("_iterations", 5), ("_variables", 6)]},  # Keras >= 2.11 / Keras 3
            3: {"children": [("iter", 7), ("decay", 8)]},  # OptimizerV2 without slots
            4: {"children": [("iter", 9)]},  # not enough to call it an optimizer
            5: {},
            6: {},
            7: {},
            8: {},
            9: {},
        }
    )
    assert find_optimizers(g) == [2, 3]
    assert find_optimizers(g, ["trainer/plain"]) == [4]
    assert find_optimizers(g, ["root/trainer/plain/"]) == [4]  # `root/` names node 0
    with pytest.raises(PlanError, match="no object at path 'nope'"):
        find_optimizers(g, ["nope"])


# -- strip ------------------------------------------------------------------------------------------------


def test_strip_every_corpus_checkpoint_keeps_graph_consistent(graphs):
    for name, (prefix, data) in graphs.items():
        mapping, new = plan(prefix, StripOptimizer())
        g = ObjectGraph.parse(new)
        assert graph_problems(g, set(mapping.values())) == [], name
        assert find_optimizers(g) == [], name
        assert not any(n.slot_variables for n in g.nodes), name
        assert ".OPTIMIZER_SLOT" not in " ".join(mapping.values())
        source = ObjectGraph.parse(data)
        if not OPTIMIZERS[name]:
            assert new == data, name  # nothing to strip: untouched
        else:
            assert len(g.nodes) < len(source.nodes)
        # full_name survives for every kept variable (TF1 Saver fallback, FORMAT §12.11).
        full = {a.checkpoint_key: a.full_name for _, a in source.attributes()}
        for _, a in g.attributes():
            src = next(s for s, d in mapping.items() if d.startswith(a.checkpoint_key))
            assert a.full_name == full.get(src, a.full_name)


def test_strip_corpus_keeps_exactly_the_model(graphs):
    mapping, _ = plan(graphs["tf2_keras_weights_2shard"][0], StripOptimizer())
    assert sorted(mapping) == [f"layer-{i}/{v}/{VALUE}" for i in (1, 2) for v in ("bias", "kernel")]
    mapping, _ = plan(graphs["tf2_eager_vae_adam"][0], StripOptimizer())
    assert len(mapping) == 14 and f"optimizer_step/{VALUE}" in mapping and f"save_counter/{VALUE}" in mapping
    mapping, _ = plan(graphs["tf2_eager_vae_adam"][0], StripOptimizer(keep_global_step=False))
    assert len(mapping) == 13 and f"optimizer_step/{VALUE}" not in mapping
    mapping, _ = plan(graphs["tf2_newopt_vars"][0], StripOptimizer())
    assert sorted(mapping) == sorted(
        [f"compensator/{layer}/{v}/{VALUE}" for layer in ("fc1", "fc2", "q") for v in ("_kernel", "bias")]
        + [f"save_counter/{VALUE}"]
    )
    assert all(s == d for s, d in mapping.items())


def test_strip_keras3_rekeys_weights_from_their_new_first_path():
    mapping, g = run(keras3_like(), StripOptimizer())
    assert mapping == {
        f"save_counter/{VALUE}": f"save_counter/{VALUE}",
        f"optimizer/_trainable_variables/0/{VALUE}": f"model/net/layer/_kernel/{VALUE}",
    }
    # Renumbered in BFS order: root, model, save_counter, net, layer, kernel; the model->optimizer edge is gone.
    assert [[(c.local_name, c.node_id) for c in n.children] for n in g.nodes] == [
        [("model", 1), ("save_counter", 2)],
        [("net", 3)],
        [],
        [("layer", 4)],
        [("_kernel", 5)],
        [],
    ]
    kernel = g.nodes[5].attributes[0]
    assert (kernel.checkpoint_key, kernel.full_name) == (f"model/net/layer/_kernel/{VALUE}", "seq/d/kernel")
    assert [n.has_checkpoint_values for n in g.nodes] == [True] * 6


def test_strip_legacy_drops_slot_nodes_and_the_model_edge():
    mapping, g = run(legacy_like(), StripOptimizer())
    assert sorted(mapping) == [f"model/layer-0/bias/{VALUE}", f"model/layer-0/kernel/{VALUE}"]
    assert len(g.nodes) == 5 and not any(n.slot_variables for n in g.nodes)
    assert [c.local_name for c in g.nodes[1].children] == ["layer-0", "layer_with_weights-0"]
    assert graph_problems(g, set(mapping.values())) == []


def test_strip_recomputes_stale_has_checkpoint_values_and_keeps_absent_ones():
    g = legacy_like()
    for n in g.nodes:
        n.has_checkpoint_values = False  # stale: would silently skip deferred restores (FORMAT §12.9)
    g.nodes[3].has_checkpoint_values = None
    _, new = run(g, StripOptimizer())
    assert [n.has_checkpoint_values for n in new.nodes] == [True, True, None, True, True]


def test_strip_promotes_keras3_moving_averages():
    g = keras3_like()
    mapping, _ = run(g, StripOptimizer(ema="promote"))
    assert mapping[f"optimizer/_model_variables_moving_average/0/{VALUE}"] == f"model/net/layer/_kernel/{VALUE}"
    assert f"optimizer/_trainable_variables/0/{VALUE}" not in mapping
    with pytest.raises(PlanError, match="no optimizer-kept moving averages"):
        run(legacy_like(), StripOptimizer(ema="promote"))
    entries = entries_for(keras3_like())
    entries[f"optimizer/_model_variables_moving_average/0/{VALUE}"] = Entry(1, (3,))
    with pytest.raises(PlanError, match="differs in dtype or shape"):
        run(keras3_like(), StripOptimizer(ema="promote"), entries=entries)


def test_optimizer_keys_are_what_strip_drops(graphs):
    for name, (prefix, _) in graphs.items():
        mapping, _ = plan(prefix, StripOptimizer())
        with ckptio.open(prefix) as ckpt:
            assert optimizer_keys(ckpt) == set(ckpt) - set(mapping) - {OBJECT_GRAPH_KEY}, name


# -- select -----------------------------------------------------------------------------------------------


def test_select_drops_attribute_empty_nodes_and_their_edges():
    mapping, g = run(legacy_like(), Select(exclude=("bias",)))
    assert f"model/layer-0/bias/{VALUE}" not in mapping
    assert all(".OPTIMIZER_SLOT" not in k or "kernel" in k for k in mapping)  # the bias slot went too
    assert len(g.nodes) == 7  # bias node and its m slot node removed
    assert [c.local_name for c in g.nodes[3].children] == ["kernel"]
    assert graph_problems(g, set(mapping.values())) == []


def test_select_keeps_a_variable_node_that_a_kept_slot_needs():
    mapping, g = run(legacy_like(), Select(exclude=(r"^model/layer-0/kernel/\.ATTRIBUTES",)))
    slot = f"model/layer-0/kernel/.OPTIMIZER_SLOT/optimizer/m/{VALUE}"
    assert mapping[slot] == slot
    assert len(g.nodes) == 9 and not g.nodes[5].attributes
    assert graph_problems(g, set(mapping.values())) == []


def test_select_cascades_to_emptied_containers_only():
    g = build(
        {0: {"children": [("a", 1), ("empty", 2)]}, 1: {"children": [("w", 3)]}, 2: {}, 3: {"value": f"a/w/{VALUE}"}}
    )
    mapping, new = run(g, Select(exclude=("a/w",)))
    assert mapping == {}
    assert [(c.local_name, c.node_id) for c in new.nodes[0].children] == [("empty", 1)]  # source-empty node stays
    assert len(new.nodes) == 2 and new.nodes[0].has_checkpoint_values is False


def test_select_must_keep_a_legacy_saveable_whole(graphs):
    prefix = graphs["sm_alina_vocab"][0]
    with pytest.raises(PlanError, match="one saved object"):
        plan(prefix, Select(exclude=("table-values",)))
    mapping, new = plan(prefix, Select(exclude=("_table",)))
    assert not any("_table" in k for k in mapping)
    assert graph_problems(ObjectGraph.parse(new), set(mapping.values())) == []


# -- rename -----------------------------------------------------------------------------------------------


def test_rename_moves_an_edge_and_rekeys_everything_below(graphs):
    prefix, data = graphs["tf2_bert_lite"]
    mapping, new = plan(prefix, Rename((("model/", "encoder/"),)))
    g, source = ObjectGraph.parse(new), ObjectGraph.parse(data)
    assert len(g.nodes) == len(source.nodes)
    assert [c.local_name for c in g.nodes[0].children] == ["encoder", "save_counter"]
    for src, dst in mapping.items():
        assert dst == (src if src.startswith("save_counter") else "encoder/" + src[len("model/") :])
    assert graph_problems(g, set(mapping.values())) == []
    assert sorted(a.full_name for _, a in g.attributes()) == sorted(a.full_name for _, a in source.attributes())


def test_rename_rekeys_slots_with_their_variable(graphs):
    mapping, new = plan(graphs["tf2_keras_weights_2shard"][0], Rename((("layer-1/", "dense_a/"),)))
    assert (
        mapping[f"layer-1/kernel/.OPTIMIZER_SLOT/optimizer/m/{VALUE}"]
        == f"dense_a/kernel/.OPTIMIZER_SLOT/optimizer/m/{VALUE}"
    )
    assert mapping[f"layer-1/bias/{VALUE}"] == f"dense_a/bias/{VALUE}"
    assert graph_problems(ObjectGraph.parse(new), set(mapping.values())) == []


def test_rename_creates_intermediate_nodes_and_swaps():
    g = build({0: {"children": [("a", 1), ("b", 2)]}, 1: {"value": f"a/{VALUE}"}, 2: {"value": f"b/{VALUE}"}})
    mapping, new = run(g, Rename((("a/", "x/y/"),)))
    assert mapping == {f"a/{VALUE}": f"x/y/{VALUE}", f"b/{VALUE}": f"b/{VALUE}"}
    assert len(new.nodes) == 4 and new.nodes[2].has_checkpoint_values is True  # the new `x` container
    mapping, _ = run(
        build({0: {"children": [("a", 1), ("b", 2)]}, 1: {"value": f"a/{VALUE}"}, 2: {"value": f"b/{VALUE}"}}),
        Rename((("a/", "b/"), ("b/", "a/"))),
    )
    assert mapping == {f"a/{VALUE}": f"b/{VALUE}", f"b/{VALUE}": f"a/{VALUE}"}


def test_rename_in_place_keeps_position_and_moving_away_lets_an_alias_name_keys():
    mapping, g = run(legacy_like(), Rename((("model/layer-0/", "model/zz/"),)))
    assert mapping[f"model/layer-0/kernel/{VALUE}"] == f"model/zz/kernel/{VALUE}"  # still the first path
    assert [c.local_name for c in g.nodes[1].children] == ["zz", "layer_with_weights-0", "optimizer"]
    # Moved to a later parent, the layer is first reached through its alias, which now names the keys.
    mapping, g = run(legacy_like(), Rename((("model/layer-0/", "other/l/"),)))
    assert mapping[f"model/layer-0/kernel/{VALUE}"] == f"model/layer_with_weights-0/kernel/{VALUE}"
    assert (
        mapping[f"model/layer-0/kernel/.OPTIMIZER_SLOT/optimizer/m/{VALUE}"]
        == f"model/layer_with_weights-0/kernel/.OPTIMIZER_SLOT/optimizer/m/{VALUE}"
    )
    assert [c.local_name for c in g.nodes[0].children] == ["model", "optimizer", "other"]
    assert graph_problems(g, set(mapping.values())) == []


def test_rename_accepts_root_prefix_and_reports_unmatched():
    g = build({0: {"children": [("enc", 1)]}, 1: {"children": [("w", 2)]}, 2: {"value": f"enc/w/{VALUE}"}})
    mapping, _ = run(g, Rename((("root/enc/", "root/backbone/"),)))
    assert mapping == {f"enc/w/{VALUE}": f"backbone/w/{VALUE}"}
    with pytest.raises(PlanError, match="matches no object or tensor: nope/=x/"):
        run(build({0: {"children": [("a", 1)]}, 1: {"value": f"a/{VALUE}"}}), Rename((("nope/", "x/"),)))
    mapping, _ = run(
        build({0: {"children": [("a", 1)]}, 1: {"value": f"a/{VALUE}"}}),
        Rename((("nope/", "x/"),), allow_unmatched=True),
    )
    assert mapping == {f"a/{VALUE}": f"a/{VALUE}"}


def test_rename_regex_and_exact_keys_move_objects(graphs):
    prefix, data = graphs["tf2_bert_lite"]
    mapping, new = plan(prefix, Rename(((r"^model/", "net/"),), regex=True))
    g = ObjectGraph.parse(new)
    assert len(g.nodes) == len(ObjectGraph.parse(data).nodes)  # the whole subtree moved: one edge renamed
    assert [c.local_name for c in g.nodes[0].children] == ["net", "save_counter"]
    assert all(d == (s if s.startswith("save") else "net/" + s[6:]) for s, d in mapping.items())
    key = f"model/layer-0/kernel/{VALUE}"
    g = build(
        {
            0: {"children": [("model", 1)]},
            1: {"children": [("layer-0", 2)]},
            2: {"children": [("kernel", 3), ("bias", 4)]},
            3: {"value": key},
            4: {"value": f"model/layer-0/bias/{VALUE}"},
        }
    )
    mapping, new = run(g, Rename(((key, f"model/layer-0/w/{VALUE}"),)))
    assert mapping[key] == f"model/layer-0/w/{VALUE}"
    assert [c.local_name for c in new.nodes[2].children] == ["w", "bias"]


def test_rename_refuses_what_tf_could_not_write():
    g = build({0: {"children": [("a", 1)]}, 1: {"value": f"a/{VALUE}"}})
    with pytest.raises(PlanError, match="attribute part"):
        run(g, Rename(((f"a/{VALUE}", "a/.ATTRIBUTES/OTHER"),)))
    with pytest.raises(PlanError, match="slot variables are named after"):
        run(legacy_like(), Rename((("model/layer-0/kernel/.OPTIMIZER_SLOT/", "x/"),)))
    g = build({0: {"children": [("a", 1), ("b", 2)]}, 1: {"value": f"a/{VALUE}"}, 2: {"value": f"b/{VALUE}"}})
    with pytest.raises(PlanError, match="already exists"):
        run(g, Rename((("a/", "b/"),)))

    def aliased():
        return build({0: {"children": [("a", 1), ("x", 1)]}, 1: {"children": [("b", 2)]}, 2: {"value": f"a/b/{VALUE}"}})

    with pytest.raises(PlanError, match="inside itself"):
        run(aliased(), Rename((("a/", "x/b/c/"),)))  # `x` is the moved object itself
    mapping, _ = run(aliased(), Rename((("a/", "a/b/c/"),)))  # a new `a/b` is made; no cycle
    assert mapping == {f"a/b/{VALUE}": f"x/b/{VALUE}"}  # the alias `x` is now the first path


def test_rename_root_scopes_reroot(graphs):
    prefix = graphs["tf2_keras_weights_2shard"][0]  # save_weights: the model is the root
    mapping, new = plan(prefix, Rename((("/", "model/"),)))
    # Slot keys name the optimizer's path too, which moved as well (what TF writes for this structure).
    assert all(d == "model/" + s.replace(".OPTIMIZER_SLOT/", ".OPTIMIZER_SLOT/model/") for s, d in mapping.items())
    g = ObjectGraph.parse(new)
    assert [c.local_name for c in g.nodes[0].children] == ["model"] and len(g.nodes) == 23
    assert graph_problems(g, set(mapping.values())) == []
    bert = graphs["tf2_bert_lite"][0]
    with pytest.raises(PlanError, match="no longer reachable from the root.*save_counter"):
        plan(bert, Rename((("model/", "/"),)))
    mapping, new = plan(bert, Select(exclude=("^save_counter",)), Rename((("model/", "/"),)))
    assert all(d == s[len("model/") :] for s, d in mapping.items())
    assert graph_problems(ObjectGraph.parse(new), set(mapping.values())) == []


# -- map names --------------------------------------------------------------------------------------------


def test_map_names_derives_moves_and_drops(graphs):
    prefix, _ = graphs["tf2_bert_lite"]
    fn = lambda k: None if k.startswith("save_counter") else k.replace("model/", "bert/", 1)  # noqa: E731
    mapping, new = plan(prefix, MapNames(fn))
    assert all(d == fn(s) for s, d in mapping.items()) and len(mapping) == 23
    g = ObjectGraph.parse(new)
    assert [c.local_name for c in g.nodes[0].children] == ["bert"]
    assert graph_problems(g, set(mapping.values())) == []


def test_map_names_refuses_inconsistent_structures():
    g = build({0: {"children": [("a", 1), ("b", 2)]}, 1: {"value": f"a/{VALUE}"}, 2: {"value": f"b/{VALUE}"}})
    with pytest.raises(PlanError, match="would both be written|already exists"):
        run(g, MapNames(lambda k: f"c/{VALUE}"))
    g = build({0: {"children": [("a", 1)]}, 1: {"value": f"a/{VALUE}"}})
    with pytest.raises(PlanError, match="'.ATTRIBUTES/'|attribute part"):
        run(g, MapNames(lambda k: "t000"))
    with pytest.raises(PlanError, match="returned 5"):
        run(g, MapNames(lambda k: 5))


def test_unknown_step_is_a_plan_error():
    class Quantize:
        pass

    with pytest.raises(PlanError, match="Quantize is not supported"):
        run(legacy_like(), Quantize())


# -- consistency ------------------------------------------------------------------------------------------


def test_check_consistency_is_clean_on_the_corpus(corpus, corpus_manifest):
    for c in corpus_manifest["checkpoints"]:
        if c["format"] == "v2":
            with ckptio.open(str(corpus / c["prefix"])) as ckpt:
                assert check_consistency(ckpt) == [], c["short_name"]


def _write(prefix, graph: ObjectGraph, tensors: dict) -> None:
    with BundleWriter(str(prefix)) as w:
        for key, value in tensors.items():
            w.add_array(key, value)
        blob = np.empty((), dtype=object)
        blob[()] = graph.serialize()
        w.add_array(OBJECT_GRAPH_KEY, blob)
        w.finish()


def test_check_consistency_names_every_mismatch(tmp_path):
    g = build(
        {
            0: {"children": [("a", 1), ("b", 2)], "hcv": False},
            1: {"value": f"a/{VALUE}"},
            2: {"value": "b/no-attributes-part"},
        }
    )
    _write(tmp_path / "bad", g, {f"a/{VALUE}": np.zeros(2, np.float32), "stray": np.zeros(1, np.int32)})
    with ckptio.open(tmp_path / "bad") as ckpt:
        problems = check_consistency(ckpt)
        assert ckptio.verify(ckpt).problems  # verify reports them too
    assert problems == [
        "node 2 (b) attribute 'VARIABLE_VALUE': checkpoint_key 'b/no-attributes-part' is not in the bundle",
        "node 2 (b) attribute 'VARIABLE_VALUE': checkpoint_key 'b/no-attributes-part' lacks '.ATTRIBUTES/' "
        "(TF cannot restore it)",
        "tensor 'stray' is in the bundle but no object graph attribute names it",
        "node 0 ((root)): has_checkpoint_values is false but it has values (TF would silently skip restoring it)",
    ]


def test_check_consistency_of_a_name_based_checkpoint_is_empty(corpus):
    with ckptio.open(str(corpus / "tf1_ctc_momentum" / "model.ckpt-200")) as ckpt:
        assert check_consistency(ckpt) == []


# -- ls --objects -----------------------------------------------------------------------------------------


def test_print_objects_text_and_json(graphs):
    prefix = graphs["tf2_keras_weights_2shard"][0]
    with ckptio.open(prefix) as ckpt:
        out = io.StringIO()
        print_objects(ckpt, out, as_json=False)
        text = out.getvalue()
        out = io.StringIO()
        print_objects(ckpt, out, as_json=True)
        doc = json.loads(out.getvalue())
        assert ckpt.bytes_read < 3 * 4096  # the index and the graph tensor only
    assert text.splitlines()[0] == "(root)  #0"
    assert re.search(r"^  optimizer/  #4 \[optimizer\]$", text, re.M)
    assert re.search(r"^    layer-1/kernel/  #5$", text, re.M)
    assert (
        f"= VARIABLE_VALUE  float32[784, 256]  layer-1/kernel/{VALUE}  (sequential/dense/kernel)" in text
        or re.search(r"= VARIABLE_VALUE  float32\[\d+, \d+\]  layer-1/kernel/\.ATTRIBUTES/VARIABLE_VALUE", text)
    )
    assert re.search(r"slot 'm' of layer-1/kernel/  #14", text)
    assert text.rstrip().endswith("graph and bundle agree")
    assert doc["object_based"] and doc["problems"] == []
    nodes = {n["id"]: n for n in doc["nodes"]}
    assert (
        len(nodes) == 22
        and nodes[4]["optimizer"]
        and nodes[14]["slot_of"] == {"optimizer_id": 4, "slot_name": "m", "variable_id": 5}
    )
    assert nodes[5]["attributes"][0]["tensors"][0]["key"] == f"layer-1/kernel/{VALUE}"


def test_print_objects_marks_aliases_and_non_object_checkpoints(graphs, corpus):
    with ckptio.open(graphs["sm_alina_vocab"][0]) as ckpt:
        doc = describe_objects(ckpt)
    first = next(n for n in doc["nodes"] if n["path"] == "layer_with_weights-0/")
    assert first["aliases"] == ["layer-0/", "keras_api/layers/0/"]
    table = next(n for n in doc["nodes"] if n["path"] == "layer_with_weights-0/_index_lookup_layer/_table/")
    assert [t["key"].rsplit("/", 1)[1] for t in table["attributes"][0]["tensors"]] == ["table-keys", "table-values"]
    out, err = io.StringIO(), io.StringIO()
    with ckptio.open(str(corpus / "tf1_ctc_momentum" / "model.ckpt-200")) as ckpt:
        assert print_objects(ckpt, out, as_json=False, err=err) == 1
    assert "not an object-based checkpoint" in err.getvalue() and out.getvalue() == ""
