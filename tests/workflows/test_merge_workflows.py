"""`ckptio merge` on checkpoints from real short training runs, checked by TensorFlow itself.

One TF subprocess trains and saves every run (TF1 graph-mode Saver and TF2 Keras 3 with
CheckpointManager, both max_to_keep=5) and dumps what TF reads from each checkpoint; the merges
run here (no TF in this process); a second TF subprocess reads every output, restores the TF1 one
with a Saver and the TF2 one into a fresh Keras model with assert_consumed().
"""

from __future__ import annotations

import json
import os
import textwrap

import ml_dtypes
import numpy as np
import pytest
from tf_support import require_tf, run_tf_json

import ckptio
from ckptio.cli.main import main

PRELUDE = textwrap.dedent('''
    import json, os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import numpy as np
    import tensorflow as tf
    tf1 = tf.compat.v1
    rs = np.random.RandomState(0)
    X, Y = rs.randn(8, 4).astype("float32"), rs.randn(8, 2).astype("float32")

    def tf1_graph(width, scale=True):
        """The TF1 model's variables: a dense layer, a partitioned embedding, a bfloat16 vector."""
        gs = tf1.train.get_or_create_global_step()
        with tf1.variable_scope("dense"):
            k = tf1.get_variable("kernel", [4, width])
            b = tf1.get_variable("bias", [width], initializer=tf1.random_normal_initializer())
        emb = tf1.get_variable("emb", [6, 2], partitioner=tf1.fixed_size_partitioner(2))
        s = tf1.get_variable("scale_bf16", [3], dtype=tf.bfloat16,
                             initializer=tf1.random_normal_initializer()) if scale else None
        return gs, k, b, emb, s

    def keras3_model(bn=True):
        import keras
        layers = [keras.Input((4,)), keras.layers.Dense(3, name="d1")]
        layers += [keras.layers.BatchNormalization(name="bn")] if bn else []
        return keras.Sequential(layers + [keras.layers.Dense(2, name="d2")])

    def dump(prefix, path):
        """What TF reads from a checkpoint, as an .npz (bfloat16 widened exactly to float32) + dtypes."""
        r = tf.train.load_checkpoint(prefix)
        names = sorted(k for k in r.get_variable_to_dtype_map() if k != "_CHECKPOINTABLE_OBJECT_GRAPH")
        dtypes = {k: r.get_variable_to_dtype_map()[k].name for k in names}
        arrays = [np.asarray(r.get_tensor(k)) for k in names]
        arrays = [a.astype(np.float32) if dtypes[k] == "bfloat16" else a for k, a in zip(names, arrays)]
        np.savez(path, *arrays)
        with open(path + ".json", "w") as f:
            json.dump({"names": names, "dtypes": dtypes}, f)
''')

TRAIN = '''
def tf1_run(d, width, scale=True):
    os.makedirs(d, exist_ok=True)
    with tf.Graph().as_default():
        tf1.set_random_seed(0)
        gs, k, b, emb, s = tf1_graph(width, scale)
        h = tf.matmul(X, k)[:, :2] + b[:2] + tf.reduce_sum(tf.convert_to_tensor(emb), axis=0)
        train = tf1.train.AdamOptimizer(0.05).minimize(tf.reduce_mean((h - Y) ** 2), global_step=gs)
        step = train
        if scale:  # not trained by Adam: stepped by hand, so its bfloat16 values change every save
            with tf.control_dependencies([train]):
                step = s.assign(s * tf.constant(1.37, tf.bfloat16) + tf.constant(0.01, tf.bfloat16))
        saver = tf1.train.Saver(max_to_keep=5)
        with tf1.Session() as sess:
            sess.run(tf1.global_variables_initializer())
            for _ in range(6):
                sess.run(step)
                saver.save(sess, os.path.join(d, "model.ckpt"), global_step=gs)

def tf2_run(d, bn=True):
    import keras
    keras.utils.set_random_seed(0)
    m = keras3_model(bn)
    opt = keras.optimizers.Adam(0.05)
    m.compile(optimizer=opt, loss="mse")
    mgr = tf.train.CheckpointManager(tf.train.Checkpoint(model=m, optimizer=opt), d, max_to_keep=5)
    for _ in range(6):
        m.train_on_batch(X, Y)
        mgr.save()

def tf1_v1_run(d):
    """Two saves of a small model in the old V1 format (one table file each)."""
    os.makedirs(d, exist_ok=True)
    with tf.Graph().as_default():
        tf1.set_random_seed(1)
        w = tf1.get_variable("w", [3, 4])
        step = w.assign(w * 0.5 + 0.25)
        saver = tf1.train.Saver(write_version=tf1.train.SaverDef.V1)
        with tf1.Session() as sess:
            sess.run(tf1.global_variables_initializer())
            for i in range(2):
                sess.run(step)
                saver.save(sess, os.path.join(d, "model.ckpt"), global_step=i + 1, write_meta_graph=False)
    return [os.path.join(d, "model.ckpt-%d" % (i + 1)) for i in range(2)]

root = ARGS["root"]
for p in tf1_v1_run(os.path.join(root, "v1")):
    dump(p, p + ".tf.npz")
tf1_run(os.path.join(root, "tf1"), 2)
tf1_run(os.path.join(root, "tf1_wide"), 3)
tf1_run(os.path.join(root, "tf1_noscale"), 2, scale=False)
tf2_run(os.path.join(root, "tf2"))
tf2_run(os.path.join(root, "tf2_nobn"), bn=False)
listed = {}
for run in ("tf1", "tf2"):
    listed[run] = list(tf.train.get_checkpoint_state(os.path.join(root, run)).all_model_checkpoint_paths)
    for p in listed[run]:
        dump(p, p + ".tf.npz")
print(json.dumps(listed))
'''

