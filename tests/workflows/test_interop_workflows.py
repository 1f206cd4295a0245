"""Real workflows across formats, with the real readers as the oracle.

- Every corpus checkpoint exported to .safetensors and .npz reads back (safetensors.numpy /
  numpy.load) with exactly the sha256 TensorFlow's reading has in MANIFEST.json.
- A Keras 3 model's weights in safetensors, rewritten to a TF prefix, load in
  tf.train.load_checkpoint and a TF1 Saver with equal values.
- `strip` of a compiled and trained Keras 3 .keras file: smaller, load_model works, same predictions;
  stripped into a .weights.h5, model.load_weights gives the same predictions too.
TF runs in two subprocesses per module (one writes the Keras inputs, one checks all outputs).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_formats_npz import load_npz
from test_formats_safetensors import load_reference
from tf_support import hash_array, require_tf, run_tf_json

import ckptio

REPO = Path(__file__).resolve().parents[2]
CORPUS_ROOT = (REPO / ".." / "shared" / "corpus").resolve()


def _manifest_entries():
    try:
        manifest = json.loads((CORPUS_ROOT / "MANIFEST.json").read_text())
    except OSError:
        return [pytest.param(None, id="no-corpus")]
    return [pytest.param(c, id=c["short_name"]) for c in manifest["checkpoints"]]


def _export(corpus, rec, out):
    """Export a corpus checkpoint with its string tensors excluded; returns what TF read of the rest.

    In a TF2 checkpoint a saved object's tensors are selected together (a lookup table's string
    keys and int64 values), so the whole object of a string tensor is excluded.
    """
    strings = [
        n.split("/.ATTRIBUTES/")[0] + "/.ATTRIBUTES/" if "/.ATTRIBUTES/" in n else n
        for n, t in rec["tensors"].items()
        if t["dtype"] == "string"
    ]
    patterns = tuple(f"^{re.escape(n)}" + ("" if n.endswith("/") else "$") for n in strings)
    steps = [ckptio.Select(exclude=patterns)] if strings else []
    ckptio.rewrite(str(corpus / rec["prefix"]), str(out), steps)
    return {n: t for n, t in rec["tensors"].items() if not any(re.match(p, n) for p in patterns)}


@pytest.mark.parametrize("rec", _manifest_entries())
@pytest.mark.parametrize("fmt", ["safetensors", "npz"])
def test_corpus_export_reads_back_as_tensorflow_read_it(corpus, rec, fmt, tmp_path):
    assert rec is not None
    out = tmp_path / f"model.{fmt}"
    want = _export(corpus, rec, out)
    got = load_reference(out) if fmt == "safetensors" else load_npz(out)[0]
    assert set(got) == set(want)
    for name, w in want.items():
        value = got[name]
        assert (value.dtype.name, list(value.shape)) == (w["dtype"], w["shape"]), name
        assert hash_array(value) == w["sha256"], name


def test_corpus_sharded_export_maps_every_tensor_to_its_shard(corpus, corpus_manifest, tmp_path):
    rec = next(c for c in corpus_manifest["checkpoints"] if c["short_name"] == "tf1_t2t_transformer")
    out = tmp_path / "model.safetensors"
    strings = [n for n, t in rec["tensors"].items() if t["dtype"] == "string"]
    assert not strings
    ckptio.rewrite(str(corpus / rec["prefix"]), str(out), max_shard_size=256 << 10)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and shards == sorted(p.name for p in tmp_path.glob("model-*-of-*.safetensors"))
    assert set(index["weight_map"]) == set(rec["tensors"])
    total = 0
    for shard in shards:
        got = load_reference(tmp_path / shard)
        assert {n for n, s in index["weight_map"].items() if s == shard} == set(got)
        for name, value in got.items():
            assert hash_array(value) == rec["tensors"][name]["sha256"], name
            total += value.nbytes
    assert index["metadata"]["total_size"] == total


# -- Keras 3 and TensorFlow ---------------------------------------------------------------------------------

MAKE_KERAS = r"""
import json, os, sys
import numpy as np
import keras
from safetensors.numpy import save_file
out = sys.argv[1] if len(sys.argv) > 1 else OUT
keras.utils.set_random_seed(3)
inp = keras.Input((6,), name="x")
h = keras.layers.Dense(8, activation="relu", name="d1")(inp)
h = keras.layers.BatchNormalization(name="bn")(h)
y = keras.layers.Dense(3, name="head")(h)
model = keras.Model(inp, y, name="mlp")
model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
x = np.random.default_rng(0).standard_normal((32, 6)).astype("float32")
model.fit(x, np.random.default_rng(1).standard_normal((32, 3)).astype("float32"), epochs=2, verbose=0)
model.save(os.path.join(OUT, "trained.keras"))
np.save(os.path.join(OUT, "x.npy"), x)
np.save(os.path.join(OUT, "pred.npy"), model.predict(x, verbose=0))
# A Keras-style model's weights under their variable paths (d1/kernel, bn/moving_mean ...)
weights = {v.path: np.asarray(v.numpy()) for v in model.weights}
save_file(weights, os.path.join(OUT, "weights.safetensors"))
print(json.dumps({"names": sorted(weights), "optimizer_vars": len(model.optimizer.variables)}))
"""

CHECK = r"""
import hashlib, json, os
import numpy as np
import tensorflow as tf
import keras
def h(a):
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()
result = {}
reader = tf.train.load_checkpoint(os.path.join(OUT, "tf", "model.ckpt"))
shapes = reader.get_variable_to_shape_map()
result["load_checkpoint"] = {n: h(reader.get_tensor(n)) for n in shapes}
with tf.Graph().as_default():
    vs = [tf.compat.v1.get_variable(n, shape=s, dtype=tf.float32) for n, s in sorted(shapes.items())]
    saver = tf.compat.v1.train.Saver(vs)
    with tf.compat.v1.Session() as sess:
        saver.restore(sess, os.path.join(OUT, "tf", "model.ckpt"))
        result["saver"] = {n: h(v) for (n, _), v in zip(sorted(shapes.items()), sess.run(vs))}
