"""SavedModels through ckptio (issue 12, item 3): stripping into one is refused, a plain checkpoint restores.

Three SavedModels are written once per module by TF 2.21 in one subprocess:
    keras3   tf.saved_model.save of a tf.Module holding a Keras 3 model, its Adam and a `serve` function
    tfkeras  a tf_keras Sequential, compiled and fit one step, model.save(path, save_format='tf')
    tf1      a graph-mode model trained one step with tf.compat.v1 Adam, exported by saved_model.Builder
For each: `ckptio strip SM COPY/variables/variables --force` (COPY a copy of SM) exits 1 with a one-line
reason and leaves COPY byte for byte as it was; `ckptio strip SM out/model.ckpt` writes a plain checkpoint
that TF restores: tf.train.Checkpoint(...).read into a fresh model built the same way (keras3: as `model`;
tfkeras: as the root, since model.save made the model the root of its object graph), a TF1 Saver
into the graph's model variables (tf1), with the SavedModel's values. saved_model.pb's binding of every
variable by key and dtype is FORMAT-models.md §3; ckptio does not edit graphs, so it refuses.

TF 2.21 cannot write the image format (`SaveOptions(experimental_image_format=True)` raises "disabled in
OSS"), and a renamed saved_model.pb is not a faithful saved_model.cpb (that one is a chunked file), so
the .cpb case here is a copy whose graph file is named saved_model.cpb: ckptio reads only its presence.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

import ckptio
from ckptio.cli.main import main

try:
    from tf_support import require_tf, run_tf_json
except ImportError:  # tests/ imported as a package
    from .tf_support import require_tf, run_tf_json

KINDS = ("keras3", "tfkeras", "tf1")

# One subprocess writes the three SavedModels and records their values as TF holds them.
BUILD = r"""
import json, os, sys
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
import numpy as np
import tensorflow as tf
import keras
import tf_keras

root = sys.argv[1] if len(sys.argv) > 1 else ROOT
v1 = tf.compat.v1
x = np.linspace(-1, 1, 24, dtype=np.float32).reshape(6, 4)
y = np.linspace(0, 1, 12, dtype=np.float32).reshape(6, 2)
out = {"x": x.tolist()}

# (a) a tf.Module holding a Keras 3 model, its optimizer, and a serving function.
keras.utils.set_random_seed(1)
model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="relu", name="d1"),
                          keras.layers.Dense(2, name="d2")])
opt = keras.optimizers.Adam(0.01)
with tf.GradientTape() as tape:
    loss = tf.reduce_mean((model(x) - y) ** 2)
opt.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))

class Holder(tf.Module):
    def __init__(self, model, optimizer):
        super().__init__()
        self.model, self.optimizer = model, optimizer

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32)])
    def serve(self, inputs):
        return self.model(inputs)

holder = Holder(model, opt)
tf.saved_model.save(holder, f"{root}/keras3", signatures={"serving_default": holder.serve})
out["keras3"] = {"weights": [w.numpy().tolist() for w in model.weights], "y": model(x).numpy().tolist()}

# (b) tf_keras: compile, fit one step, save in the SavedModel format.
tf_keras.utils.set_random_seed(2)
tk = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(3, activation="relu", name="d1"),
                          tf_keras.layers.Dense(2, name="d2")])
tk.compile(optimizer=tf_keras.optimizers.Adam(0.01), loss="mse")
tk.fit(x, y, epochs=1, batch_size=6, verbose=0)
tk.save(f"{root}/tfkeras", save_format="tf")
out["tfkeras"] = {"weights": [w.numpy().tolist() for w in tk.weights], "y": tk(x).numpy().tolist()}

