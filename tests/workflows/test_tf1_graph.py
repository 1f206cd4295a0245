"""TF1 graph-mode training saved by `tf.compat.v1.train.Saver`, stripped and cast by ckptio, restored as TF1 does.

One TF subprocess trains a small model (conv and dense through tf.compat.v1.layers, a variable split by
fixed_size_partitioner, a float64 variable) a few steps with each optimizer: the tf.compat.v1.train ones
(slots `V/Adam`, FORMAT.md §9.1) and tf_keras legacy ones through `get_updates` (slots `Adam/V/m`,
FORMAT-models.md §4), one with an ExponentialMovingAverage. TF says which variables are the model's and
which the optimizer's. ckptio then runs as a user runs it (`ckptio ls`, `strip`, `rewrite --cast`), and
one more TF subprocess restores every output into a fresh graph without the optimizer, with
`Saver(var_list=model variables).restore` and with `init_from_checkpoint`, and lists what it holds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from tf_support import REPO, require_tf, run_tf_json

pytestmark = pytest.mark.filterwarnings("ignore")

TF1 = ("tf1_adam", "tf1_momentum_ema", "tf1_rmsprop", "tf1_adagrad", "tf1_ftrl")
KERAS = ("keras_adam_amsgrad", "keras_rmsprop_centered", "keras_adagrad", "keras_ftrl", "keras_mix")
CONFIGS = TF1 + KERAS

# Shared by both TF subprocesses: the model, built in any float dtype (the cast outputs need bfloat16).
PRELUDE = r'''
import hashlib, json, os, sys
os.environ["TF_USE_LEGACY_KERAS"] = "1"  # tf.compat.v1.layers needs Keras 2
import numpy as np
import tensorflow as tf
import tf_keras
tf.compat.v1.disable_eager_execution()
v1 = tf.compat.v1

def model(dtype=tf.float32, wide=tf.float64):
    x = tf.cast(tf.constant(np.random.RandomState(0).rand(4, 8, 8, 3)), dtype)
    h = v1.layers.conv2d(x, 4, 3, name="conv1")
    h = tf.reshape(h, [4, 6 * 6 * 4])
    with v1.variable_scope("part", partitioner=v1.fixed_size_partitioner(3)):
        w = v1.get_variable("w", shape=[144, 5], dtype=dtype)
    y = v1.layers.dense(tf.matmul(h, w), 2, name="dense")
    d = v1.get_variable("scale/d64", shape=[3], dtype=wide, initializer=v1.random_normal_initializer())
    return tf.reduce_sum(y * y) * 1e-2 + tf.cast(tf.reduce_sum(d * d), dtype)

def digest(value):
    value = np.ascontiguousarray(value)
    return value.dtype.name + ":" + hashlib.sha256(value.tobytes()).hexdigest()

def key_of(v):
    """The checkpoint key a variable is saved under (a partitioned variable's parts share one)."""
    info = getattr(v, "_save_slice_info", None)
    return info.full_name if info else v.op.name
'''

BUILD = (
    PRELUDE
    + r"""
OUT = sys.argv[1] if len(sys.argv) > 1 else %(out)r
K = tf_keras.optimizers.legacy
TF1 = {"tf1_adam": lambda: [v1.train.AdamOptimizer(0.01)],
       "tf1_momentum_ema": lambda: [v1.train.MomentumOptimizer(0.01, 0.9)],
       "tf1_rmsprop": lambda: [v1.train.RMSPropOptimizer(0.01, momentum=0.9)],
       "tf1_adagrad": lambda: [v1.train.AdagradOptimizer(0.1)],
       "tf1_ftrl": lambda: [v1.train.FtrlOptimizer(0.1)]}
KERAS = {"keras_adam_amsgrad": lambda: [K.Adam(0.01, amsgrad=True)],
         "keras_rmsprop_centered": lambda: [K.RMSprop(0.01, momentum=0.9, centered=True)],
         "keras_adagrad": lambda: [K.Adagrad(0.1)],
         "keras_ftrl": lambda: [K.Ftrl(0.1)],
         # every other slot kind, and a second Adam (its scope becomes Adam_1)
         "keras_mix": lambda: [K.SGD(0.01, momentum=0.9), K.Adadelta(1.0), K.Nadam(0.01), K.Adamax(0.01),
                               K.Adam(0.01), K.Adam(0.02)]}
result = {}
for name, make in list(TF1.items()) + list(KERAS.items()):
    g = tf.Graph()
    with g.as_default():
        loss = model()
        model_vars = v1.global_variables()
        gs = v1.train.get_or_create_global_step()
        if name in TF1:
            train = make()[0].minimize(loss, global_step=gs)
        else:
            updates = []
            for opt in make():
                updates += opt.get_updates(loss, model_vars)
            train = tf.group(updates + [v1.assign_add(gs, 1)])
        shadows = []
        if name.endswith("_ema"):
            ema = v1.train.ExponentialMovingAverage(0.9)
            with tf.control_dependencies([train]):
                train = ema.apply(model_vars)
            shadows = sorted({key_of(ema.average(v)) for v in model_vars})
        saver = v1.train.Saver()
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            for _ in range(3):
                sess.run(train)
            values = sess.run({v.op.name: v for v in model_vars})
            cast = sess.run({n: tf.cast(value, tf.bfloat16) for n, value in values.items()})
            os.makedirs(os.path.join(OUT, name))
            prefix = saver.save(sess, os.path.join(OUT, name, "model.ckpt"))
    stored = sorted(n for n, _ in tf.train.list_variables(prefix))
    weights = sorted({key_of(v) for v in model_vars})
    result[name] = {"prefix": prefix, "stored": stored, "weights": weights, "shadows": shadows,
                    "optimizer": sorted(set(stored) - set(weights) - set(shadows) - {"global_step"}),
                    "values": {n: digest(v) for n, v in values.items()},
                    "bf16": {n: digest(v) for n, v in cast.items()}}
print(json.dumps(result))
"""
)

# jobs: [{"prefix", "dtype": "float32" | "bfloat16"}]; each output is restored both ways.
RESTORE = (
    PRELUDE
    + r"""
jobs = json.loads(%(jobs)r)
result = []
for job in jobs:
    got = {"stored": sorted(n for n, _ in tf.train.list_variables(job["prefix"]))}
    for how in ("saver", "init_from_checkpoint"):
        g = tf.Graph()
        with g.as_default():
            if job["dtype"] == "bfloat16":
                model(tf.bfloat16, tf.bfloat16)
            else:
                model()
            model_vars = v1.global_variables()  # the model's alone: no optimizer in this graph
            if how == "init_from_checkpoint":
                v1.train.init_from_checkpoint(job["prefix"], {"/": "/"})
            with v1.Session() as sess:
                try:  # one failure is reported by its own test, not by all of them
                    if how == "saver":
                        v1.train.Saver(var_list=model_vars).restore(sess, job["prefix"])
                    else:
                        sess.run(v1.global_variables_initializer())
                    got[how] = {v.op.name: digest(value) for v, value in zip(model_vars, sess.run(model_vars))}
                except tf.errors.OpError as exc:
                    got[how] = type(exc).__name__ + ": " + exc.message.splitlines()[0]
    result.append(got)
print(json.dumps(result))
"""
)


def ckptio(*argv) -> subprocess.CompletedProcess:
    """The ckptio CLI as a user runs it (this worktree's package)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "ckptio", *map(str, argv)],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(REPO),
        timeout=300,
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """{config: TF's record of it}: all input checkpoints, made by one TF subprocess."""
    require_tf()
    out = tmp_path_factory.mktemp("tf1_graph")
    return run_tf_json(BUILD % {"out": str(out)}, timeout=900)


@pytest.fixture(scope="module")
def outputs(built, tmp_path_factory):
    """ckptio's strip and cast of every input, and TF's restore of each (one TF subprocess)."""
    out = tmp_path_factory.mktemp("tf1_graph_out")
    runs, jobs = {}, []
    for name, rec in built.items():
        for kind, argv in (("strip", ("strip",)), ("cast", ("rewrite", "--cast", "bfloat16"))):
            dst = out / kind / name / "model.ckpt"
            p = ckptio(*argv[:1], rec["prefix"], dst, *argv[1:], "--json", "-q")
            assert p.returncode == 0, f"ckptio {' '.join(argv)} {name}: {p.stderr}"
            runs[kind, name] = json.loads(p.stdout)
            jobs.append({"prefix": str(dst), "dtype": "bfloat16" if kind == "cast" else "float32"})
    restored = run_tf_json(RESTORE % {"jobs": json.dumps(jobs)}, timeout=900)
    return {key: (report, got) for (key, report), got in zip(runs.items(), restored)}


def test_the_inputs_hold_what_the_workflow_writes(built):
    # Guards the fixture: each optimizer left state, tf_keras ones under their scope (FORMAT-models §4).
    for name, rec in built.items():
        assert rec["optimizer"], name
        assert "part/w" in rec["weights"] and "scale/d64" in rec["weights"]
    assert "Adam/conv1/kernel/vhat" in built["keras_adam_amsgrad"]["optimizer"]
    assert "Adam/part/w/part_1/m" in built["keras_adam_amsgrad"]["optimizer"]
    assert {"RMSprop/dense/kernel/mg", "RMSprop/dense/kernel/momentum", "RMSprop/dense/kernel/rms"} <= set(
        built["keras_rmsprop_centered"]["optimizer"]
    )
    assert {"Ftrl/scale/d64/accumulator", "Ftrl/scale/d64/linear"} <= set(built["keras_ftrl"]["optimizer"])
    assert {
        "Adam_1/dense/bias/m",
        "SGD/dense/bias/momentum",
        "Adadelta/dense/bias/accum_var",
        "Nadam/dense/bias/v",
        "Adamax/dense/bias/m",
    } <= set(built["keras_mix"]["optimizer"])
    assert built["tf1_momentum_ema"]["shadows"]


@pytest.mark.parametrize("name", CONFIGS)
def test_ls_tells_weights_from_optimizer_state(built, name):
    rec = built[name]
    p = ckptio("ls", rec["prefix"], "--json")
    assert p.returncode == 0, p.stderr
    roles = {e["name"]: e["role"] for e in json.loads(p.stdout)["entries"]}
    assert set(roles) == set(rec["stored"])
    want = {n: "weight" for n in rec["weights"]} | {n: "optimizer" for n in rec["optimizer"]}
    want |= {n: "ema" for n in rec["shadows"]} | {"global_step": "step"}
    assert roles == want


@pytest.mark.parametrize("name", CONFIGS)
def test_strip_keeps_exactly_the_model_and_tf1_restores_it_bit_for_bit(built, outputs, name):
    rec = built[name]
    report, got = outputs["strip", name]
    assert sorted(report["dropped"]) == rec["optimizer"]
    # tf.train.list_variables(OUT): the model, the step and the EMA shadows; no optimizer state
    assert got["stored"] == sorted(rec["weights"] + rec["shadows"] + ["global_step"])
    assert got["saver"] == rec["values"]
    assert got["init_from_checkpoint"] == rec["values"]


@pytest.mark.parametrize("name", CONFIGS)
def test_cast_to_bfloat16_includes_float64_and_equals_tf_cast(built, outputs, name):
    rec = built[name]
    report, got = outputs["cast", name]
    assert "scale/d64" in report["cast"]  # float64 is floating (issue 12, item 5)
    left = {e["name"]: e["reason"] for e in report["not_cast"]}
    assert left["global_step"] == "not-floating"
    assert set(report["cast"]) | set(left) == set(rec["stored"])
    assert got["stored"] == rec["stored"]
    assert got["saver"] == rec["bf16"]
    assert got["init_from_checkpoint"] == rec["bf16"]