x = np.load(os.path.join(OUT, "x.npy"))
want = np.load(os.path.join(OUT, "pred.npy"))
m = keras.models.load_model(os.path.join(OUT, "stripped.keras"), compile=False)
result["stripped_same_predictions"] = bool(np.array_equal(m.predict(x, verbose=0), want))
result["stripped_weights"] = len(m.weights)
fresh = keras.models.clone_model(m)  # same architecture, new random weights
result["fresh_differs"] = not bool(np.array_equal(fresh.predict(x, verbose=0), want))
fresh.load_weights(os.path.join(OUT, "stripped.weights.h5"))
result["weights_h5_same_predictions"] = bool(np.array_equal(fresh.predict(x, verbose=0), want))
print(json.dumps(result))
"""


@pytest.fixture(scope="module")
def keras_outputs(tmp_path_factory):
    """Keras inputs written by TF, converted by ckptio, and checked by TF: (dir, make result, check result)."""
    require_tf()
    d = tmp_path_factory.mktemp("keras")
    made = run_tf_json(f"OUT = {str(d)!r}\n" + MAKE_KERAS)
    ckptio.rewrite(str(d / "weights.safetensors"), str(d / "tf" / "model.ckpt"))
    strip = subprocess.run(
        [sys.executable, "-m", "ckptio", "strip", str(d / "trained.keras"), str(d / "stripped.keras")],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    assert strip.returncode == 0, strip.stderr
    ckptio.rewrite(str(d / "trained.keras"), str(d / "stripped.weights.h5"), [ckptio.StripOptimizer()])
    checked = run_tf_json(f"OUT = {str(d)!r}\n" + CHECK)
    return d, made, checked


def test_safetensors_keras_weights_load_in_tensorflow(keras_outputs):
    d, made, checked = keras_outputs
    want = {n: hash_array(a) for n, a in load_reference(d / "weights.safetensors").items()}
    assert sorted(want) == made["names"] and "bn/moving_mean" in want
    assert checked["load_checkpoint"] == want
    assert checked["saver"] == want


def test_strip_keras_archive_drops_optimizer_and_loads(keras_outputs):
    d, made, checked = keras_outputs
    assert (d / "stripped.keras").stat().st_size < (d / "trained.keras").stat().st_size
    with ckptio.open(str(d / "trained.keras")) as before, ckptio.open(str(d / "stripped.keras")) as after:
        opt = [n for n in before if n.startswith("optimizer/")]
        assert len(opt) == made["optimizer_vars"] > 2  # trained: slots exist
        assert set(after) == set(before) - set(opt)
        for name in after:
            assert after[name].read().tobytes() == before[name].read().tobytes()
    assert checked["stripped_same_predictions"] is True
    assert checked["stripped_weights"] == len(made["names"])


def test_strip_keras_archive_into_weights_h5_loads_with_load_weights(keras_outputs):
    d, made, checked = keras_outputs
    with ckptio.open(str(d / "stripped.weights.h5")) as ck:
        assert len(ck) == len(made["names"]) and not [n for n in ck if n.startswith("optimizer/")]
    assert checked["fresh_differs"] is True
    assert checked["weights_h5_same_predictions"] is True


def test_strip_tf2_checkpoint_into_safetensors_drops_the_optimizer(corpus, corpus_manifest, tmp_path):
    """strip goes by the object graph, as for a TF prefix: slots and the optimizer's own variables go."""
    rec = next(c for c in corpus_manifest["checkpoints"] if c["short_name"] == "tf2_eager_vae_adam")
    out = tmp_path / "vae.safetensors"
    report = ckptio.rewrite(str(corpus / rec["prefix"]), str(out), [ckptio.StripOptimizer()])
    got = load_reference(out)
    assert got and not [n for n in got if ".OPTIMIZER_SLOT" in n or n.startswith("optimizer/")]
    assert any(".OPTIMIZER_SLOT" in n for n in report.dropped)
    for name, value in got.items():
        assert hash_array(value) == rec["tensors"][name]["sha256"], name


