"""Issue 12 review (a1-audit12): workflows as a new user runs them, checked by TensorFlow 2.21.

One TF process writes a Keras 3 Functional model with Adam under tf.train.Checkpoint(model, optimizer),
a CheckpointManager run of it, and a TF1 Builder SavedModel (Adam, global_step). ckptio runs through
its CLI; one more TF process restores the outputs as each workflow does and compares values.
"""

from __future__ import annotations

import json
import os
import textwrap

import pytest
from tf_support import require_tf, run_tf_json

from ckptio.cli.main import main

BUILD = textwrap.dedent("""
    import json, os, sys
    import numpy as np
    import tensorflow as tf
    import keras

    root = sys.argv[1]
    tf.random.set_seed(3)
    def model():
        inp = keras.Input((4,))
        h = keras.layers.Dense(3, name="encoder")(inp)
        return keras.Model(inp, keras.layers.Dense(2, name="head")(h))
    m, opt = model(), keras.optimizers.Adam(0.01)
    m.compile(optimizer=opt, loss="mse")
    x = np.random.RandomState(0).randn(16, 4).astype("float32")
    y = np.random.RandomState(1).randn(16, 2).astype("float32")
    m.fit(x, y, verbose=0, epochs=2)
    k3 = tf.train.Checkpoint(model=m, optimizer=opt).save(os.path.join(root, "k3", "ckpt"))
    mgr = tf.train.CheckpointManager(tf.train.Checkpoint(model=m, optimizer=opt), os.path.join(root, "run"),
                                     max_to_keep=3)
    for _ in range(4):
        m.fit(x, y, verbose=0)
        mgr.save()

    with tf.Graph().as_default():
        xp = tf.compat.v1.placeholder(tf.float32, [None, 4], name="x")
        w = tf.compat.v1.get_variable("dense/kernel", [4, 2])
        b = tf.compat.v1.get_variable("dense/bias", [2])
        out = tf.identity(tf.matmul(xp, w) + b, name="y")
        gs = tf.compat.v1.train.get_or_create_global_step()
        train = tf.compat.v1.train.AdamOptimizer(0.1).minimize(tf.reduce_sum(out ** 2), global_step=gs)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            sess.run(train, {xp: x})
            builder = tf.compat.v1.saved_model.Builder(os.path.join(root, "tf1_sm"))
            builder.add_meta_graph_and_variables(sess, ["serve"])
            builder.save()
    print(json.dumps({"k3": k3, "run": [os.path.basename(p) for p in mgr.checkpoints]}))
""")

CHECK = textwrap.dedent("""
    import json, os, sys
    import numpy as np
    import tensorflow as tf
    import keras

    cases = json.loads(sys.argv[1])
    out = {}
    def model():
        inp = keras.Input((4,))
        h = keras.layers.Dense(3, name="encoder")(inp)
        return keras.Model(inp, keras.layers.Dense(2, name="head")(h))
    def weights(m):
        return {v.path: v.numpy().tolist() for v in m.weights}

    src = model()
    tf.train.Checkpoint(model=src).restore(cases["k3"]).expect_partial()
    # Excluding the encoder by the object path the refusal named: the head restores, the encoder is left out.
    fresh = model()
    init = weights(fresh)
    tf.train.Checkpoint(model=fresh).restore(cases["no_encoder"]).expect_partial()
    got, want = weights(fresh), weights(src)
    out["head_restored"] = all(got[k] == want[k] for k in got if k.startswith("head/"))
    out["encoder_left_out"] = all(got[k] == init[k] for k in got if k.startswith("encoder/"))
    out["no_encoder_keys"] = sorted(n for n, _ in tf.train.list_variables(cases["no_encoder"]))

    # --cast-only by object path: TF reads the encoder's two weights as float16, everything else as it was.
    dtypes = tf.train.load_checkpoint(cases["cast_only"]).get_variable_to_dtype_map()
    out["cast_dtypes"] = {k: v.name for k, v in dtypes.items()}
    out["source_dtypes"] = {k: v.name for k, v in tf.train.load_checkpoint(cases["k3"]).get_variable_to_dtype_map().items()}

    # The batch output of a glob over the manager's directory is managed by a new CheckpointManager.
    mgr = tf.train.CheckpointManager(tf.train.Checkpoint(model=model()), cases["batch_out"], max_to_keep=3)
    out["managed"] = [os.path.basename(p) for p in mgr.checkpoints]
    restored = {}
    for p in mgr.checkpoints:
        status = tf.train.Checkpoint(model=model()).restore(p)
        status.assert_consumed()
        restored[os.path.basename(p)] = True
    out["restored"] = restored

    # TF1 Builder SavedModel stripped to a plain prefix restores with a Saver over the model's variables.
    with tf.Graph().as_default():
        w = tf.compat.v1.get_variable("dense/kernel", [4, 2])
        b = tf.compat.v1.get_variable("dense/bias", [2])
        gs = tf.compat.v1.train.get_or_create_global_step()
        with tf.compat.v1.Session() as sess:
            tf.compat.v1.train.Saver().restore(sess, cases["sm_stripped"])
            got = [v.tolist() for v in sess.run([w, b, gs])]
    r = tf.train.load_checkpoint(os.path.join(cases["sm"], "variables", "variables"))
    out["sm_restored"] = got == [r.get_tensor(n).tolist() for n in ("dense/kernel", "dense/bias", "global_step")]
    print(json.dumps(out))
""")