CHECK = """
out = {}
for prefix in ARGS["dump"]:
    dump(prefix, prefix + ".tf.npz")

# TF1: a Saver over the model's variables alone (no optimizer) restores the merged checkpoint.
with tf.Graph().as_default():
    gs, k, b, emb, s = tf1_graph(2)
    with tf1.Session() as sess:
        tf1.train.Saver().restore(sess, ARGS["tf1_out"])
        values = sess.run({"global_step": gs, "dense/kernel": k, "dense/bias": b,
                           "emb": tf.convert_to_tensor(emb), "scale_bf16": tf.cast(s, tf.float32)})
out["tf1_restored"] = {n: np.asarray(v).tolist() for n, v in values.items()}

# TF2: a fresh Keras model restores the merged checkpoint with every value consumed.
fresh = keras3_model()
status = tf.train.Checkpoint(model=fresh).restore(ARGS["tf2_out"])
try:
    status.assert_consumed()
    out["consumed"] = True
except AssertionError as exc:
    out["consumed"] = str(exc)[:500]
out["restored"] = [w.numpy().tolist() for w in fresh.weights]
out["inputs"] = []
for prefix in ARGS["tf2_inputs"]:
    m = keras3_model()
    tf.train.Checkpoint(model=m).restore(prefix).expect_partial()
    out["inputs"].append([w.numpy().tolist() for w in m.weights])
print(json.dumps(out))
"""


def tf_json(code: str, **args):
    return run_tf_json(
        PRELUDE + f"ARGS = json.loads({json.dumps(json.dumps(args))})\n" + textwrap.dedent(code), timeout=600
    )


def load_tf(prefix) -> dict:
    """What TF read from a checkpoint (bfloat16 tensors as ml_dtypes bfloat16 again)."""
    meta = json.loads(open(prefix + ".tf.npz.json").read())
    with np.load(prefix + ".tf.npz") as z:
        arrays = [z[f"arr_{i}"] for i in range(len(meta["names"]))]
    out = {}
    for name, a in zip(meta["names"], arrays):
        out[name] = a.astype(ml_dtypes.bfloat16) if meta["dtypes"][name] == "bfloat16" else a
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    require_tf()
    root = tmp_path_factory.mktemp("merge_runs")
    listed = tf_json(TRAIN, root=str(root))
    return root, listed


