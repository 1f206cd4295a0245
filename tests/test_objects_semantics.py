"""What filters, strip and listings mean on TF2 object-based checkpoints (issue 12: item 1 and usability).

Pure Python: hand-built graphs shaped like what Keras writes (FORMAT.md §9.4) and real TF2
checkpoints of the corpus. tests/workflows/test_tf2_objects.py checks the same against TensorFlow.
"""

from __future__ import annotations

import io
import json

import pytest
from test_objgraph import VALUE, build, entries_for, keras3_like, legacy_like, run

import ckptio
from ckptio import PlanError, Rename, Select, StripOptimizer, UnsupportedError
from ckptio.bundle.naming import OBJECT_GRAPH_KEY
from ckptio.cli.main import main
from ckptio.cli.objects import describe_objects, print_objects
from ckptio.objgraph import Child, Node, ObjectGraph, graph_problems, object_roles, plan_object_based
from ckptio.objgraph_select import PATH_LIMIT

K = f"/{VALUE}"


def keras3_functional() -> ObjectGraph:
    """Checkpoint(model=m, optimizer=o) of a Keras 3 Functional model: weights keyed through the optimizer."""
    return build(
        {
            0: {"children": [("model", 1), ("optimizer", 2), ("save_counter", 3)]},
            1: {"children": [("_operations", 4)]},
            2: {"children": [("_variables", 5), ("_trainable_variables", 6), ("_iterations", 7), ("_momentums", 8)]},
            3: {"value": "save_counter" + K},
            4: {"children": [("1", 9), ("2", 10)]},
            5: {"children": [("0", 7), ("1", 13), ("2", 14)]},
            6: {"children": [("0", 11), ("1", 12)]},
            7: {"value": "optimizer/_iterations" + K},
            8: {"children": [("0", 13), ("1", 14)]},
            9: {"children": [("_kernel", 11)]},  # the encoder-like first layer
            10: {"children": [("_kernel", 12)]},
            11: {"value": "optimizer/_trainable_variables/0" + K},
            12: {"value": "optimizer/_trainable_variables/1" + K},
            13: {"value": "optimizer/_variables/1" + K},
            14: {"value": "optimizer/_variables/2" + K},
        }
    )


WEIGHTS = {
    "optimizer/_trainable_variables/0" + K: "model/_operations/1/_kernel" + K,
    "optimizer/_trainable_variables/1" + K: "model/_operations/2/_kernel" + K,
}


# -- select by object path ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "select",
    [
        Select(include=("^model/", "^save_counter/")),
        Select(exclude=("^optimizer/",)),
        Select(include=("model/*", "save_counter/*"), glob=True),
    ],
)
def test_filters_keep_the_model_whatever_its_weights_are_keyed_by(select):
    """Issue 12 item 1: keys say optimizer/_trainable_variables, `ls --objects` says model/: the model wins."""
    mapping, g = run(keras3_functional(), select)
    assert mapping == {**WEIGHTS, "save_counter" + K: "save_counter" + K}
    # The optimizer, left holding only references to the model's weights, went the way strip takes it.
    assert mapping == run(keras3_functional(), StripOptimizer())[0]
    assert graph_problems(g, set(mapping.values())) == []


@pytest.mark.parametrize(
    "select, kept",
    [
        (Select(exclude=("^model/_operations/1/",)), ["model/_operations/2/_kernel" + K, "save_counter" + K]),
        (Select(include=("^model/_operations/1/",)), ["model/_operations/1/_kernel" + K]),
        (Select(include=("model/_operations/1/*",), glob=True), ["model/_operations/1/_kernel" + K]),
    ],
)
def test_select_means_the_same_before_and_after_a_strip(select, kept):
    before, g1 = run(keras3_functional(), select, StripOptimizer())
    after, g2 = run(keras3_functional(), StripOptimizer(), select)
    assert sorted(before.values()) == sorted(kept)
    assert before == after and g1.serialize() == g2.serialize()


def test_exclude_through_an_alias_drops_the_object_and_its_slots():
    """tf_keras lists a layer as layer-0 and layer_with_weights-0: excluding either name drops it."""
    for alias in ("model/layer-0/", "model/layer_with_weights-0/"):
        g = legacy_like()
        g.nodes[1].children[1].local_name = "layer_with_weights-0"
        mapping, _ = run(g, Select(exclude=("^" + alias,)))
        assert mapping == {"optimizer/iter" + K: "optimizer/iter" + K}, alias