FIT_STAGE = r"""
import json, os
import numpy as np
import tensorflow as tf
import keras
x, want = np.load(os.path.join(OUT, "x.npy")), np.load(os.path.join(OUT, "pred.npy"))
trained = keras.models.load_model(os.path.join(OUT, "trained.keras"), compile=False)
m = keras.models.clone_model(trained)  # the same architecture and layer names, fresh weights
if STAGE == "template":
    tf.train.Checkpoint(model=m).write(os.path.join(OUT, "tpl", "ckpt"))
    print(json.dumps({"written": True}))
else:
    before = bool(np.array_equal(m.predict(x, verbose=0), want))
    tf.train.Checkpoint(model=m).read(os.path.join(OUT, "fitted", "ckpt")).assert_consumed()
    print(json.dumps({"before": before, "after": bool(np.array_equal(m.predict(x, verbose=0), want))}))
"""


def test_safetensors_weights_fit_into_a_tf2_model_and_restore_with_assert_consumed(keras_outputs):
    """Weights from safetensors (Keras variable paths) land in a TF2 model's object-based checkpoint."""
    d, made, _ = keras_outputs
    run_tf_json(f"OUT = {str(d)!r}\nSTAGE = 'template'\n" + FIT_STAGE)
    report = ckptio.fit(str(d / "weights.safetensors"), str(d / "tpl" / "ckpt"), str(d / "fitted" / "ckpt"))
    assert len(report.matched) == len(made["names"]) and report.template_only == []
    assert {m["how"] for m in report.matched} == {"full_name"}  # by the variable names TF recorded
    got = run_tf_json(f"OUT = {str(d)!r}\nSTAGE = 'restore'\n" + FIT_STAGE)
    assert got == {"before": False, "after": True}  # assert_consumed passed, predictions identical