def cli(*argv) -> int:
    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    require_tf()
    root = tmp_path_factory.mktemp("audit12")
    built = run_tf_json(f"import sys; sys.argv = ['x', {str(root)!r}]\n" + BUILD)
    facts = {"root": root, "built": built}
    k3 = built["k3"]
    facts["key_rc"] = cli("rewrite", k3, root / "o" / "by_key", "--exclude", "^optimizer/_trainable_variables/0/")
    facts["path_rc"] = cli(
        "rewrite", k3, root / "o" / "no_encoder", "--strip-optimizer", "--exclude", "^model/_operations/1/"
    )
    facts["cast_rc"] = cli(
        "rewrite", k3, root / "o" / "cast_only", "--cast", "float16", "--cast-only", "^model/_operations/1/", "--json"
    )
    facts["batch_rc"] = cli("strip", "-q", "--out-dir", root / "batch", os.path.join(root, "run", "*"))
    facts["sm_rc"] = cli("strip", root / "tf1_sm", root / "sm_out" / "model.ckpt")
    cases = {
        "k3": k3,
        "no_encoder": str(root / "o" / "no_encoder"),
        "batch_out": str(root / "batch"),
        "cast_only": str(root / "o" / "cast_only"),
        "sm": str(root / "tf1_sm"),
        "sm_stripped": str(root / "sm_out" / "model.ckpt"),
    }
    facts["tf"] = run_tf_json(f"import sys; sys.argv = ['x', {json.dumps(json.dumps(cases))}]\n" + CHECK)
    return facts


def test_a_storage_key_pattern_is_refused_and_names_the_object_path(world, capsys):
    root, k3 = world["root"], world["built"]["k3"]
    assert world["key_rc"] == 2
    assert not os.path.exists(root / "o" / "by_key.index")
    capsys.readouterr()
    assert cli("rewrite", k3, root / "o" / "by_key2", "--include", "^optimizer/_trainable_variables/0/") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "ls --objects" in err and "'model/_operations/1/_kernel/.ATTRIBUTES/VARIABLE_VALUE'" in err


@pytest.mark.parametrize(
    "flag, pattern",
    [("--exclude", "encoder"), ("--include", "encoder/kernel"), ("--exclude-glob", "*_trainable_variables/2/*")],
)
def test_a_pattern_matching_a_variable_name_or_key_but_no_object_path_is_refused(world, capsys, flag, pattern):
    """Keras 3 Functional paths hold no layer names (`model/_operations/1/`); `ls --objects` shows the
    variable name `encoder/kernel` beside them, so `--exclude encoder` would silently drop nothing."""
    root, k3 = world["root"], world["built"]["k3"]
    capsys.readouterr()
    assert cli("rewrite", k3, root / "o" / f"name_{flag}", flag, pattern, "--strip-optimizer") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no object path" in err and "'model/_operations/" in err
    assert not os.path.exists(root / "o" / f"name_{flag}.index")


def test_the_object_path_named_by_the_refusal_selects_the_weight(world):
    assert world["path_rc"] == 0
    tf = world["tf"]
    assert tf["head_restored"] and tf["encoder_left_out"]
    assert not any("_operations/1/" in k or "optimizer/" in k for k in tf["no_encoder_keys"])


def test_a_batch_glob_over_a_manager_directory_exits_0_and_is_managed(world):
    assert world["batch_rc"] == 0
    assert world["tf"]["managed"] == world["built"]["run"]
    assert sorted(world["tf"]["restored"]) == sorted(world["built"]["run"])


def test_a_tf1_builder_saved_model_stripped_to_a_prefix_restores_with_a_saver(world, capsys):
    assert world["sm_rc"] == 0 and world["tf"]["sm_restored"]
    capsys.readouterr()
    assert cli("ls", "--json", world["root"] / "sm_out" / "model.ckpt") == 0
    rows = json.loads(capsys.readouterr().out)
    roles = {t["name"]: t["role"] for t in rows["entries"]}
    assert roles == {"dense/kernel": "weight", "dense/bias": "weight", "global_step": "step"}


def test_cast_only_matches_object_paths_as_filters_do(world):
    """`--cast-only '^model/_operations/1/'` cast nothing on a Keras 3 checkpoint (its keys run through the
    optimizer), exit 0; --include matched the same pattern by object path."""
    assert world["cast_rc"] == 0
    got, src = world["tf"]["cast_dtypes"], world["tf"]["source_dtypes"]
    changed = {k for k in got if got[k] != src[k]}
    assert changed == {
        "optimizer/_trainable_variables/0/.ATTRIBUTES/VARIABLE_VALUE",
        "optimizer/_trainable_variables/1/.ATTRIBUTES/VARIABLE_VALUE",
    }
    assert all(got[k] == "float16" for k in changed)