def test_legacy_slots_live_in_their_optimizer():
    """tf_keras legacy slots are keyed `var/.OPTIMIZER_SLOT/optimizer/m`, yet belong to the optimizer."""
    weights = {k: k for k in ("model/layer-0/kernel" + K, "model/layer-0/bias" + K)}
    assert run(legacy_like(), Select(exclude=("^optimizer/",)))[0] == weights
    uncompiled = legacy_like()
    uncompiled.nodes[1].children.pop()  # no model -> optimizer edge
    assert run(uncompiled, Select(include=("^model/",)))[0] == weights
    # A model that tracks its optimizer holds the slots too (model/optimizer/), as for Keras 3.
    mapping, _ = run(legacy_like(), Select(include=("^model/",)))
    assert len(mapping) == 5 and "model/layer-0/kernel/.OPTIMIZER_SLOT/optimizer/m" + K in mapping
    # Excluding a variable takes its slots along.
    mapping, _ = run(legacy_like(), Select(exclude=("^model/layer-0/kernel/",)))
    assert sorted(mapping) == [
        "model/layer-0/bias" + K,
        "model/layer-0/bias/.OPTIMIZER_SLOT/optimizer/m" + K,
        "optimizer/iter" + K,
    ]


def test_optimizer_state_reachable_through_a_compiled_model_is_under_model():
    """A compiled Keras model tracks its optimizer: `ls --objects` shows it at optimizer/ and model/optimizer/."""
    g = keras3_like()  # the model holds an edge `optimizer` too
    mapping, _ = run(g, Select(include=("^model/",)))
    assert "optimizer/_iterations" + K in mapping  # kept: reachable as model/optimizer/_iterations
    mapping, _ = run(keras3_like(), Select(exclude=("^model/optimizer/",)))
    assert "optimizer/_iterations" + K not in mapping  # excluded by one of its names: gone
    assert mapping["optimizer/_trainable_variables/0" + K] == "model/net/layer/_kernel" + K


def test_select_after_rename_sees_renamed_paths():
    mapping, _ = run(
        keras3_functional(),
        Rename((("model/_operations/", "model/layers/"),)),
        Select(exclude=("^model/layers/1/",)),
        StripOptimizer(),
    )
    assert mapping == {
        "optimizer/_trainable_variables/1" + K: "model/layers/2/_kernel" + K,
        "save_counter" + K: "save_counter" + K,
    }


def test_an_opaque_key_is_a_name_too():
    g = build({0: {"children": [("a", 1)]}, 1: {"value": "t000" + K}})
    assert run(g, Select(exclude=("^t000",)))[0] == {}
    assert run(build({0: {"children": [("a", 1)]}, 1: {"value": "t000" + K}}), Select(exclude=("^a/",)))[0] == {}
    assert run(build({0: {"children": [("a", 1)]}, 1: {"value": "t000" + K}}), Select(include=("^a/",)))[0] == {
        "t000" + K: "t000" + K
    }


def test_a_graph_with_too_many_paths_is_refused():
    # A ladder of 18 diamonds: 2**18 paths from the root to the last node.
    spec = {}
    for i in range(18):
        top, a, b = 3 * i, 3 * i + 1, 3 * i + 2
        spec[top] = {"children": [("l", a), ("r", b)]}
        spec[a] = spec[b] = {"children": [("n", top + 3)]}
    spec[54] = {"value": "w" + K}
    with pytest.raises(UnsupportedError, match=f"more than {PATH_LIMIT} object paths"):
        run(build(spec), Select(exclude=("x",)))


def test_select_is_order_free_on_every_corpus_graph(corpus, corpus_manifest):
    filters = [Select(exclude=("kernel",)), Select(include=("bias", "save_counter")), Select(exclude=("^model/",))]
    for c in corpus_manifest["checkpoints"]:
        prefix = str(corpus / c["prefix"])
        with ckptio.open(prefix) as ckpt:
            if ckpt.object_graph_bytes is None:
                continue
            for f in filters:
                try:
                    a = plan_object_based(ckpt, [f, StripOptimizer()])
                except PlanError:
                    a = "refused"
                try:
                    b = plan_object_based(ckpt, [StripOptimizer(), f])
                except PlanError:
                    b = "refused"
                assert a == b, (c["short_name"], f)


# -- strip ----------------------------------------------------------------------------------------------


def listed_weights() -> ObjectGraph:
    """Keras 3 with a layer held in a Python list: only optimizer/_trainable_variables/1 reaches its weight."""
    g = keras3_functional()
    g.nodes[4].children.pop()  # the model no longer reaches `2`
    return g


def test_strip_refuses_to_lose_a_weight_only_the_optimizer_reaches():
    with pytest.raises(UnsupportedError, match="would lose 1 model weights") as info:
        run(listed_weights(), StripOptimizer())
    assert info.value.key == "optimizer/_trainable_variables/1" + K


# -- ls roles, counts, show, ls --objects ------------------------------------------------------------------


