"""Audit of fit and merge on real TF-written checkpoints (issues 14 and 16): the gaps the audit closed.

One TF subprocess writes every checkpoint and dumps what TF reads from each (module fixture); ckptio's
CLI runs as a user would; one more TF subprocess restores the outputs. TF's values are the oracle.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from tf_support import require_tf, run_tf_json

from ckptio.cli.main import main

pytestmark = pytest.mark.filterwarnings("ignore")

COMMON = r"""
import os, json
import numpy as np
import tensorflow as tf
keras = tf.keras
D = os.environ["AUDIT_DIR"]

class Net(keras.Model):
    def __init__(self, second=None):
        super().__init__()
        self.encoder = keras.layers.Dense(4, name="enc")
        if second:
            self.backbone = keras.layers.Dense(4, name="bb")
        self.second = second
        self.head = keras.layers.Dense(3, name="head")
    def call(self, x):
        h = self.encoder(x)
        return self.head(self.backbone(h) if self.second else h)

def tf1_graph(parts, extra):
    g = tf.Graph()
    with g.as_default():
        tf.compat.v1.set_random_seed(parts)
        with tf.compat.v1.variable_scope("emb", partitioner=tf.compat.v1.fixed_size_partitioner(parts)):
            e = tf.compat.v1.get_variable("table", [7, 3])
        k = tf.compat.v1.get_variable("dense/kernel", [5, 4])
        if extra:
            tf.compat.v1.get_variable("extra", [2], initializer=tf.compat.v1.constant_initializer(5.0))
        gs = tf.compat.v1.train.get_or_create_global_step()
    return g, e, k, gs

def dump(prefix, tag, out):
    r = tf.train.load_checkpoint(prefix)
    for name in r.get_variable_to_shape_map():
        if name != "_CHECKPOINTABLE_OBJECT_GRAPH":
            out[tag + "|" + name] = r.get_tensor(name)
"""

BUILD = (
    COMMON
    + r"""
out = {}
x = np.random.RandomState(0).randn(8, 5).astype(np.float32)
# A Keras 3 run kept by a CheckpointManager (max_to_keep=5): ckpt-2 ... ckpt-6 remain.
m = Net(); m(x[:1]); opt = keras.optimizers.Adam(0.1)
ck = tf.train.Checkpoint(model=m, optimizer=opt, step=tf.Variable(0, dtype=tf.int64))
mgr = tf.train.CheckpointManager(ck, os.path.join(D, "run"), max_to_keep=5)
for i in range(6):
    with tf.GradientTape() as t:
        loss = tf.reduce_mean(m(x) ** 2)
    opt.apply_gradients(zip(t.gradient(loss, m.trainable_variables), m.trainable_variables))
    ck.step.assign_add(1)
    mgr.save()
for n in range(2, 7):
    dump(os.path.join(D, "run", "ckpt-%d" % n), "ckpt-%d" % n, out)
# A model with encoder and backbone (same shapes), and a template with a backbone only.
s = Net(second=True); s(x[:1]); tf.train.Checkpoint(model=s).write(os.path.join(D, "two", "ckpt"))
t = Net(second=True); t(x[:1]); del t.encoder  # noqa: the template has no encoder attribute
tf.train.Checkpoint(model=t).write(os.path.join(D, "one", "ckpt"))
# TF1 Saver: a source with emb/table in 2 partitions and Adam; a template with 3 partitions, no optimizer,
# one new variable.
g, e, k, gs = tf1_graph(2, False)
with g.as_default():
    loss = tf.reduce_sum(tf.convert_to_tensor(e) ** 2) + tf.reduce_sum(k ** 2)
    train = tf.compat.v1.train.AdamOptimizer(0.1).minimize(loss, global_step=gs)
    with tf.compat.v1.Session() as sess:
        sess.run(tf.compat.v1.global_variables_initializer())
        sess.run(train)
        tf.compat.v1.train.Saver().save(sess, os.path.join(D, "tf1src", "model.ckpt"), global_step=gs)
g, e, k, gs = tf1_graph(3, True)
with g.as_default(), tf.compat.v1.Session() as sess:
    sess.run(tf.compat.v1.global_variables_initializer())
    tf.compat.v1.train.Saver().save(sess, os.path.join(D, "tf1tpl", "model.ckpt"))
dump(os.path.join(D, "tf1src", "model.ckpt-1"), "tf1src", out)
dump(os.path.join(D, "tf1tpl", "model.ckpt"), "tf1tpl", out)
np.savez(os.path.join(D, "built.npz"), **out)
print(json.dumps("ok"))
"""
)

RESTORE = (
    COMMON
    + r"""
out = {}
# The fitted TF1 checkpoint, restored by Saver into the template's graph (3 partitions).
g, e, k, gs = tf1_graph(3, True)
with g.as_default(), tf.compat.v1.Session() as sess:
    tf.compat.v1.train.Saver().restore(sess, os.path.join(D, "fit1", "model.ckpt"))
    out["fit1|emb/table"] = sess.run(tf.convert_to_tensor(e))
    for v in tf.compat.v1.global_variables():
        if "emb" not in v.name:
            out["fit1|" + v.op.name] = sess.run(v)
