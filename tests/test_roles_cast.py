"""Issue 12 items 2, 5 and the dtype table: tf_keras graph-mode slots, --cast over float64 and its report,
and every DataType TF knows."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest
from support import same

import ckptio
from ckptio.bundle import dtypes
from ckptio.bundle.decode import cast
from ckptio.bundle.entry import Entry
from ckptio.bundle.slices import Slice
from ckptio.errors import PlanError, UnsupportedError
from ckptio.transform import AMBIGUOUS, OPTIMIZER, SLOT, WEIGHT, Cast, Context, Item, Select, StripOptimizer, classify

try:
    from test_rewrite import write_bundle
except ImportError:  # tests/ imported as a package
    from .test_rewrite import write_bundle
from tf_support import require_tf, run_tf_json

F32, F64, I64 = (dtypes.BY_NAME[n].enum for n in ("float32", "float64", "int64"))


def e(shape, dtype=F32, slices=()):
    return Entry(dtype, tuple(shape), slices=tuple(slices))


def parts(n, rows, cols):
    """The slices fixed_size_partitioner(n) gives a [rows, cols] variable (rows divisible by n)."""
    step = rows // n
    return [Slice(((i * step, step), (0, None))) for i in range(n)]


def model_entries():
    """A tf_keras get_updates checkpoint as TF 2.21 writes it (names and shapes from a real one)."""
    out = {
        "conv1/kernel": e([3, 3, 3, 4]),
        "conv1/bias": e([4]),
        "dense/kernel": e([5, 2]),
        "part/w": e([144, 5], slices=parts(3, 144, 5)),
        "d64": e([3], F64),
        "global_step": e([], I64),
    }
    slots = {}
    for var in ("conv1/kernel", "conv1/bias", "dense/kernel", "d64"):
        for s in ("m", "v", "vhat"):
            slots[f"Adam/{var}/{s}"] = e(out[var].shape, out[var].dtype)
        for s in ("rms", "momentum", "mg"):
            slots[f"RMSprop_1/{var}/{s}"] = e(out[var].shape, out[var].dtype)
    for k in range(3):
        slots[f"Adam/part/w/part_{k}/m"] = e([48, 5])
    hypers = {
        "Adam/iter": e([], I64),
        "Adam/beta_1": e([]),
        "Adam/decay": e([]),
        "Adam/learning_rate": e([]),
        "RMSprop_1/iter": e([], I64),
        "RMSprop_1/rho": e([]),
        "RMSprop_1/momentum": e([]),
    }
    return out, slots, hypers


def test_tf_keras_graph_slots_belong_to_their_variables():
    weights, slots, hypers = model_entries()
    got = classify({**weights, **slots, **hypers})
    for name in weights:
        assert got[name][0] in (WEIGHT, "step"), name
    for name in slots:
        var = name.split("/", 1)[1].rsplit("/", 1)[0]
        assert got[name] == (SLOT, "part/w" if var.startswith("part/w/") else var), name
    for name in hypers:
        assert got[name] == (OPTIMIZER, None), name


def test_a_model_scope_named_like_an_optimizer_stays_weights():
    # Adam/kernel is a model weight; Adam/dense/kernel/m is no slot when dense/kernel differs in shape or
    # dtype and no tf_keras optimizer counter (Adam/iter) marks the scope as an optimizer's.
    names = {
        "Adam/kernel": e([4, 4]),
        "Adam/dense/kernel": e([4, 2]),
        "dense/kernel": e([5, 2]),
        "Adam/dense/kernel/m": e([4, 2]),
        "Adam/x/v": e([3], F64),
        "x": e([3]),
    }
    assert {n: r for n, (r, _) in classify(names).items()} == dict.fromkeys(names, WEIGHT)
    items = [Item(n, n, names[n].dtype) for n in sorted(names)]
    assert [i.src for i in StripOptimizer().apply(items, Context(names))] == sorted(names)


@pytest.mark.parametrize("case", ["missing variable", "other shape", "other dtype", "part of another shape"])
def test_a_slot_without_its_variable_in_an_optimizer_scope_is_refused(case):
    names = {"Adam/iter": e([], I64), "dense/kernel": e([5, 2]), "part/w": e([144, 5], slices=parts(3, 144, 5))}
    slot = {
        "missing variable": ("Adam/gone/kernel/m", e([5, 2])),
        "other shape": ("Adam/dense/kernel/m", e([2, 5])),
        "other dtype": ("Adam/dense/kernel/v", e([5, 2], F64)),
        "part of another shape": ("Adam/part/w/part_1/m", e([47, 5])),
    }[case]
    names[slot[0]] = slot[1]
    assert classify(names)[slot[0]] == (AMBIGUOUS, None)
    items = [Item(n, n, names[n].dtype) for n in names]
    with pytest.raises(PlanError, match="tf_keras optimizer slot") as info:
        StripOptimizer().apply(items, Context(names))
    assert slot[0] in str(info.value)


def test_custom_optimizer_name_and_outer_scope():
    names = {
        "dense/kernel": e([5, 2]),
        "MyOpt/dense/kernel/m": e([5, 2]),
        "MyOpt/iter": e([], I64),
        "MyOpt/beta_1": e([]),
        "tower/Adam/dense/kernel/v": e([5, 2]),
    }
    got = classify(names, optimizer_names=("MyOpt",))
    assert got["MyOpt/dense/kernel/m"] == (SLOT, "dense/kernel")
    assert got["MyOpt/iter"] == got["MyOpt/beta_1"] == (OPTIMIZER, None)
    assert got["tower/Adam/dense/kernel/v"] == (SLOT, "dense/kernel")
    assert classify(names)["MyOpt/dense/kernel/m"] == (WEIGHT, None)  # unknown name, no counter known


def test_a_filter_before_strip_does_not_turn_slots_into_weights():
    weights, slots, hypers = model_entries()
    entries = {**weights, **slots, **hypers}
    items = [Item(n, n, entries[n].dtype) for n in sorted(entries)]
    ctx = Context(entries)
    kept = StripOptimizer().apply(Select(exclude=("^dense/",)).apply(items, ctx), ctx)
    assert sorted(i.src for i in kept) == sorted(n for n in weights if n != "dense/kernel")


def written(tmp_path) -> tuple[str, dict]:
    """model_entries() written as a V2 checkpoint with random values; returns (prefix, values)."""
    weights, slots, hypers = model_entries()
    rng = np.random.default_rng(0)
    values, sliced = {}, {}
    for name, entry in {**weights, **slots, **hypers}.items():
        value = rng.standard_normal(entry.shape).astype(dtypes.lookup(entry.dtype).numpy())
        if entry.slices:
            sliced[name] = (value, entry.slices)
        else:
            values[name] = value
    values["words"] = np.array([b"a", b"bc"], dtype=object)
    return write_bundle(tmp_path / "in" / "m", values, sliced=sliced), {
        **values,
        **{n: v for n, (v, _) in sliced.items()},
    }


def test_ls_and_strip_of_a_tf_keras_graph_checkpoint(tmp_path, capsys):
    from ckptio.cli.main import main

    prefix, values = written(tmp_path)
    weights, slots, hypers = model_entries()
    assert main(["ls", prefix, "--json"]) == 0
    roles = {x["name"]: x["role"] for x in json.loads(capsys.readouterr().out)["entries"]}
    assert {n for n, r in roles.items() if r == "optimizer"} == set(slots) | set(hypers)
    out = str(tmp_path / "out" / "m")
    assert main(["strip", prefix, out, "-q", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert sorted(report["dropped"]) == sorted(set(slots) | set(hypers))
    with ckptio.open(out) as ckpt:
        assert sorted(ckpt) == sorted(set(weights) | {"words"})
        for name in ckpt:
            assert same(ckpt[name].read(), values[name]), name


def test_cast_reports_what_it_left_as_it_was(tmp_path, capsys):
    from ckptio.cli.main import main

    prefix, values = written(tmp_path)
    report = ckptio.rewrite(prefix, tmp_path / "o" / "m", [Cast("bfloat16", ("^(d64|conv1/)",))])
    assert set(report.cast) == {"d64", "conv1/kernel", "conv1/bias"}
    left = {n: (d, r) for n, d, r in report.not_cast}
    assert left["global_step"] == ("int64", "not-floating") and left["words"] == ("string", "not-floating")
    assert left["dense/kernel"] == ("float32", "not-selected") and left["Adam/d64/m"] == ("float64", "not-selected")
    assert set(left) | set(report.cast) == set(values)
    assert {"name": "words", "dtype": "string", "reason": "not-floating"} in report.to_json()["not_cast"]
    with ckptio.open(report.dst) as ckpt:
        assert ckpt["d64"].dtype_name == "bfloat16"
        assert same(ckpt["d64"].read(), values["d64"].astype(np.float32).astype(ckpt["d64"].dtype))
    # the CLI's one-line summary says it too
    assert main(["rewrite", prefix, str(tmp_path / "o2" / "m"), "--cast", "float16", "-q"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "0 renamed, 37 cast, 4 left as they were: 4 not floating (int64, string)" in line, line


def test_float64_to_16_bits_rounds_as_tf_does():
    # 1.00390625 is halfway between two bfloat16 values; a float64 just above it rounds up when cast
    # directly, but TF goes through float32 (where it is exactly the halfway point) and ties to even.
    x = np.array([1.00390625 + 2.0**-30], np.float64)
    bf16 = dtypes.BY_NAME["bfloat16"]
    assert cast(x, bf16).view(np.uint16)[0] == 0x3F80
    assert x.astype(bf16.numpy()).view(np.uint16)[0] == 0x3F81  # what a direct cast would give
    f16 = dtypes.BY_NAME["float16"]
    y = np.array([1.00048828125 + 2.0**-40], np.float64)  # halfway between two float16 values
    assert cast(y, f16).view(np.uint16)[0] == np.float16(1.0).view(np.uint16)


def test_dtype_missing_from_ml_dtypes_is_refused_by_name(monkeypatch):
    fake = types.ModuleType("ml_dtypes")
    fake.__version__ = "0.4.0"  # before float4_e2m1fn, int2 and uint2
    monkeypatch.setitem(sys.modules, "ml_dtypes", fake)
    # (numpy itself may know the name once the real ml_dtypes is imported: ask the lookup it falls back to)
    for name in ("float4_e2m1fn", "int2", "uint2"):
        with pytest.raises(UnsupportedError, match=f"dtype {name} is not in the installed ml_dtypes 0.4.0"):
            dtypes._ml_dtype(name)


def test_every_dtype_tensorflow_defines_is_known():
    """Our enum table and proto hold every DataType of TF's types.proto, each with a numpy dtype or a
    refusal by name."""
    require_tf()
    tf_types = run_tf_json(
        "import json, tensorflow as tf\n"
        "from tensorflow.core.framework import types_pb2\n"
        "out = {}\n"
        "for v in types_pb2.DataType.DESCRIPTOR.values:\n"
        "    if 0 < v.number < 100:\n"
        "        try:\n"
        "            name = tf.dtypes.as_dtype(v.number).name\n"
        "        except Exception:\n"
        "            name = None\n"
        "        out[v.number] = [v.name, name]\n"
        "print(json.dumps(out))\n"
    )
    from ckptio._proto import types_pb2 as ours

    our_proto = {v.number: v.name for v in ours.DataType.DESCRIPTOR.values}
    assert "33" in tf_types  # float4_e2m1fn
    for number, (proto_name, tf_name) in tf_types.items():
        number = int(number)
        assert our_proto.get(number) == proto_name, number
        d = dtypes.lookup(number)
        assert d is not None, proto_name
        if tf_name is not None:
            assert d.name == tf_name.replace("half", "float16"), (number, tf_name)
        if d.fixed_width:
            assert d.numpy().itemsize == d.itemsize, d.name
        elif d.numpy_name is None:
            with pytest.raises(UnsupportedError, match=f"dtype {d.name} "):
                d.numpy()


def test_an_orphan_under_keras_in_tf1_training_scope_is_still_optimizer_state():
    # Keras-in-TF1 puts all optimizer variables under training/<Opt>/ (FORMAT §9.1): no doubt there.
    names = {
        "dense/kernel": e([5, 2]),
        "training/Adam/iter": e([], I64),
        "training/Adam/gone/kernel/m": e([5, 2]),
        "training/Adam/dense/kernel/m": e([2, 5]),
    }
    got = classify(names)
    assert got["training/Adam/gone/kernel/m"] == got["training/Adam/dense/kernel/m"] == (OPTIMIZER, None)


def test_classify_takes_any_mapping_of_names():
    # callers pass {name: Entry}, or {name: anything}: values that are not Entries are only names
    names = {"dense/kernel": "sha-a", "Adam/dense/kernel/m": "sha-b", "Adam/iter": "sha-c"}
    assert classify(names)["Adam/dense/kernel/m"] == (SLOT, "dense/kernel")