# (c) TF1 graph mode with Adam, exported by the SavedModel Builder.
g = tf.Graph()
with g.as_default():
    v1.set_random_seed(3)
    inputs = v1.placeholder(tf.float32, [None, 4], name="x")
    with v1.variable_scope("model"):
        w1 = v1.get_variable("d1/kernel", [4, 3])
        b1 = v1.get_variable("d1/bias", [3], initializer=v1.constant_initializer(0.1))
        w2 = v1.get_variable("d2/kernel", [3, 2])
        b2 = v1.get_variable("d2/bias", [2], initializer=v1.constant_initializer(0.2))
    pred = tf.matmul(tf.nn.relu(tf.matmul(inputs, w1) + b1), w2) + b2
    step = v1.train.get_or_create_global_step()
    train = v1.train.AdamOptimizer(0.01).minimize(tf.reduce_mean((pred - y) ** 2), global_step=step)
    with v1.Session() as sess:
        sess.run(v1.global_variables_initializer())
        sess.run(train, {inputs: x})
        builder = v1.saved_model.Builder(f"{root}/tf1")
        signature = v1.saved_model.predict_signature_def({"x": inputs}, {"y": pred})
        builder.add_meta_graph_and_variables(sess, ["serve"], signature_def_map={"serving_default": signature})
        builder.save()
        out["tf1"] = {"weights": {v.op.name: sess.run(v).tolist() for v in (w1, b1, w2, b2, step)},
                      "keys": sorted(v.op.name for v in v1.global_variables())}
print(json.dumps(out))
"""

# One subprocess restores every plain checkpoint ckptio wrote, the way each workflow does.
RESTORE = r"""
import json, os
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
import numpy as np
import tensorflow as tf
import keras
import tf_keras

cfg = json.loads(CFG)
x = np.array(cfg["x"], np.float32)
res = {}

def weights(model):
    return [w.numpy().tolist() for w in model.weights]

# Checkpoint.read is restore() without the Checkpoint's own save_counter, which no SavedModel holds
# (restore().assert_existing_objects_matched() fails on the untouched SavedModel's variables for that alone).

# keras3: a fresh Keras 3 model built as before (other seed), restored as the `model` of a Checkpoint.
keras.utils.set_random_seed(11)
fresh = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="relu", name="d1"),
                          keras.layers.Dense(2, name="d2")])
before = weights(fresh)
status = tf.train.Checkpoint(model=fresh).read(cfg["keras3"])
status.assert_existing_objects_matched()
status.assert_consumed()  # the strip left nothing but the model (the untouched SavedModel also has the optimizer)
res["keras3"] = {"before": before, "after": weights(fresh), "y": fresh(x).numpy().tolist()}

# tfkeras: model.save made the model itself the root of the object graph, so it is the Checkpoint's root.
tf_keras.utils.set_random_seed(12)
fresh = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(3, activation="relu", name="d1"),
                             tf_keras.layers.Dense(2, name="d2")])
before = weights(fresh)
tf.train.Checkpoint(fresh).read(cfg["tfkeras"]).assert_existing_objects_matched()  # keras_api metrics stay
res["tfkeras"] = {"before": before, "after": weights(fresh), "y": fresh(x).numpy().tolist()}

# tf1: the model's variables in a new graph, restored by a TF1 Saver (which needs every key it asks for).
v1 = tf.compat.v1
g = tf.Graph()
with g.as_default():
    with v1.variable_scope("model"):
        made = [v1.get_variable(n, s) for n, s in (("d1/kernel", [4, 3]), ("d1/bias", [3]), ("d2/kernel", [3, 2]),
                                                  ("d2/bias", [2]))]
    made.append(v1.train.get_or_create_global_step())
    with v1.Session() as sess:
        v1.train.Saver(made).restore(sess, cfg["tf1"])
        res["tf1"] = {"after": {v.op.name: sess.run(v).tolist() for v in made},
                      "keys": sorted(k for k, _ in tf.train.list_variables(cfg["tf1"]))}
print(json.dumps(res))
"""


def tree(root) -> dict:
    """{relative path: sha256} of every file under root."""
    root = Path(root)
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def ckptio_cli(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(root, recorded): the three SavedModels under root and the values TF saved in them."""
    require_tf()
    root = tmp_path_factory.mktemp("savedmodels")
    recorded = run_tf_json(BUILD.replace("ROOT", repr(str(root))), timeout=900)
    for kind in KINDS:
        assert (root / kind / "saved_model.pb").is_file() and (root / kind / "variables" / "variables.index").is_file()
    return root, recorded