@pytest.fixture(scope="module")
def merged(runs, tmp_path_factory):
    """Every merge of this module, then one TF subprocess reading and restoring the outputs."""
    root, listed = runs
    out = tmp_path_factory.mktemp("merged")
    tf1, tf2 = listed["tf1"], listed["tf2"]
    o = {
        k: str(out / k / "model.ckpt")
        for k in ("tf1", "tf2", "bf16", "weighted", "ema", "task", "slerp", "tf1_opt", "tf2_opt", "v1")
    }
    assert main(["merge", "--last", "3", str(root / "tf1"), o["tf1"], "-q"]) == 0
    assert main(["merge", "--last", "3", str(root / "tf2"), o["tf2"], "-q"]) == 0
    cast = []
    for p in tf2[-3:]:  # bfloat16 checkpoints: the TF2 run's, cast by ckptio (stripped, so keys match the output)
        cast.append(str(out / "cast" / os.path.basename(p)))
        ckptio.rewrite(p, cast[-1], [ckptio.StripOptimizer(), ckptio.Cast("bfloat16")])
    ckptio.merge(cast, o["bf16"])
    ckptio.merge([str(root / "v1" / f"model.ckpt-{i}") for i in (1, 2)], o["v1"])
    reports = {
        "weighted": ckptio.merge(tf1[-3:], o["weighted"], method="weighted", weights=[1, 2, 3]),
        "ema": ckptio.merge(tf1[::-1], o["ema"], method="ema", decay=0.8),
        "task": ckptio.merge(tf1[-2:], o["task"], method="task-arithmetic", base=tf1[0], weights=[0.7, 0.4]),
        "slerp": ckptio.merge([tf1[0], tf1[-1]], o["slerp"], method="slerp", weights=[0.35]),
        "tf1_opt": ckptio.merge(tf1[-3:], o["tf1_opt"], keep_optimizer=True),
        "tf2_opt": ckptio.merge(tf2[-3:], o["tf2_opt"], keep_optimizer=True),
    }
    checked = tf_json(CHECK, dump=list(o.values()) + cast, tf1_out=o["tf1"], tf2_out=o["tf2"], tf2_inputs=tf2[-3:])
    return dict(root=root, tf1=tf1, tf2=tf2, out=o, cast=cast, reports=reports, checked=checked)


def mean_cast_back(arrays):
    """numpy's float64 mean of TF's values, cast back to their dtype."""
    return np.mean(np.stack([a.astype(np.float64) for a in arrays]), axis=0).astype(arrays[0].dtype)


def exact(got, want) -> bool:
    got, want = np.asarray(got), np.asarray(want)
    return got.dtype == want.dtype and got.shape == want.shape and got.tobytes() == want.tobytes()


def floating(a) -> bool:
    return a.dtype in (np.float32, np.float16, np.float64, ml_dtypes.bfloat16)


def test_tf1_last3_mean_is_numpys_mean_of_tfs_values(merged):
    inputs = [load_tf(p) for p in merged["tf1"][-3:]]
    got = load_tf(merged["out"]["tf1"])
    assert sorted(got) == ["dense/bias", "dense/kernel", "emb", "global_step", "scale_bf16"]  # no Adam state
    for name, value in got.items():
        if floating(value):
            assert exact(value, mean_cast_back([i[name] for i in inputs])), name
    assert got["scale_bf16"].dtype == ml_dtypes.bfloat16
    assert got["global_step"] == inputs[-1]["global_step"] == 6
    restored = merged["checked"]["tf1_restored"]  # a Saver restores it, the partitioned variable too
    for name in ("dense/kernel", "dense/bias", "emb"):
        assert np.array_equal(np.array(restored[name], np.float32), got[name]), name
    assert restored["global_step"] == 6


def test_tf2_last3_mean_restores_into_a_fresh_model(merged):
    inputs = [load_tf(p) for p in merged["tf2"][-3:]]
    got = load_tf(merged["out"]["tf2"])
    assert not any("optimizer" in k for k in got), sorted(got)
    assert got["save_counter/.ATTRIBUTES/VARIABLE_VALUE"] == inputs[-1]["save_counter/.ATTRIBUTES/VARIABLE_VALUE"]
    checked = merged["checked"]
    assert checked["consumed"] is True
    for i, restored in enumerate(checked["restored"]):  # weight by weight, through Keras
        want = mean_cast_back([np.array(model[i], np.float32) for model in checked["inputs"]])
        assert exact(np.array(restored, np.float32), want), i


def test_tf2_bfloat16_mean(merged):
    inputs = [load_tf(p) for p in merged["cast"]]
    got = load_tf(merged["out"]["bf16"])
    bf16 = [n for n, v in got.items() if v.dtype == ml_dtypes.bfloat16]
    assert len(bf16) == 8  # every model weight
    for name in bf16:
        assert exact(got[name], mean_cast_back([i[name] for i in inputs])), name


def near(got, want64):
    """Equal to the float64 reference rounded to got's dtype, to within one unit in its last place."""
    want = want64.astype(got.dtype)
    ulp = np.spacing(np.abs(want.astype(np.float32))).astype(np.float64)
    if got.dtype == ml_dtypes.bfloat16:
        ulp = np.abs(want.astype(np.float64)) * 2.0**-7 + 1e-38
    return got.shape == want.shape and (np.abs(got.astype(np.float64) - want.astype(np.float64)) <= ulp).all()


def weights_of(prefixes):
    return [{k: v for k, v in load_tf(p).items() if floating(v)} for p in prefixes]