def test_step_counters_are_steps_in_ls_and_what_drop_global_step_drops(corpus, tmp_path, capsys):
    src = str(corpus / "tf2_eager_vae_adam" / "ckpt-1")
    assert main(["ls", src, "--json"]) == 0
    roles = {e["name"]: e["role"] for e in json.loads(capsys.readouterr().out)["entries"]}
    assert roles["optimizer_step" + K] == "step"
    for flags, gone in (([], {"optimizer"}), (["--drop-global-step"], {"optimizer", "step"})):
        assert main(["strip", src, str(tmp_path / str(len(flags)) / "m"), "--json", *flags]) == 0
        dropped = set(json.loads(capsys.readouterr().out)["dropped"])
        assert dropped == {n for n, r in roles.items() if r in gone}, flags


def test_ls_roles_call_stranded_weights_weights(tmp_path):
    g = listed_weights()

    class Fake:  # object_roles needs the graph bytes, the entries and a path
        path = "fake"
        object_graph_bytes = g.serialize()

        def entries(self):
            return entries_for(g)

    roles = object_roles(Fake())
    assert "optimizer/_trainable_variables/1" + K not in roles  # a weight
    assert roles["optimizer/_iterations" + K] == "optimizer"


def test_strip_report_and_ls_count_tensors_alike(corpus, tmp_path, capsys):
    """The object graph is counted apart everywhere: `kept N tensors ... and the object graph` = `N tensors and ...`."""
    src, out = str(corpus / "tf2_eager_vae_adam" / "ckpt-1"), str(tmp_path / "s" / "m")
    assert main(["strip", src, out, "-q"]) == 0
    said = capsys.readouterr().out
    assert main(["ls", out]) == 0
    listed = capsys.readouterr().out.splitlines()[-1]
    assert said.startswith(f"wrote {out}: kept 14 tensors (0 renamed, 0 cast) and the object graph (rewritten), ")
    assert listed.startswith("14 tensors and the object graph (")
    assert main(["ls", out, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["num_tensors"] == 14 and doc["object_graph"]["bytes"] > 0 and "graph" not in doc["totals"]
    assert len(doc["entries"]) == 15  # the graph's entry is still listed, as TF lists it
    assert main(["verify", out]) == 0
    assert capsys.readouterr().out.startswith("OK: 14 tensors and the object graph, ")
    assert main(["verify", out, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tensors"] == 14
    report = ckptio.rewrite(src, tmp_path / "j" / "m", [StripOptimizer()])
    assert len(report.kept) == 14 and report.object_graph == "rewritten"
    assert report.to_json()["object_graph"] == "rewritten"
    assert ckptio.rewrite(src, tmp_path / "c" / "m", [ckptio.Cast("bfloat16")]).object_graph == "copied"


def test_show_summarises_the_object_graph(corpus, capsys):
    src = str(corpus / "tf2_eager_vae_adam" / "ckpt-1")
    assert main(["show", src, OBJECT_GRAPH_KEY]) == 0
    text = capsys.readouterr().out
    with ckptio.open(src) as ckpt:
        doc = describe_objects(ckpt)
    assert len(text) < 600 and "\\x" not in text and "b'" not in text  # no raw bytes
    assert f"{len(doc['nodes'])} objects, " in text and "1 optimizer (optimizer/)" in text
    assert f"ckptio ls --objects {src}" in text
    assert main(["show", src, OBJECT_GRAPH_KEY, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)["object_graph"]
    assert summary["objects"] == len(doc["nodes"]) and summary["optimizers"] == ["optimizer/"]
    assert summary["slot_variables"] == 24 and summary["problems"] == 0


@pytest.mark.parametrize("flags", [[], ["--json"]])
def test_ls_objects_without_a_graph_is_an_error_on_stderr(corpus, capsys, flags):
    assert main(["ls", str(corpus / "tf1_ctc_momentum" / "model.ckpt-200"), "--objects", *flags]) == 1
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1 and "not an object-based checkpoint" in err


def test_print_objects_returns_zero_for_a_graph(corpus):
    out = io.StringIO()
    with ckptio.open(str(corpus / "tf2_eager_vae_adam" / "ckpt-1")) as ckpt:
        assert print_objects(ckpt, out, as_json=False) == 0
    assert out.getvalue().startswith("(root)  #0")


def test_hand_built_graph_helpers_still_agree():
    # A guard on the helpers above: a Child/Node edit keeps the graph valid.
    g = keras3_functional()
    g.nodes.append(Node())
    g.nodes[0].children.append(Child(len(g.nodes) - 1, "spare"))
    assert ObjectGraph.parse(g.serialize()).serialize() == g.serialize()