@pytest.fixture(scope="module")
def restored(saved, tmp_path_factory):
    """Plain checkpoints `ckptio strip SM out/model.ckpt` wrote, and what TF restored from each."""
    root, recorded = saved
    out = tmp_path_factory.mktemp("stripped")
    cfg = {"x": recorded["x"]}
    for kind in KINDS:
        prefix = out / kind / "model.ckpt"
        assert main(["strip", str(root / kind), str(prefix), "-q"]) == 0
        assert not (root / kind / "variables" / "checkpoint").exists()
        cfg[kind] = str(prefix)
    return run_tf_json(f"CFG = {json.dumps(json.dumps(cfg))}\n" + RESTORE, timeout=900)


@pytest.mark.parametrize("kind", KINDS)
def test_strip_into_a_copy_of_the_saved_model_is_refused(saved, tmp_path, capsys, kind):
    root, _ = saved
    copy = tmp_path / "copy"
    shutil.copytree(root / kind, copy)  # cp -r SM COPY
    before = tree(copy)
    rc, out, err = ckptio_cli(capsys, "strip", root / kind, copy / "variables" / "variables", "--force")
    assert rc == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith(f"ckptio: {copy / 'variables' / 'variables'}: ")
    assert (
        f"refusing to write inside the SavedModel {copy}: its saved_model.pb binds every variable by key and "
        "dtype, so edited variables would not load" in err
    )
    assert "write a plain checkpoint elsewhere" in err and "tf.train.Checkpoint" in err and "re-export" in err
    assert tree(copy) == before  # byte-identical, and no `checkpoint` state file in variables/
    assert not (copy / "variables" / "checkpoint").exists()


def test_keras3_module_restores_from_the_plain_strip(saved, restored):
    _, recorded = saved
    got = restored["keras3"]
    assert got["before"] != recorded["keras3"]["weights"]  # the fresh model starts elsewhere
    assert got["after"] == recorded["keras3"]["weights"]
    assert got["y"] == recorded["keras3"]["y"]


def test_tf_keras_model_restores_from_the_plain_strip(saved, restored):
    _, recorded = saved
    got = restored["tfkeras"]
    assert got["before"] != recorded["tfkeras"]["weights"]
    assert got["after"] == recorded["tfkeras"]["weights"]
    assert got["y"] == recorded["tfkeras"]["y"]


def test_tf1_builder_model_restores_into_a_saver(saved, restored):
    _, recorded = saved
    got = restored["tf1"]
    assert got["after"] == recorded["tf1"]["weights"]
    optimizer = [k for k in recorded["tf1"]["keys"] if "Adam" in k or k.startswith("beta")]
    assert len(optimizer) == 10 and got["keys"] == sorted(set(recorded["tf1"]["keys"]) - set(optimizer))


def test_saved_model_cpb_is_recognised(saved, tmp_path, capsys):
    """A SavedModel whose graph file is saved_model.cpb: read like one, and never written into."""
    root, _ = saved
    sm = tmp_path / "image"
    shutil.copytree(root / "keras3", sm)
    os.rename(sm / "saved_model.pb", sm / "saved_model.cpb")
    rc, out, _ = ckptio_cli(capsys, "ls", sm)
    rc_pb, out_pb, _ = ckptio_cli(capsys, "ls", root / "keras3")
    assert rc == rc_pb == 0 and out.replace(str(sm), "SM") == out_pb.replace(str(root / "keras3"), "SM")
    with ckptio.open(sm) as ck:
        assert ck.prefix == str(sm / "variables" / "variables")
    before = tree(sm)
    rc, _, err = ckptio_cli(capsys, "strip", sm, sm / "variables" / "variables", "--force")
    assert rc == 1 and "its saved_model.cpb binds every variable" in err and tree(sm) == before
