"""TF 2.16+ sharded saves (`experimental_sharding_callback=MaxShardSizePolicy`), read, verified and stripped.

One TF subprocess trains a Keras 3 model and a tf_keras model (legacy Adam) a step each and saves
`tf.train.Checkpoint(model=..., optimizer=..., extra=...)` with a small maximum shard size, so that the
checkpoint has many data files and one tensor's slices spread over several of them (FORMAT-models.md §8).
ckptio reads every tensor (compared with TF's `load_checkpoint`), verifies, and strips it; a second TF
subprocess restores each strip into a fresh model with `tf.train.Checkpoint(...).restore(OUT).assert_consumed()`
and compares the weights with the trained ones.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from tf_support import REPO, require_tf, run_tf_json

import ckptio
from ckptio.bundle import naming

MAX_SHARD = 1000  # bytes: the 16x32 float32 kernel (2 KiB) must be cut into slices

PRELUDE = r"""
import hashlib, json, os, sys
import numpy as np
import tensorflow as tf
import keras
import tf_keras

def digest(value):
    value = np.ascontiguousarray(value)
    return value.dtype.name + ":" + hashlib.sha256(value.tobytes()).hexdigest()

def make(kind):
    lib = keras if kind == "keras3" else tf_keras
    return lib.Sequential([lib.Input((16,)), lib.layers.Dense(32, name="d1"), lib.layers.Dense(10, name="d2")])

def extra():
    return tf.Variable(np.zeros((3, 200), np.float32), name="extra")
"""

BUILD = (
    PRELUDE
    + r"""
OUT = %(out)r
rng = np.random.RandomState(0)
x, y = rng.rand(8, 16).astype("float32"), rng.rand(8, 10).astype("float32")
options = tf.train.CheckpointOptions(
    experimental_sharding_callback=tf.train.experimental.MaxShardSizePolicy(max_shard_size=%(max_shard)d))
result = {}
for kind in ("keras3", "tf_keras"):
    m = make(kind)
    opt = keras.optimizers.Adam(0.01) if kind == "keras3" else tf_keras.optimizers.legacy.Adam(0.01)
    m.compile(optimizer=opt, loss="mse")
    m.fit(x, y, epochs=2, batch_size=4, verbose=0)
    e = extra()
    e.assign(rng.rand(3, 200).astype("float32"))
    prefix = tf.train.Checkpoint(model=m, optimizer=opt, extra=e).save(os.path.join(OUT, kind, "ckpt"),
                                                                       options=options)
    reader = tf.train.load_checkpoint(prefix)
    result[kind] = {"prefix": prefix,
                    "values": {k: digest(reader.get_tensor(k)) for k in reader.get_variable_to_shape_map()
                               if k != "_CHECKPOINTABLE_OBJECT_GRAPH"},
                    "weights": [digest(w.numpy()) for w in m.weights], "extra": digest(e.numpy())}
print(json.dumps(result))
"""
)

RESTORE = (
    PRELUDE
    + r"""
result = {}
for kind, prefix in json.loads(%(jobs)r).items():
    m, e = make(kind), extra()
    status = tf.train.Checkpoint(model=m, extra=e).restore(prefix)
    try:
        status.assert_consumed()
        consumed = "ok"
    except AssertionError as exc:
        consumed = str(exc).splitlines()[0][:300]
    result[kind] = {"consumed": consumed, "weights": [digest(w.numpy()) for w in m.weights],
                    "extra": digest(e.numpy())}
print(json.dumps(result))
"""
)


def digest(value) -> str:
    value = np.ascontiguousarray(value)
    return value.dtype.name + ":" + hashlib.sha256(value.tobytes()).hexdigest()


def ckptio_cli(*argv) -> subprocess.CompletedProcess:
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
    require_tf()
    out = tmp_path_factory.mktemp("tf2_sharded")
    return run_tf_json(BUILD % {"out": str(out), "max_shard": MAX_SHARD}, timeout=900)


@pytest.fixture(scope="module")
def stripped(built, tmp_path_factory):
    """{kind: (strip report, TF's restore of the strip)}, restored in one TF subprocess."""
    out = tmp_path_factory.mktemp("tf2_sharded_out")
    reports, jobs = {}, {}
    for kind, rec in built.items():
        dst = out / kind / "ckpt"
        p = ckptio_cli("strip", rec["prefix"], dst, "--json", "-q")
        assert p.returncode == 0, p.stderr
        reports[kind] = json.loads(p.stdout)
        jobs[kind] = str(dst)
    restored = run_tf_json(RESTORE % {"jobs": json.dumps(jobs)}, timeout=900)
    return {kind: (reports[kind], restored[kind]) for kind in built}


@pytest.mark.parametrize("kind", ["keras3", "tf_keras"])
def test_tensors_sliced_across_shards_read_as_tf_reads_them(built, kind):
    rec = built[kind]
    with ckptio.open(rec["prefix"]) as ckpt:
        assert ckpt.num_shards >= 4
        # the 16x32 kernel: one tensor whose slices lie in different data files (FORMAT-models §8)
        spread = [
            n
            for n, e in ckpt.entries().items()
            if e.slices and len({ckpt._reader.slice_entry(n, s).shard_id for s in e.slices}) > 1
        ]
        assert spread
        got = {n: digest(ckpt[n].read()) for n in ckpt if n != naming.OBJECT_GRAPH_KEY}
    assert got == rec["values"]
    p = ckptio_cli("verify", rec["prefix"])
    assert p.returncode == 0, p.stdout + p.stderr


@pytest.mark.parametrize("kind", ["keras3", "tf_keras"])
def test_strip_of_a_sharded_save_restores_in_tf(built, stripped, kind):
    rec = built[kind]
    report, restored = stripped[kind]
    assert report["dropped"], "the optimizer state was not dropped"
    p = ckptio_cli("verify", report["dst"])
    assert p.returncode == 0, p.stdout + p.stderr
    assert restored["consumed"] == "ok"
    assert restored["weights"] == rec["weights"]
    assert restored["extra"] == rec["extra"]
    with ckptio.open(report["dst"]) as out:
        kept = {n: digest(out[n].read()) for n in out if n != naming.OBJECT_GRAPH_KEY}
    # every kept tensor holds TF's original bytes (the sliced ones reassembled)
    assert all(rec["values"][s["src"]] == kept[s["dst"]] for s in report["kept"])
