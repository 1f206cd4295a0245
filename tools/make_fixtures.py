#!/usr/bin/env python3
"""Write small checkpoints with real TensorFlow, plus a truth file describing them.

    python tools/make_fixtures.py OUTDIR
        Writes one subdirectory per fixture into OUTDIR and then OUTDIR/truth.json:

        {"meta": {"script_sha256": ..., "tensorflow_version": ..., ...},
         "fixtures": {name: {"prefix": <path relative to OUTDIR>,
                             "format": "v1" | "v2",
                             "kind": ...,
                             "files": [paths relative to OUTDIR],
                             "tensors": {key: {"dtype", "shape", "sha256", "num_elements"
                                               [, "via", "get_tensor_error"]}},
                             ... optional extras: "savedmodel_dir", "meta_graph", "notes"}}}

    python tools/make_fixtures.py --describe PREFIX [--no-fallback]
        Prints one JSON line: the "tensors" map above for any checkpoint TF can open.

The tensors of a fixture are what `tf.train.load_checkpoint(prefix)` reports
(`get_variable_to_dtype_map`, `get_variable_to_shape_map`, `get_tensor`). When
`get_tensor` fails (V1 slices, V1 half/uint16/complex), the value comes from an
eager `tf.raw_ops.RestoreV2` with the listed dtype and the record says
`"via": "RestoreV2"`. DT_VARIANT values (tf.data iterator state) cannot become numpy
arrays: their record hashes, with the string rule, the serialized
`VariantTensorDataProto` of each element and says `"via": "RestoreV2+serialize_tensor"`.

Hash rule (same as /work/shared/corpus/MANIFEST.json):
    non-string: sha256(np.ascontiguousarray(value).tobytes())
    string:     sha256(concat over elements in C order of uint64_le(len(e)) + e)
dtype names are numpy / ml_dtypes names ("float32", "bfloat16", "int4", "object" for
strings); quantized types use TF's name ("qint8", ...) and hash the integer array TF
returns; DT_VARIANT is "variant".

Every fixture is required: if one cannot be generated the script fails (exit != 0) and
writes no truth.json. truth.json is written last, atomically. Values come from fixed seeds,
so a re-run reproduces the tensor hashes (the .meta / SavedModel protos may differ).

This file is a test tool: it imports TensorFlow, the `ckptio` package never does.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # plain kernels: reproducible values
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import argparse
import hashlib
import json
import shutil
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

SEED = 1234
HASH_RULE = (
    "non-string: sha256(np.ascontiguousarray(value).tobytes()); string: sha256(concat over "
    "elements in C order of uint64_le(len(e)) + e)"
)

# Fixture names, in generation order. tests/ rely on every one of them.
TF1_OPTIMIZERS = {
    # fixture name: optimizer class (for the notes); built by _tf1_optimizer
    "tf1_gradientdescent": "GradientDescentOptimizer",
    "tf1_momentum": "MomentumOptimizer",
    "tf1_adam": "AdamOptimizer",
    "tf1_rmsprop": "RMSPropOptimizer",
    "tf1_rmsprop_centered": "RMSPropOptimizer(centered=True)",
    "tf1_adagrad": "AdagradOptimizer",
    "tf1_adagradda": "AdagradDAOptimizer",
    "tf1_adadelta": "AdadeltaOptimizer",
    "tf1_ftrl": "FtrlOptimizer",
    "tf1_proximaladagrad": "ProximalAdagradOptimizer",
}

_tf = None


def tf():
    """Import TensorFlow lazily (so `--help` and hashing helpers stay cheap)."""
    global _tf
    if _tf is None:
        import tensorflow

        _tf = tensorflow
    return _tf


# --------------------------------------------------------------------------- hashing


def hash_array(value) -> str:
    """sha256 of a tensor value under the corpus hash rule (see module docstring)."""
    if isinstance(value, (bytes, str)):
        arr = np.array(value, dtype=object)
    else:
        arr = np.asarray(value)
        if arr.dtype.kind in "SU":  # fixed-width numpy strings drop trailing NULs: refuse
            raise TypeError("pass strings as an object array of bytes, not dtype %s" % arr.dtype)
    h = hashlib.sha256()
    if arr.dtype == object:
        for e in arr.flat:  # .flat is C order
            if isinstance(e, str):
                e = e.encode("utf-8")
            if not isinstance(e, (bytes, np.bytes_)):
                raise TypeError("string tensor element is %r, expected bytes" % type(e))
            e = bytes(e)
            h.update(struct.pack("<Q", len(e)))
            h.update(e)
    else:
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def dtype_name(dt) -> str:
    """Name of a tf.DType in the truth file: numpy / ml_dtypes name where possible."""
    t = tf()
    if dt == t.string:
        return "object"
    if dt == t.variant:
        return "variant"
    if dt == t.resource:
        return "resource"
    if dt.is_quantized:
        return dt.name
    return np.dtype(dt.as_numpy_dtype).name


def _expected_numpy_dtype(dt):
    t = tf()
    if dt == t.string:
        return np.dtype(object)
    if dt.is_quantized:
        return {
            "qint8": np.int8,
            "quint8": np.uint8,
            "qint16": np.int16,
            "quint16": np.uint16,
            "qint32": np.int32,
        }[dt.name]
    return np.dtype(dt.as_numpy_dtype)


def _variant_elements(prefix: str, key: str) -> np.ndarray:
    """Serialized VariantTensorDataProto of each element of a DT_VARIANT tensor.

    serialize_tensor gives a TensorProto whose tensor_content is EncodeVariantList:
    varint64 length of each element, then the element protos back to back.
    """
    t = tf()
    from tensorflow.core.framework import tensor_pb2

    value = t.raw_ops.RestoreV2(prefix=prefix, tensor_names=[key], shape_and_slices=[""], dtypes=[t.variant])[0]
    proto = tensor_pb2.TensorProto()
    proto.ParseFromString(t.io.serialize_tensor(value).numpy())
    n = int(np.prod(value.shape, dtype=np.int64))
    if proto.variant_val:
        elems = [v.SerializeToString(deterministic=True) for v in proto.variant_val]
    else:
        buf, pos, lengths = proto.tensor_content, 0, []
        for _ in range(n):
            length, shift = 0, 0
            while True:
                b = buf[pos]
                pos += 1
                length |= (b & 0x7F) << shift
                shift += 7
                if not b & 0x80:
                    break
            lengths.append(length)
        elems = []
        for length in lengths:
            elems.append(bytes(buf[pos : pos + length]))
            pos += length
        if pos != len(buf):
            raise AssertionError("%s: variant tensor_content has %d trailing bytes" % (key, len(buf) - pos))
    if len(elems) != n:
        raise AssertionError("%s: %d variant elements, expected %d" % (key, len(elems), n))
    arr = np.empty(n, dtype=object)
    arr[:] = elems
    return arr.reshape(value.shape)


def describe(prefix: str, *, restore_fallback: bool = True) -> dict:
    """{key: {dtype, shape, sha256, num_elements[, via]}} as TF reads the checkpoint."""
    t = tf()
    reader = t.train.load_checkpoint(prefix)
    dtypes = reader.get_variable_to_dtype_map()
    shapes = reader.get_variable_to_shape_map()
    if set(dtypes) != set(shapes):
        raise AssertionError("dtype and shape maps disagree for %s" % prefix)
    out = {}
    for key in sorted(dtypes):
        dt = dtypes[key]
        shape = [int(d) for d in shapes[key]]
        rec = {"dtype": dtype_name(dt), "shape": shape}
        if dt == t.variant:
            value = _variant_elements(prefix, key)
            rec["via"] = "RestoreV2+serialize_tensor"
        else:
            try:
                value = reader.get_tensor(key)
            except t.errors.OpError as e:
                if not restore_fallback:
                    raise
                value = t.raw_ops.RestoreV2(prefix=prefix, tensor_names=[key], shape_and_slices=[""], dtypes=[dt])[
                    0
                ].numpy()
                rec["via"] = "RestoreV2"
                rec["get_tensor_error"] = "%s: %s" % (type(e).__name__, e.message[:200])
        if dt == t.string or dt == t.variant:
            arr = np.array(value, dtype=object)
        else:
            arr = np.asarray(value)
            want = _expected_numpy_dtype(dt)
            if arr.dtype != want:
                raise AssertionError("%s: TF returned %s for %s" % (key, arr.dtype, dt.name))
        if list(arr.shape) != shape:
            raise AssertionError("%s: value shape %s != listed %s" % (key, arr.shape, shape))
        rec["sha256"] = hash_array(arr)
        rec["num_elements"] = int(arr.size)
        out[key] = rec
    return out


# --------------------------------------------------------------------------- helpers


def _rng(name: str) -> np.random.RandomState:
    """A fresh generator per fixture, so fixtures do not depend on generation order."""
    return np.random.RandomState(SEED + sum(name.encode()))


def _f32(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def _data(rng):
    return _f32(rng, 4, 3), _f32(rng, 4, 2)


def _tf1_dense(rng, scope="model"):
    """Variables model/dense/kernel [3,2], model/dense/bias [2] (TF1 get_variable)."""
    v1 = tf().compat.v1
    with v1.variable_scope(scope):
        with v1.variable_scope("dense"):
            kernel = v1.get_variable("kernel", initializer=_f32(rng, 3, 2))
            bias = v1.get_variable("bias", initializer=_f32(rng, 2))
    return kernel, bias


def _tf1_loss(rng, kernel, bias):
    t = tf()
    x, y = _data(rng)
    return t.reduce_mean(t.square(t.matmul(t.constant(x), kernel) + bias - t.constant(y)))


def _run_and_save(
    graph, train_op, saver, ckpt_dir: Path, *, global_step=None, write_meta_graph=False, config=None
) -> str:
    v1 = tf().compat.v1
    with v1.Session(graph=graph, config=config) as sess:
        sess.run(v1.global_variables_initializer())
        sess.run(v1.local_variables_initializer())
        if train_op is not None:
            sess.run(train_op)
        prefix = saver.save(
            sess, str(ckpt_dir / "model.ckpt"), global_step=global_step, write_meta_graph=write_meta_graph
        )
    # TF1 Saver records the absolute save path in <dir>/checkpoint; rewrite it relative (as
    # TF2 does) so a fixture directory can be copied or moved and still resolve.
    rel = os.path.basename(prefix)
    v1.train.update_checkpoint_state(str(ckpt_dir), rel, [rel])
    return prefix


# --------------------------------------------------------------------------- TF1 fixtures


def _tf1_optimizer(name: str, global_step):
    tr = tf().compat.v1.train
    return {
        "tf1_gradientdescent": lambda: tr.GradientDescentOptimizer(0.1),
        "tf1_momentum": lambda: tr.MomentumOptimizer(0.1, momentum=0.9),
        "tf1_adam": lambda: tr.AdamOptimizer(0.01),
        "tf1_rmsprop": lambda: tr.RMSPropOptimizer(0.01),
        "tf1_rmsprop_centered": lambda: tr.RMSPropOptimizer(0.01, momentum=0.5, centered=True),
        "tf1_adagrad": lambda: tr.AdagradOptimizer(0.1),
        "tf1_adagradda": lambda: tr.AdagradDAOptimizer(0.1, global_step=global_step),
        "tf1_adadelta": lambda: tr.AdadeltaOptimizer(1.0),
        "tf1_ftrl": lambda: tr.FtrlOptimizer(0.1, l2_shrinkage_regularization_strength=0.01),
        "tf1_proximaladagrad": lambda: tr.ProximalAdagradOptimizer(0.1, l1_regularization_strength=0.01),
    }[name]()


def make_tf1_optimizer(name: str, d: Path) -> dict:
    t = tf()
    v1 = t.compat.v1
    rng = _rng(name)
    g = t.Graph()
    with g.as_default():
        v1.set_random_seed(SEED)
        kernel, bias = _tf1_dense(rng)
        gs = v1.train.get_or_create_global_step()
        loss = _tf1_loss(rng, kernel, bias)
        train = _tf1_optimizer(name, gs).minimize(loss, global_step=gs)
        saver = v1.train.Saver()
        # One fixture keeps its .meta so tests can try import_meta_graph + restore.
        meta = name == "tf1_adam"
        prefix = _run_and_save(g, train, saver, d, global_step=gs, write_meta_graph=meta)
    out = {
        "prefix": prefix,
        "format": "v2",
        "kind": "tf1-saver",
        "notes": "tf.compat.v1.train.%s, one step, Saver V2" % TF1_OPTIMIZERS[name],
    }
    if meta:
        out["meta_graph"] = prefix + ".meta"
    return out


def make_tf1_ema(name: str, d: Path) -> dict:
    t = tf()
    v1 = t.compat.v1
    rng = _rng(name)
    g = t.Graph()
    with g.as_default():
        kernel, bias = _tf1_dense(rng)
        gs = v1.train.get_or_create_global_step()
        loss = _tf1_loss(rng, kernel, bias)
        step = v1.train.AdamOptimizer(0.01).minimize(loss, global_step=gs)
        ema = v1.train.ExponentialMovingAverage(0.99, num_updates=gs)
        with t.control_dependencies([step]):
            train = ema.apply([kernel, bias])
        saver = v1.train.Saver()  # global variables include the EMA shadows
        prefix = _run_and_save(g, train, saver, d, global_step=gs)
    return {
        "prefix": prefix,
        "format": "v2",
        "kind": "tf1-saver",
        "notes": "AdamOptimizer + ExponentialMovingAverage shadows (V/ExponentialMovingAverage)",
    }


def make_tf1_two_optimizers(name: str, d: Path) -> dict:
    t = tf()
    v1 = t.compat.v1
    rng = _rng(name)
    g = t.Graph()
    with g.as_default():
        kernel, bias = _tf1_dense(rng)
        with v1.variable_scope("model"):
            with v1.variable_scope("out"):
                out_k = v1.get_variable("kernel", initializer=_f32(rng, 2, 2))
        gs = v1.train.get_or_create_global_step()
        x, y = _data(rng)
        h = t.matmul(t.constant(x), kernel) + bias
        loss = t.reduce_mean(t.square(t.matmul(h, out_k) - t.constant(y)))
        # Adam #1 on the dense layer, Adam #2 on the output kernel *and* the dense kernel,
        # so the dense kernel also gets the uniquified slots kernel/Adam_2, kernel/Adam_3.
        train = t.group(
            v1.train.AdamOptimizer(0.01).minimize(loss, var_list=[kernel, bias], global_step=gs),
            v1.train.AdamOptimizer(0.02).minimize(loss, var_list=[out_k, kernel]),
        )
        saver = v1.train.Saver()
        prefix = _run_and_save(g, train, saver, d, global_step=gs)
    return {
        "prefix": prefix,
        "format": "v2",
        "kind": "tf1-saver",
        "notes": "two AdamOptimizers (default name) -> beta1_power_1, kernel/Adam_2, _3",
    }


def _tf1_partitioned_graph(rng):
    """model/embedding [6,4] in 3 partitions (rows 2+2+2), model/dense/kernel [4,2], Adam."""
    t = tf()
    v1 = t.compat.v1
    full = _f32(rng, 6, 4)

    def part_init(shape, dtype=None, partition_info=None):
        off = partition_info.var_offset[0] if partition_info is not None else 0
        return t.constant(full[off : off + shape[0]])

    with v1.variable_scope("model"):
        emb = v1.get_variable(
            "embedding", shape=[6, 4], dtype=t.float32, initializer=part_init, partitioner=v1.fixed_size_partitioner(3)
        )
        with v1.variable_scope("dense"):
            kernel = v1.get_variable("kernel", initializer=_f32(rng, 4, 2))
    gs = v1.train.get_or_create_global_step()
    ids = t.constant([0, 2, 3, 5, 5])
    h = t.nn.embedding_lookup(emb, ids)  # sparse (IndexedSlices) gradients per partition
    y = _f32(rng, 5, 2)
    loss = t.reduce_mean(t.square(t.matmul(h, kernel) - t.constant(y)))
    train = v1.train.AdamOptimizer(0.01).minimize(loss, global_step=gs)
    return gs, train


def make_tf1_partitioned(name: str, d: Path) -> dict:
    t = tf()
    v1 = t.compat.v1
    rng = _rng("tf1_partitioned")  # same values for the V1 and V2 variants
    v1_format = name.endswith("_v1")
    g = t.Graph()
    with g.as_default():
        gs, train = _tf1_partitioned_graph(rng)
        kw = {"write_version": v1.train.SaverDef.V1} if v1_format else {}
        saver = v1.train.Saver(**kw)
        prefix = _run_and_save(g, train, saver, d, global_step=gs)
    return {
        "prefix": prefix,
        "format": "v1" if v1_format else "v2",
        "kind": "tf1-saver-v1" if v1_format else "tf1-saver",
        "notes": "model/embedding partitioned by fixed_size_partitioner(3) (slices rows 0-1, 2-3, "
        "4-5 of [6,4]), Adam slots partitioned too; model/dense/kernel unpartitioned",
    }


def _tf1_var(t, name, value, dtype=None):
    return t.compat.v1.get_variable(name, initializer=t.constant(value, dtype=dtype))


def make_tf1_v1_plain(name: str, d: Path) -> dict:
    t = tf()
    v1 = t.compat.v1
    rng = _rng(name)
    g = t.Graph()
    with g.as_default():
        with v1.variable_scope("plain"):
            _tf1_var(t, "f32", _f32(rng, 2, 3))
            _tf1_var(t, "f32_scalar", np.float32(rng.standard_normal()))
            _tf1_var(t, "f64", rng.standard_normal(3))
            _tf1_var(t, "i32", rng.randint(-1000, 1000, (2, 2)).astype(np.int32))
            _tf1_var(t, "i64", np.array([-(2**40), -1, 0, 2**62], np.int64))
            _tf1_var(t, "i64_scalar", np.int64(-7))
            _tf1_var(t, "bool", np.array([True, False, True]))
            _tf1_var(
                t, "str", np.array([b"hello", b"", "h\xe9llo".encode(), b"\x00\xff"], dtype=object), dtype=t.string
            )
            _tf1_var(t, "str_scalar", b"scalar", dtype=t.string)
        saver = v1.train.Saver(write_version=v1.train.SaverDef.V1)
        prefix = _run_and_save(g, None, saver, d)
    return {
        "prefix": prefix,
        "format": "v1",
        "kind": "tf1-saver-v1",
        "notes": "V1 Saver: float32/float64/int32/int64/bool/string, scalars and arrays",
    }


def make_tf1_v1_dtypes(name: str, d: Path) -> dict:
    """V1 with the dtypes whose TensorProto fields are not in tf1_v1_plain."""
    t = tf()
    v1 = t.compat.v1
    rng = _rng(name)
    g = t.Graph()
    with g.as_default():
        with v1.variable_scope("dt"):
            _tf1_var(t, "f16", _f32(rng, 2, 2).astype(np.float16))
            _tf1_var(t, "i8", np.array([-128, -3, 0, 127], np.int8))
            _tf1_var(t, "i16", np.array([-32768, -3, 0, 32767], np.int16))
            _tf1_var(t, "u8", np.array([0, 1, 200, 255], np.uint8))
            _tf1_var(t, "u16", np.array([0, 1, 40000, 65535], np.uint16))
            _tf1_var(t, "c64", (rng.standard_normal(3) + 1j * rng.standard_normal(3)).astype(np.complex64))
            _tf1_var(t, "c128", rng.standard_normal(2) + 1j * rng.standard_normal(2))
        saver = v1.train.Saver(write_version=v1.train.SaverDef.V1)
        prefix = _run_and_save(g, None, saver, d)
    return {
        "prefix": prefix,
        "format": "v1",
        "kind": "tf1-saver-v1",
        "notes": "V1 Saver: float16/int8/int16/uint8/uint16/complex64/complex128 "
        "(load_checkpoint.get_tensor cannot read half/uint16/complex -> via RestoreV2). "
        "V1 Saver cannot write bfloat16/uint32/uint64.",
    }


def _tf1_two_device_graph(rng, t):
    v1 = t.compat.v1
    with t.device("/cpu:0"):
        with v1.variable_scope("tower0"):
            _tf1_var(t, "w", _f32(rng, 3, 2))
            _tf1_var(t, "b", _f32(rng, 2))
    with v1.variable_scope("shared"):  # no device -> its own shard
        _tf1_var(t, "emb", _f32(rng, 4, 2))
        _tf1_var(t, "count", np.int64(5))
    return v1.train.get_or_create_global_step()


def make_tf1_v1_sharded(name: str, d: Path) -> dict:
    t = tf()
    v1 = t.compat.v1
    rng = _rng(name)
    g = t.Graph()
    with g.as_default():
        _tf1_two_device_graph(rng, t)
        saver = v1.train.Saver(sharded=True, write_version=v1.train.SaverDef.V1)
        prefix = _run_and_save(g, None, saver, d)
    if "?????" not in prefix:
        raise AssertionError("V1 sharded save returned %r, expected a -?????-of-N pattern" % prefix)
    return {
        "prefix": prefix,
        "format": "v1",
        "kind": "tf1-saver-v1",
        "notes": "V1 Saver(sharded=True), vars on /cpu:0 and on no device; prefix is the glob "
        "pattern Saver.save returned (P-?????-of-0000N)",
    }


def make_tf1_sharded_v2(name: str, d: Path) -> dict:
    t = tf()
    v1 = t.compat.v1
    rng = _rng(name)
    g = t.Graph()
    with g.as_default():
        _tf1_two_device_graph(rng, t)
        saver = v1.train.Saver(sharded=True)
        prefix = _run_and_save(g, None, saver, d)
    return {
        "prefix": prefix,
        "format": "v2",
        "kind": "tf1-saver",
        "notes": "V2 Saver(sharded=True), vars on /cpu:0 and on no device -> 2 data shards",
    }


# --------------------------------------------------------------------------- TF2 fixtures


def make_tf2_keras3_adam(name: str, d: Path) -> dict:
    t = tf()
    import keras

    rng = _rng(name)
    keras.utils.set_random_seed(SEED)
    m = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(4, activation="relu", name="d1"), keras.layers.Dense(2, name="d2")],
        name="mlp",
    )
    opt = keras.optimizers.Adam(0.01)
    x, y = _data(rng)
    with t.GradientTape() as tape:
        loss = t.reduce_mean(t.square(m(x) - y))
    grads = tape.gradient(loss, m.trainable_variables)
    opt.apply_gradients(zip(grads, m.trainable_variables))
    prefix = t.train.Checkpoint(model=m, optimizer=opt).save(str(d / "ckpt"))
    return {
        "prefix": prefix,
        "format": "v2",
        "kind": "tf2-keras3",
        "notes": "keras %s Sequential(d1, d2) + keras.optimizers.Adam, one step, "
        "tf.train.Checkpoint(model=, optimizer=).save" % keras.__version__,
    }


def _tf_keras_model(tf_keras):
    return tf_keras.Sequential(
        [tf_keras.layers.Dense(4, activation="relu", input_shape=(3,), name="d1"), tf_keras.layers.Dense(2, name="d2")],
        name="mlp",
    )


def _tf_keras_step(t, m, opt, rng):
    x, y = _data(rng)
    with t.GradientTape() as tape:
        loss = t.reduce_mean(t.square(m(x) - y))
    grads = tape.gradient(loss, m.trainable_variables)
    opt.apply_gradients(zip(grads, m.trainable_variables))


def make_tf2_legacy_adam(name: str, d: Path) -> dict:
    t = tf()
    import tf_keras

    rng = _rng(name)
    tf_keras.utils.set_random_seed(SEED)
    m = _tf_keras_model(tf_keras)
    opt = tf_keras.optimizers.legacy.Adam(0.01)
    _tf_keras_step(t, m, opt, rng)
    prefix = t.train.Checkpoint(model=m, optimizer=opt).save(str(d / "ckpt"))
    return {
        "prefix": prefix,
        "format": "v2",
        "kind": "tf2-tf_keras-legacy",
        "notes": "tf_keras %s Sequential + tf_keras.optimizers.legacy.Adam (OptimizerV2): slots "
        "are slot_variables (.OPTIMIZER_SLOT/optimizer/m, v)" % tf_keras.__version__,
    }


def make_tf2_tfkeras_adam(name: str, d: Path) -> dict:
    t = tf()
    import tf_keras

    rng = _rng(name)
    tf_keras.utils.set_random_seed(SEED)
    m = _tf_keras_model(tf_keras)
    opt = tf_keras.optimizers.Adam(0.01)
    _tf_keras_step(t, m, opt, rng)
    prefix = t.train.Checkpoint(model=m, optimizer=opt).save(str(d / "ckpt"))
    return {
        "prefix": prefix,
        "format": "v2",
        "kind": "tf2-tf_keras-new",
        "notes": "tf_keras Sequential + tf_keras.optimizers.Adam (new optimizer): no "
        "slot_variables, slots under optimizer/_variables/N (N from 1)",
    }


def make_tf2_module_tree(name: str, d: Path) -> dict:
    t = tf()
    rng = _rng(name)

    class Dense(t.Module):
        def __init__(self, i, o, name):
            super().__init__(name=name)
            self.w = t.Variable(_f32(rng, i, o), name="w")
            self.b = t.Variable(_f32(rng, o), name="b")

    root = t.Module(name="root")
    root.encoder = t.Module(name="encoder")
    root.encoder.embedding = t.Variable(_f32(rng, 5, 3), name="embedding")
    root.encoder.layers = [Dense(3, 4, "l0"), Dense(4, 4, "l1")]
    root.encoder.step = t.Variable(np.int64(3), trainable=False, name="step")
    root.decoder = Dense(4, 3, "decoder")
    # dict key with '.' and '/' -> escaped path element "a..b.Sc"
    root.decoder.extras = {"a.b/c": t.Variable(np.array([1.5, -2.5], np.float64), name="extra")}
    # the same variable reachable twice: the key uses the first BFS path (encoder/embedding)
    root.decoder.tied = root.encoder.embedding
    prefix = t.train.Checkpoint(root=root).save(str(d / "ckpt"))
    return {
        "prefix": prefix,
        "format": "v2",
        "kind": "tf2-module",
        "notes": "tf.Module tree: root/encoder/{embedding, layers/0..1/{w,b}, step}, "
        "root/decoder/{w, b, extras/'a.b/c', tied -> encoder.embedding}",
    }


def make_tf2_max_shard(name: str, d: Path) -> dict:
    t = tf()
    rng = _rng(name)
    ckpt = t.train.Checkpoint(
        big=t.Variable(_f32(rng, 40, 10), name="big"),
        mid=t.Variable(rng.standard_normal((12, 5)), name="mid"),
        small=t.Variable(_f32(rng, 3), name="small"),
        step=t.Variable(np.int64(9), name="step"),
    )
    options = t.train.CheckpointOptions(
        experimental_sharding_callback=t.train.experimental.MaxShardSizePolicy(max_shard_size=600)
    )
    prefix = ckpt.save(str(d / "ckpt"), options=options)
    return {
        "prefix": prefix,
        "format": "v2",
        "kind": "tf2-object-sharded",
        "notes": "tf.train.Checkpoint with MaxShardSizePolicy(600 bytes): big [40,10] f32 and "
        "mid [12,5] f64 are split into slice entries over several shards",
    }


def make_tf2_misc_state(name: str, d: Path) -> dict:
    t = tf()
    rng = _rng(name)
    ds = t.data.Dataset.range(10).batch(3)
    it = iter(ds)
    next(it)
    table = t.lookup.experimental.MutableHashTable(t.string, t.int64, default_value=-1)
    table.insert(t.constant([b"a", b"b", b"c"]), t.constant([1, 2, 3], t.int64))
    ckpt = t.train.Checkpoint(iterator=it, table=table, w=t.Variable(_f32(rng, 2)))
    prefix = ckpt.save(str(d / "ckpt"))
    return {
        "prefix": prefix,
        "format": "v2",
        "kind": "tf2-object",
        "notes": "tf.data iterator (ITERATOR_STATE, DT_VARIANT) + MutableHashTable "
        "(table-keys/table-values) + a variable",
    }


def make_savedmodel(name: str, d: Path) -> dict:
    t = tf()
    rng = _rng(name)

    class Affine(t.Module):
        def __init__(self):
            super().__init__(name="affine")
            self.w = t.Variable(_f32(rng, 3, 2), name="w")
            self.b = t.Variable(_f32(rng, 2), name="b")
            self.calls = t.Variable(np.int64(0), trainable=False, name="calls")

        @t.function(input_signature=[t.TensorSpec([None, 3], t.float32)])
        def __call__(self, x):
            return t.matmul(x, self.w) + self.b

    sm_dir = d / "model"
    t.saved_model.save(Affine(), str(sm_dir))
    return {
        "prefix": str(sm_dir / "variables" / "variables"),
        "savedmodel_dir": str(sm_dir),
        "format": "v2",
        "kind": "savedmodel-tf2",
        "notes": "tf.saved_model.save of a tf.Module with w, b, calls and a serving function",
    }


def _all_dtype_tensors(rng) -> list:
    """(name, np value, tf dtype name) for tf2_all_dtypes; SaveV2 can write all of them."""
    import ml_dtypes

    def ints(dt, lo, hi, shape):
        return rng.randint(lo, hi, shape).astype(dt)

    f = rng.standard_normal
    out = [
        ("float16", f((2, 3)).astype(np.float16)),
        ("float32", np.concatenate([_f32(rng, 4), np.array([np.inf, -np.inf, -0.0, np.nan], np.float32)])),
        ("float64", f((3, 2))),
        ("bfloat16", f((2, 3)).astype(ml_dtypes.bfloat16)),
        ("float8_e5m2", f((2, 3)).astype(ml_dtypes.float8_e5m2)),
        ("float8_e4m3fn", f((2, 3)).astype(ml_dtypes.float8_e4m3fn)),
        ("float8_e4m3fnuz", f((2, 3)).astype(ml_dtypes.float8_e4m3fnuz)),
        ("float8_e4m3b11fnuz", f((2, 3)).astype(ml_dtypes.float8_e4m3b11fnuz)),
        ("float8_e5m2fnuz", f((2, 3)).astype(ml_dtypes.float8_e5m2fnuz)),
        ("int4", np.array([-8, -2, -1, 0, 1, 7], dtype=ml_dtypes.int4).reshape(2, 3)),
        ("uint4", np.array([0, 1, 2, 9, 14, 15], dtype=ml_dtypes.uint4).reshape(2, 3)),
        ("int8", np.array([-128, -3, 0, 5, 127], np.int8)),
        ("int16", np.array([-32768, -3, 0, 300, 32767], np.int16)),
        ("int32", ints(np.int32, -(2**31), 2**31 - 1, (2, 2))),
        ("int64", np.array([-(2**63), -1, 0, 2**40, 2**63 - 1], np.int64)),
        ("uint8", np.array([0, 1, 128, 255], np.uint8)),
        ("uint16", np.array([0, 1, 40000, 65535], np.uint16)),
        ("uint32", np.array([0, 1, 2**31, 2**32 - 1], np.uint32)),
        ("uint64", np.array([0, 1, 2**63, 2**64 - 1], np.uint64)),
        ("bool", np.array([[True, False], [False, True]])),
        ("complex64", (f(3) + 1j * f(3)).astype(np.complex64)),
        ("complex128", f((2, 2)) + 1j * f((2, 2))),
    ]
    strings = np.empty(7, dtype=object)
    strings[:] = [
        b"hello",
        b"",
        "h\xe9llo w\xf6rld \u2603".encode("utf-8"),
        b"\x00\xff\xfe\x00",
        b"x" * 200,
        b"",
        b"end",
    ]  # 200 bytes -> 2-byte varint length
    out.append(("string", strings))
    s23 = np.empty((2, 3), dtype=object)
    s23[:] = [[b"a", b"", b"ccc"], [b"\xe2\x98\x83", b"eeeee", b""]]
    out.append(("string_2x3", s23))
    # a scalar of each kind
    scalars = []
    for n, v in out:
        if n.startswith("string"):
            scalars.append(("scalar/string", np.array(b"scalar \xff", dtype=object)))
            break
        scalars.append(("scalar/" + n, np.asarray(v).reshape(-1)[1] if n != "float32" else np.float32(3.25)))
    scalars.append(("scalar/string_empty", np.array(b"", dtype=object)))
    out += [(n, np.asarray(v, dtype=object) if "string" in n else np.asarray(v)) for n, v in scalars]
    # empty tensors
    out += [
        ("empty/float32_0", np.zeros((0,), np.float32)),
        ("empty/float32_3x0", np.zeros((3, 0), np.float32)),
        ("empty/int64_0", np.zeros((0,), np.int64)),
        ("empty/bfloat16_3x0", np.zeros((3, 0), ml_dtypes.bfloat16)),
        ("empty/int4_0", np.zeros((0,), ml_dtypes.int4)),
        ("empty/string_0", np.zeros((0,), object)),
        ("empty/string_3x0", np.zeros((3, 0), object)),
    ]
    return out


def _save_v2(prefix: str, named: list) -> None:
    t = tf()
    tensors = []
    for _n, v in named:
        if isinstance(v, np.ndarray) and v.dtype == object:
            tensors.append(t.constant(v, dtype=t.string))
        elif isinstance(v, tuple):  # (values, tf dtype name) for quantized types
            tensors.append(t.constant(v[0], dtype=getattr(t, v[1])))
        else:
            tensors.append(t.constant(v))
    t.raw_ops.SaveV2(
        prefix=prefix, tensor_names=[n for n, _ in named], shape_and_slices=[""] * len(named), tensors=tensors
    )


def make_tf2_all_dtypes(name: str, d: Path) -> dict:
    rng = _rng(name)
    prefix = str(d / "all_dtypes")
    named = _all_dtype_tensors(rng)
    _save_v2(prefix, named)
    return {
        "prefix": prefix,
        "format": "v2",
        "kind": "savev2-raw",
        "notes": "tf.raw_ops.SaveV2 (eager) of every numpy/ml_dtypes-representable dtype, a scalar "
        "of each, empty tensors, strings with empty/non-ASCII/NUL/200-byte elements. "
        "No object graph. float8 *fnuz types: SaveV2 writes them, tf.Variable cannot "
        "hold them (no AssignVariableOp kernel).",
    }


def make_tf2_exotic_dtypes(name: str, d: Path) -> dict:
    import ml_dtypes

    prefix = str(d / "exotic_dtypes")
    named = [
        ("int2", np.array([-2, -1, 0, 1], dtype=ml_dtypes.int2)),
        ("uint2", np.array([0, 1, 2, 3], dtype=ml_dtypes.uint2)),
        ("float4_e2m1fn", np.array([-6, -1.5, 0, 0.5, 3, 6], dtype=ml_dtypes.float4_e2m1fn)),
        ("qint8", (np.array([-128, -1, 0, 127], np.int8), "qint8")),
        ("quint8", (np.array([0, 1, 255], np.uint8), "quint8")),
        ("qint16", (np.array([-300, 0, 300], np.int16), "qint16")),
        ("quint16", (np.array([0, 60000], np.uint16), "quint16")),
        ("qint32", (np.array([-(2**31), 0, 7], np.int32), "qint32")),
    ]
    _save_v2(prefix, named)
    return {
        "prefix": prefix,
        "format": "v2",
        "kind": "savev2-raw",
        "notes": "SaveV2 of int2/uint2/float4_e2m1fn (1 byte per element, value in the low bits) "
        "and the quantized types (dtype named qint8..., hash of the int array TF returns)",
    }


FIXTURES: dict[str, Callable[[str, Path], dict]] = {
    **{n: make_tf1_optimizer for n in TF1_OPTIMIZERS},
    "tf1_ema": make_tf1_ema,
    "tf1_two_optimizers": make_tf1_two_optimizers,
    "tf1_partitioned_v2": make_tf1_partitioned,
    "tf1_partitioned_v1": make_tf1_partitioned,
    "tf1_v1_plain": make_tf1_v1_plain,
    "tf1_v1_dtypes": make_tf1_v1_dtypes,
    "tf1_v1_sharded": make_tf1_v1_sharded,
    "tf1_sharded_v2": make_tf1_sharded_v2,
    "tf2_keras3_adam": make_tf2_keras3_adam,
    "tf2_legacy_adam": make_tf2_legacy_adam,
    "tf2_tfkeras_adam": make_tf2_tfkeras_adam,
    "tf2_module_tree": make_tf2_module_tree,
    "tf2_max_shard": make_tf2_max_shard,
    "tf2_misc_state": make_tf2_misc_state,
    "savedmodel": make_savedmodel,
    "tf2_all_dtypes": make_tf2_all_dtypes,
    "tf2_exotic_dtypes": make_tf2_exotic_dtypes,
}


# --------------------------------------------------------------------------- driver


def script_sha256() -> str:
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()


def _versions() -> dict:
    import importlib.metadata as md

    out = {"python": sys.version.split()[0], "numpy": np.__version__}
    for dist in ("tensorflow", "keras", "tf-keras", "ml-dtypes", "protobuf"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = None
    return out


def _rel(path: str, root: Path) -> str:
    return Path(os.path.relpath(path, root)).as_posix()


def generate(outdir: Path) -> dict:
    t0 = time.monotonic()
    outdir = outdir.resolve()
    outdir.mkdir(parents=True, exist_ok=True)
    truth_path = outdir / "truth.json"
    truth_path.unlink(missing_ok=True)  # no truth unless every fixture succeeds
    t = tf()
    t.random.set_seed(SEED)
    np.random.seed(SEED)
    fixtures = {}
    for name, make in FIXTURES.items():
        d = outdir / name
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()
        try:
            info = make(name, d)
            tensors = describe(info["prefix"])
        except Exception as e:
            raise RuntimeError("fixture %s failed: %s: %s" % (name, type(e).__name__, e)) from e
        if not tensors:
            raise RuntimeError("fixture %s has no tensors" % name)
        rec = {"prefix": _rel(info.pop("prefix"), outdir), "format": info.pop("format"), "kind": info.pop("kind")}
        for k in ("savedmodel_dir", "meta_graph"):
            if k in info:
                rec[k] = _rel(info.pop(k), outdir)
        rec["files"] = sorted(_rel(str(p), outdir) for p in d.rglob("*") if p.is_file())
        rec.update(info)
        rec["tensors"] = tensors
        fixtures[name] = rec
    meta = {
        "generator": "tools/make_fixtures.py",
        "script_sha256": script_sha256(),
        "tensorflow_version": t.__version__,
        "versions": _versions(),
        "seed": SEED,
        "hash_rule": HASH_RULE,
        "generation_seconds": round(time.monotonic() - t0, 2),
    }
    truth = {"meta": meta, "fixtures": fixtures}
    tmp = truth_path.with_name("truth.json.tmp")
    tmp.write_text(json.dumps(truth, indent=1, sort_keys=False) + "\n")
    os.replace(tmp, truth_path)
    return truth


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("outdir", nargs="?", type=Path, help="directory to write fixtures into")
    p.add_argument(
        "--describe", metavar="PREFIX", help="print the tensors TF reads from PREFIX as one JSON line and exit"
    )
    p.add_argument(
        "--no-fallback", action="store_true", help="with --describe: fail instead of falling back to RestoreV2"
    )
    args = p.parse_args(argv)
    if args.describe:
        print(json.dumps(describe(args.describe, restore_fallback=not args.no_fallback), sort_keys=True))
        return 0
    if args.outdir is None:
        p.error("OUTDIR is required")
    truth = generate(args.outdir)
    n = sum(len(f["tensors"]) for f in truth["fixtures"].values())
    print(
        "wrote %d fixtures (%d tensors) to %s in %.1fs"
        % (len(truth["fixtures"]), n, args.outdir, truth["meta"]["generation_seconds"]),
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