def test_weighted_ema_task_arithmetic_and_slerp_match_numpy(merged):
    tf1 = merged["tf1"]
    xs = weights_of(tf1)
    f = lambda d, n: d[n].astype(np.float64)  # noqa: E731
    for method, want in [
        ("weighted", lambda n: (f(xs[2], n) * 1 + f(xs[3], n) * 2 + f(xs[4], n) * 3) / 6),
        ("ema", lambda n: _ema([f(x, n) for x in xs], 0.8)),
        ("task", lambda n: f(xs[0], n) + 0.7 * (f(xs[3], n) - f(xs[0], n)) + 0.4 * (f(xs[4], n) - f(xs[0], n))),
        ("slerp", lambda n: _slerp(f(xs[0], n), f(xs[4], n), 0.35)),
    ]:
        got = load_tf(merged["out"][method])
        assert sorted(n for n in got if floating(got[n])) == ["dense/bias", "dense/kernel", "emb", "scale_bf16"]
        for name in (n for n in got if floating(got[n])):
            assert near(got[name], want(name)), (method, name, got[name], want(name))
        assert got["global_step"] == (2 if method == "task" else 6), method  # the base's, else the newest
    assert merged["reports"]["ema"].inputs == tf1  # given newest first, merged in step order
    linear = sorted(n for n in got if floating(got[n]) and abs(_slerp_cos(f(xs[0], n), f(xs[4], n))) > 0.9995)
    assert sorted(merged["reports"]["slerp"].linear) == linear
    assert linear == ["dense/bias", "scale_bf16"]  # so both rules were exercised


def _ema(values, d):
    m = values[0]
    for x in values[1:]:
        m = d * m + (1 - d) * x
    return m


def _slerp_cos(a, b):
    fa, fb = a.reshape(-1), b.reshape(-1)
    return np.dot(fa, fb) / (np.linalg.norm(fa) * np.linalg.norm(fb))


def _slerp(a, b, t):
    """The documented rule: spherical, or linear when |cos| > 0.9995 (near-parallel)."""
    cos = _slerp_cos(a, b)
    if abs(cos) > 0.9995:
        return (1 - t) * a + t * b
    theta = np.arccos(cos)
    return (np.sin((1 - t) * theta) * a + np.sin(t * theta) * b) / np.sin(theta)


def test_keep_optimizer_combines_slots_and_keeps_the_last_counters(merged):
    inputs = [load_tf(p) for p in merged["tf1"][-3:]]
    got = load_tf(merged["out"]["tf1_opt"])
    assert sorted(got) == sorted(inputs[0])
    assert exact(got["dense/kernel/Adam_1"], mean_cast_back([i["dense/kernel/Adam_1"] for i in inputs]))
    tf2_inputs = [load_tf(p) for p in merged["tf2"][-3:]]
    got2 = load_tf(merged["out"]["tf2_opt"])
    it = "optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"
    assert got2[it] == tf2_inputs[-1][it] == 6


def test_v1_checkpoints_merge_into_v2(merged):
    inputs = [str(merged["root"] / "v1" / f"model.ckpt-{i}") for i in (1, 2)]
    with ckptio.open(merged["out"]["v1"]) as c:
        assert c.format == "v2"
    got = load_tf(merged["out"]["v1"])
    assert sorted(got) == ["w"] and exact(got["w"], mean_cast_back([load_tf(p)["w"] for p in inputs]))


@pytest.mark.parametrize(
    "other, expect",
    [
        ("tf1_wide", "entry dense/bias: float32[2] in {a} but float32[3] in {b}"),
        ("tf1_noscale", "tensor 'scale_bf16' is in {a} but not in {b}"),
        # Keras numbers the layers: without BatchNormalization the second Dense is operation 2.
        (
            "tf2_nobn",
            "the object graphs differ: tensor 'model/_functional/_operations/2/_kernel/.ATTRIBUTES/"
            "VARIABLE_VALUE' is in {b} but not in {a}",
        ),
    ],
)
def test_mismatched_runs_exit_1_naming_the_tensor_and_both_files(runs, tmp_path, capfd, other, expect):
    root, _ = runs
    first = "tf2" if other.startswith("tf2") else "tf1"
    with ckptio.open(root / first) as ca, ckptio.open(root / other) as cb:
        a, b = ca.prefix, cb.prefix
    assert main(["merge", str(root / first), str(root / other), str(tmp_path / "x")]) == 1
    err = capfd.readouterr().err
    assert expect.format(a=a, b=b) in err and f"ckptio diff {a} {b}" in err, err
    assert not os.path.exists(tmp_path / "x.index")
