"""CheckpointManager and Saver directories through ckptio, checked by TensorFlow (issue 12, item 6).

A TF2 run (Keras 3 model + Adam, CheckpointManager(max_to_keep=5), 7 saves) and a TF1 graph-mode
Saver run (absolute paths in its state file) are made once. ckptio then strips them in batch mode
and writes single outputs into training directories; one more TF process checks everything TF
sees: what a new CheckpointManager lists and deletes, what each stripped checkpoint restores, and
what latest_checkpoint names.
"""

from __future__ import annotations

import json
import os
import shutil
import textwrap

import pytest
from tf_support import require_tf, run_tf_json

from ckptio.bundle.state import read_state
from ckptio.cli.main import main

BUILD = textwrap.dedent("""
    import json, os, sys, time
    import numpy as np
    import tensorflow as tf
    import keras

    root = sys.argv[1]
    tf.random.set_seed(1)
    m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(2)])
    opt = keras.optimizers.Adam(0.01)
    mgr = tf.train.CheckpointManager(tf.train.Checkpoint(model=m, optimizer=opt), os.path.join(root, "run"),
                                     max_to_keep=5)
    x = np.random.RandomState(0).randn(16, 4).astype("float32")
    y = np.random.RandomState(1).randn(16, 2).astype("float32")
    for step in range(7):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean((m(x) - y) ** 2)
        opt.apply_gradients(zip(tape.gradient(loss, m.trainable_variables), m.trainable_variables))
        mgr.save()
        time.sleep(0.01)

    with tf.Graph().as_default():
        w = tf.compat.v1.get_variable("dense/kernel", initializer=np.arange(6, dtype="float32").reshape(3, 2))
        b = tf.compat.v1.get_variable("dense/bias", initializer=np.zeros(2, "float32"))
        gs = tf.compat.v1.train.get_or_create_global_step()
        loss = tf.reduce_sum(tf.matmul(tf.ones([1, 3]), w) + b) ** 2
        train = tf.compat.v1.train.AdamOptimizer(0.1).minimize(loss, global_step=gs)
        saver = tf.compat.v1.train.Saver(max_to_keep=3)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            for i in range(4):
                sess.run(train)
                saver.save(sess, os.path.join(root, "saver_run", "model.ckpt"), global_step=gs)
    print(json.dumps({"manager": mgr.checkpoints}))
""")

CHECK = textwrap.dedent("""
    import json, os, sys
    import numpy as np
    import tensorflow as tf
    import keras

    cases = json.loads(sys.argv[1])
    out = {}

    def model():
        return keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(2)])

    def weights(m):
        return [v.numpy().tolist() for v in m.weights]

    # Each stripped checkpoint restores into a fresh model: every object matched, weights as trained.
    restores = {}
    for orig, stripped in cases["pairs"]:
        a, b = model(), model()
        tf.train.Checkpoint(model=a).restore(orig).expect_partial()
        status = tf.train.Checkpoint(model=b).restore(stripped)
        try:
            status.assert_existing_objects_matched()
            matched = True
        except AssertionError as e:
            matched = str(e)[:300]
        restores[stripped] = {"matched": matched, "equal": weights(a) == weights(b),
                              "trained": weights(a) != weights(model())}
    out["restores"] = restores

    # A new manager on the batch output lists the stripped checkpoints and deletes the oldest on save.
    d = cases["out_dir"]
    mgr = tf.train.CheckpointManager(tf.train.Checkpoint(model=model()), d, max_to_keep=3)
    out["listed"] = list(mgr.checkpoints)
    out["latest_before"] = mgr.latest_checkpoint
    mgr.save(checkpoint_number=99)
    out["after_save"] = sorted(f[:-6] for f in os.listdir(d) if f.endswith(".index"))
    out["listed_after"] = [os.path.basename(p) for p in mgr.checkpoints]

    out["latest"] = {k: tf.train.latest_checkpoint(v) for k, v in cases["latest_dirs"].items()}
    mgr = tf.train.CheckpointManager(tf.train.Checkpoint(model=model()), cases["made_latest"], max_to_keep=10)
    out["made_latest_listed"] = [os.path.basename(p) for p in mgr.checkpoints]

    # TF1: the stripped Saver checkpoints restore into a graph without the optimizer.
    saver_out = {}
    for orig, stripped in cases["saver_pairs"]:
        with tf.Graph().as_default():
            w = tf.compat.v1.get_variable("dense/kernel", shape=[3, 2])
            b = tf.compat.v1.get_variable("dense/bias", shape=[2])
            gs = tf.compat.v1.train.get_or_create_global_step()
            with tf.compat.v1.Session() as sess:
                tf.compat.v1.train.Saver().restore(sess, stripped)
                got = [x.tolist() for x in sess.run([w, b, gs])]
        r = tf.train.load_checkpoint(orig)
        want = [r.get_tensor(n).tolist() for n in ("dense/kernel", "dense/bias", "global_step")]
        saver_out[os.path.basename(stripped)] = got == want
    out["saver"] = saver_out
    state = tf.train.get_checkpoint_state(cases["saver_out"])
    out["saver_state"] = [os.path.basename(p) for p in state.all_model_checkpoint_paths]
    out["saver_state_dir"] = sorted({os.path.dirname(p) for p in state.all_model_checkpoint_paths})
    mgr = tf.train.CheckpointManager(tf.train.Checkpoint(), cases["saver_out"], max_to_keep=10)
    out["saver_managed"] = [os.path.basename(p) for p in mgr.checkpoints]
    print(json.dumps(out))
""")