# The merge of ckpt-3, ckpt-4, ckpt-6, restored into a fresh model with assert_consumed().
m = Net(); m(np.zeros((1, 5), np.float32))
c = tf.train.Checkpoint(model=m, step=tf.Variable(0, dtype=tf.int64))
c.restore(os.path.join(D, "avg", "ckpt")).assert_consumed()  # save_counter too
for layer in ("encoder", "head"):
    for w in ("kernel", "bias"):
        out["avg|%s/%s" % (layer, w)] = getattr(getattr(m, layer), w).numpy()
out["avg|step"] = c.step.numpy()
np.savez(os.path.join(D, "restored.npz"), **out)
print(json.dumps("ok"))
"""
)


def _tf(code: str, d) -> None:
    os.environ["AUDIT_DIR"] = str(d)
    try:
        run_tf_json(code, timeout=600)
    finally:
        del os.environ["AUDIT_DIR"]


def _load(path) -> dict:
    out: dict[str, dict] = {}
    with np.load(path) as z:
        for name in z.files:
            tag, key = name.split("|", 1)
            out.setdefault(tag, {})[key] = z[name]
    return out


def _cli(*argv) -> int:
    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """Build with TF, run ckptio as a user would, restore with TF; (dir, TF's values, restored, exit codes)."""
    require_tf()
    d = tmp_path_factory.mktemp("audit")
    _tf(BUILD, d)
    built = _load(d / "built.npz")
    codes = {}
    # A checkpoint the state file lists is deleted by hand (disk cleanup, a failed copy).
    for name in os.listdir(d / "run"):
        if name.startswith("ckpt-5."):
            os.remove(d / "run" / name)
    codes["last"] = _cli("merge", "--last", "3", d / "run", d / "avg_last" / "ckpt")
    codes["avg"] = _cli("merge", d / "run" / "ckpt-3", d / "run" / "ckpt-4", d / "run" / "ckpt-6", d / "avg" / "ckpt")
    codes["fit1"] = _cli(
        "fit",
        d / "tf1src" / "model.ckpt-1",
        "--template",
        d / "tf1tpl" / "model.ckpt",
        d / "fit1" / "model.ckpt",
        "--json",
    )
    _tf(RESTORE, d)
    return d, built, _load(d / "restored.npz"), codes


def test_merge_last_with_a_deleted_listed_checkpoint_exits_1_and_writes_nothing(done, capfd):
    d, _, _, codes = done
    assert codes["last"] == 1
    assert not (d / "avg_last" / "ckpt.index").exists()


def test_merge_of_the_remaining_checkpoints_is_tfs_float64_mean(done):
    d, built, restored, codes = done
    assert codes["avg"] == 0
    avg = restored["avg"]
    assert int(avg["step"]) == int(built["ckpt-6"]["step/.ATTRIBUTES/VARIABLE_VALUE"])  # the last input's
    checked = 0
    for key, value in built["ckpt-6"].items():
        if not key.startswith("model/"):
            continue
        layer, _, rest = key[len("model/") :].partition("/")
        weight = rest.split("/")[0].lstrip("_")
        path = f"{layer}/{weight}"
        want = np.mean([built[c][key].astype(np.float64) for c in ("ckpt-3", "ckpt-4", "ckpt-6")], axis=0)
        assert avg[path].tobytes() == want.astype(value.dtype).tobytes(), key
        checked += 1
    assert checked == 4


def test_fit_tf1_partitioned_source_into_a_differently_partitioned_tf1_template_by_key(done):
    """emb/table in 2 partitions into a template with 3: matched by key, re-cut; Saver restores it."""
    d, built, restored, codes = done
    assert codes["fit1"] == 0
    got, src, tpl = restored["fit1"], built["tf1src"], built["tf1tpl"]
    np.testing.assert_array_equal(got["emb/table"], src["emb/table"])
    np.testing.assert_array_equal(got["dense/kernel"], src["dense/kernel"])
    np.testing.assert_array_equal(got["extra"], tpl["extra"])  # new in the template: the template's value
    assert got["global_step"] == src["global_step"]
    assert not any("Adam" in k or "power" in k for k in got)  # the template has no optimizer


def test_fit_map_onto_a_weight_the_source_also_has_is_refused_naming_both(done, tmp_path, capfd):
    """Keras 3: --map model/encoder/=model/backbone/ while the source has its own backbone."""
    d, _, _, _ = done
    capfd.readouterr()
    out = tmp_path / "o" / "ckpt"
    code = _cli(
        "fit", d / "two" / "ckpt", "--template", d / "one" / "ckpt", out, "--map", "model/encoder/=model/backbone/"
    )
    err = capfd.readouterr().err
    assert code == 1 and err.count("\n") == 1, err
    assert "model/encoder/_kernel" in err and "model/backbone/_kernel" in err and "two source tensors" in err
    assert not out.with_suffix(".index").exists()