def cli(*argv) -> int:
    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Both training runs made by TF, every ckptio operation run, then one TF process checking it all."""
    require_tf()
    root = tmp_path_factory.mktemp("manager")
    built = run_tf_json(f"import sys; sys.argv = ['x', {str(root)!r}]\n" + BUILD)
    run = root / "run"
    state_before = (run / "checkpoint").read_bytes()
    facts = {"root": root, "built": built, "run_state": state_before}

    # Batch over the manager's directory (the state file expands to its five checkpoints).
    facts["batch_rc"] = cli("strip", "-q", "--out-dir", root / "out", run)
    facts["out_state"] = read_state(str(root / "out"))
    facts["out_state_bytes"] = (root / "out" / "checkpoint").read_bytes()
    facts["in_state"] = read_state(str(run))

    # A single output into the input's own directory, and into another training directory.
    facts["own_rc"] = cli("strip", "-q", run / "ckpt-7", run / "stripped")
    other = root / "other_run"
    shutil.copytree(run, other, ignore=shutil.ignore_patterns("stripped*"))
    other_state = (other / "checkpoint").read_bytes()
    facts["other_rc"] = cli("strip", "-q", run / "ckpt-7", other / "stripped")
    facts["other_unchanged"] = (other / "checkpoint").read_bytes() == other_state
    facts["run_unchanged"] = (run / "checkpoint").read_bytes() == state_before

    # --make-latest: the output becomes the latest; every other entry and timestamp is kept.
    flagged = root / "flag_run"
    shutil.copytree(run, flagged, ignore=shutil.ignore_patterns("stripped*"))
    facts["flag_rc"] = cli("strip", "-q", "--make-latest", flagged / "ckpt-7", flagged / "stripped")
    facts["flag_state"] = read_state(str(flagged))

    # TF1 Saver directory (absolute paths, no timestamps) through batch mode.
    facts["saver_rc"] = cli("strip", "-q", "--out-dir", root / "saver_out", root / "saver_run")
    facts["saver_in"] = read_state(str(root / "saver_run"))
    facts["saver_state"] = read_state(str(root / "saver_out"))

    names = [f"ckpt-{i}" for i in range(3, 8)]
    saver_names = [f"model.ckpt-{i}" for i in range(2, 5)]
    cases = {
        "pairs": [[str(run / n), str(root / "out" / n)] for n in names],
        "out_dir": str(root / "out"),
        "latest_dirs": {"run": str(run), "other": str(other), "flag": str(flagged)},
        "made_latest": str(flagged),
        "saver_pairs": [[str(root / "saver_run" / n), str(root / "saver_out" / n)] for n in saver_names],
        "saver_out": str(root / "saver_out"),
    }
    facts["tf"] = run_tf_json(f"import sys; sys.argv = ['x', {json.dumps(json.dumps(cases))}]\n" + CHECK)
    facts["names"], facts["saver_names"] = names, saver_names
    return facts


def test_batch_output_state_file_keeps_the_managers_order_and_timestamps(world):
    assert world["batch_rc"] == 0
    got, src = world["out_state"], world["in_state"]
    assert got.paths == tuple(world["names"]) and got.latest == "ckpt-7"  # relative, like TF writes them
    assert got.timestamps == src.timestamps and len(got.timestamps) == 5
    assert got.last_preserved == src.last_preserved > 0
    # Same entries as the manager's own file, so the same bytes: TF's text format, field order, doubles.
    assert world["out_state_bytes"] == world["run_state"]


def test_new_manager_lists_the_stripped_checkpoints_and_keeps_only_three(world):
    tf = world["tf"]
    out = world["root"] / "out"
    assert tf["listed"] == [str(out / n) for n in world["names"]]
    assert tf["latest_before"] == str(out / "ckpt-7")
    # The next save sweeps down to max_to_keep=3, deleting the oldest outputs from disk.
    assert tf["after_save"] == ["ckpt-6", "ckpt-7", "ckpt-99"]
    assert tf["listed_after"] == ["ckpt-6", "ckpt-7", "ckpt-99"]


def test_each_stripped_checkpoint_restores_into_a_fresh_model(world):
    restores = world["tf"]["restores"]
    assert len(restores) == 5
    for path, r in restores.items():
        assert r == {"matched": True, "equal": True, "trained": True}, path


def test_output_into_a_training_directory_leaves_its_latest(world):
    assert world["own_rc"] == 0 and world["other_rc"] == 0
    assert world["run_unchanged"] and world["other_unchanged"]  # byte for byte
    root = world["root"]
    assert world["tf"]["latest"]["run"] == str(root / "run" / "ckpt-7")
    assert world["tf"]["latest"]["other"] == str(root / "other_run" / "ckpt-7")


def test_make_latest_moves_latest_and_keeps_every_other_entry(world):
    assert world["flag_rc"] == 0
    src, got = world["in_state"], world["flag_state"]
    assert world["tf"]["latest"]["flag"] == str(world["root"] / "flag_run" / "stripped")
    assert got.paths == src.paths + ("stripped",) and got.latest == "stripped"
    assert got.timestamps[:5] == src.timestamps and got.timestamps[5] > src.timestamps[4]
    assert got.last_preserved == src.last_preserved
    # A manager there still manages the training checkpoints and the new one.
    assert world["tf"]["made_latest_listed"] == world["names"] + ["stripped"]


def test_saver_directory_through_batch_mode(world):
    assert world["saver_rc"] == 0
    assert all(os.path.isabs(p) for p in world["saver_in"].paths)  # what TF1's Saver wrote
    tf = world["tf"]
    assert tf["saver"] == {n: True for n in world["saver_names"]}
    assert world["saver_state"].paths == tuple(world["saver_names"])  # relative in the output
    assert tf["saver_state"] == world["saver_names"]
    assert tf["saver_state_dir"] == [str(world["root"] / "saver_out")]
    # Timestamps written (the input had none): a manager manages the outputs.
    assert tf["saver_managed"] == world["saver_names"]
