"""Export to and read from safetensors (ckptio/formats/safetensors.py, export.py).

The oracle for what we write is the reference library (safetensors.numpy.load_file; for BF16/F8,
which it cannot read, the raw bytes viewed as ml_dtypes) and the arrays the source was built from.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

import ckptio
from ckptio.bundle import dtypes
from ckptio.bundle.entry import Entry
from ckptio.bundle.slices import Slice
from ckptio.bundle.slices import encode_key as slice_key
from ckptio.bundle.writer import BundleWriter
from ckptio.errors import (
    ChecksumError,
    CorruptCheckpointError,
    MissingShardError,
    OutputExistsError,
    PlanError,
    TruncatedError,
    UnsupportedError,
    WrongFileError,
)

safetensors_numpy = pytest.importorskip("safetensors.numpy")

RNG = np.random.default_rng(7)
ARRAYS = {
    "f32": RNG.standard_normal((3, 5)).astype(np.float32),
    "f64": RNG.standard_normal((4,)),
    "i32": np.arange(-6, 6, dtype=np.int32).reshape(3, 4),
    "i64": np.int64(123456789012),
    "i16": np.array([-3, 7], np.int16),
    "i8": np.array([-128, 127, 0], np.int8),
    "u8": np.arange(10, dtype=np.uint8),
    "u16": np.array([65535, 1], np.uint16),
    "u32": np.array([1 << 31], np.uint32),
    "u64": np.array([1 << 63], np.uint64),
    "bool": np.array([True, False, True]),
    "c64": (RNG.standard_normal(3) + 1j * RNG.standard_normal(3)).astype(np.complex64),
    "f16": RNG.standard_normal((2, 3)).astype(np.float16),
    "bf16": RNG.standard_normal((5, 3)).astype(ml_dtypes.bfloat16),
    "f8_e4m3fn": RNG.standard_normal(7).astype(ml_dtypes.float8_e4m3fn),
    "f8_e5m2": RNG.standard_normal(7).astype(ml_dtypes.float8_e5m2),
    "empty": np.zeros((0, 3), np.float32),
    "scope/with/slashes/kernel": RNG.standard_normal((2, 2)).astype(np.float32),
}
ML_DTYPES = {"BF16": ml_dtypes.bfloat16, "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2}


def write_bundle(prefix, arrays, sliced=None) -> str:
    """A TF V2 bundle of arrays; sliced: {name: [Slice, ...]} stored as partitioned variables."""
    sliced = sliced or {}
    with BundleWriter(str(prefix)) as w:
        for name, arr in arrays.items():
            arr = np.asarray(arr)
            if name in sliced:
                w.add_entry(name, Entry(dtypes.from_numpy(arr.dtype).enum, arr.shape, slices=tuple(sliced[name])))
                for s in sliced[name]:
                    w.add_array(slice_key(name, s), arr[tuple(slice(a, b) for a, b in s.bounds(arr.shape))])
            else:
                w.add_array(name, arr)
        w.finish(state_file=False)
    return str(prefix)


def load_reference(path) -> dict:
    """What safetensors itself reads; BF16/F8 (which safetensors.numpy cannot read) from the raw bytes."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    header.pop("__metadata__", None)
    plain = {k: v for k, v in header.items() if v["dtype"] not in ML_DTYPES}
    out = {}
    if plain:
        from safetensors import safe_open

        with safe_open(str(path), framework="np") as f:
            out.update({k: f.get_tensor(k) for k in plain})
    for k, v in header.items():
        if v["dtype"] in ML_DTYPES:
            b, e = v["data_offsets"]
            out[k] = np.frombuffer(data[b:e], ML_DTYPES[v["dtype"]]).reshape(v["shape"])
    return out


def same(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.fixture()
def bundle(tmp_path):
    return write_bundle(tmp_path / "src" / "model.ckpt", ARRAYS)


def test_every_dtype_round_trips_bit_exact(bundle, tmp_path):
    out = str(tmp_path / "out" / "model.safetensors")
    report = ckptio.rewrite(bundle, out)
    assert len(report.kept) == len(ARRAYS) and report.bytes_after == sum(np.asarray(a).nbytes for a in ARRAYS.values())
    got = load_reference(out)
    assert set(got) == set(ARRAYS)
    for name, want in ARRAYS.items():
        assert same(got[name], want), name
    with open(out, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    assert n % 8 == 0  # the data starts 8-aligned
    assert header["bf16"]["dtype"] == "BF16" and header["f16"]["dtype"] == "F16"
    assert header["f8_e4m3fn"]["dtype"] == "F8_E4M3" and header["f8_e5m2"]["dtype"] == "F8_E5M2"
    # ... and ckptio reads its own output back with the TF dtypes
    with ckptio.open(out) as ck:
        assert {n: ck[n].dtype_name for n in ("bf16", "f8_e4m3fn", "bool")} == {
            "bf16": "bfloat16",
            "f8_e4m3fn": "float8_e4m3fn",
            "bool": "bool",
        }
        for name, want in ARRAYS.items():
            assert same(ck[name].read(), want), name


def test_metadata_records_source_and_version(bundle, tmp_path):
    from safetensors import safe_open

    out = str(tmp_path / "model.safetensors")
    ckptio.rewrite(bundle, out)
    with safe_open(out, framework="np") as f:
        meta = f.metadata()
    assert meta == {"format": "tf", "producer": "ckptio", "ckptio_version": ckptio.__version__, "source": bundle}


def test_header_bytes_match_the_reference_writer(tmp_path):
    """Same tensors, no metadata: our header is byte for byte what safetensors' own writer makes."""
    from ckptio.formats.export import OutTensor
    from ckptio.formats.safetensors import FROM_TF, encode_header, layout_order

    arrays = {k: ARRAYS[k] for k in ("f32", "i64", "f16", "u8", "bool", "f64", "i8", "u16", "empty")}
    ref = tmp_path / "ref.safetensors"
    safetensors_numpy.save_file({k: np.asarray(v) for k, v in arrays.items()}, str(ref))
    tensors = [
        OutTensor(k, k, dtypes.from_numpy(np.asarray(v).dtype).enum, np.shape(v), np.asarray(v).nbytes, k, None)
        for k, v in arrays.items()
    ]
    order = layout_order(tensors)
    head, _ = encode_header({}, [(t.name, FROM_TF[t.dtype], t.shape, t.nbytes) for t in order])
    assert ref.read_bytes()[: len(head)] == head


def test_partitioned_variables_are_assembled(tmp_path):
    rows = np.arange(40, dtype=np.float32).reshape(10, 4)
    grid = np.arange(24, dtype=np.int64).reshape(4, 6)
    bf = RNG.standard_normal((6, 2)).astype(ml_dtypes.bfloat16)
    sliced = {
        "rows": [Slice(((0, 3), (0, None))), Slice(((3, 7), (0, None)))],  # along axis 0: copied
        "grid": [Slice(((0, 4), (0, 2))), Slice(((0, 4), (2, 4)))],  # along axis 1: read whole
        "bf": [Slice(((0, 2), (0, None))), Slice(((2, 4), (0, None)))],
    }
    src = write_bundle(tmp_path / "src" / "m", {"rows": rows, "grid": grid, "bf": bf}, sliced)
    out = str(tmp_path / "m.safetensors")
    ckptio.rewrite(src, out)
    got = load_reference(out)
    assert same(got["rows"], rows) and same(got["grid"], grid) and same(got["bf"], bf)
    npz = str(tmp_path / "m.npz")
    ckptio.rewrite(src, npz)
    with np.load(npz, allow_pickle=False) as z:
        assert same(z["rows"], rows) and same(z["grid"], grid) and same(z["bf"].view(ml_dtypes.bfloat16), bf)


def test_unchanged_bytes_are_copied_by_the_kernel_not_decoded(tmp_path, monkeypatch):
    from ckptio.bundle import copy as copy_mod
    from ckptio.bundle import decode

    big = RNG.standard_normal((300, 300)).astype(np.float32)  # 360 KB: over KERNEL_COPY_MIN
    src = write_bundle(tmp_path / "src" / "m", {"big": big, "small": np.float32(1.5)})
    copied = []
    real = copy_mod._copy_range
    monkeypatch.setattr(copy_mod, "_copy_range", lambda s, o, off, n: copied.append(n) or real(s, o, off, n))
    monkeypatch.setattr(decode, "from_bytes", lambda *a, **k: pytest.fail("decoded a tensor that needs no change"))
    out = str(tmp_path / "m.safetensors")
    ckptio.rewrite(src, out)
    assert copied == [big.nbytes]
    monkeypatch.undo()
    assert same(load_reference(out)["big"], big)


def test_copied_ranges_are_announced_once_and_read_ahead_as_the_bundle_writer_does(tmp_path, monkeypatch):
    from ckptio.bundle import copy as copy_mod

    arrays = {
        "a": RNG.standard_normal((600, 600)).astype(np.float32),  # 1.4 MB each: a read-ahead thread is started
        "b": RNG.standard_normal((700, 400)).astype(np.float32),
        "c": np.arange(5, dtype=np.float32),
        "h": RNG.standard_normal(9).astype(np.float32),  # cast below: converted, so not announced
    }
    src = write_bundle(tmp_path / "src" / "m", arrays)
    announced = []
    real = copy_mod.Copier.read_ahead
    monkeypatch.setattr(
        copy_mod.Copier,
        "read_ahead",
        lambda self, out, s, ranges: announced.append(list(ranges)) or real(self, out, s, ranges),
    )
    monkeypatch.setattr(copy_mod, "_read_exactly", lambda *a: pytest.fail("a copy advised its own range"))
    out = str(tmp_path / "out" / "m.safetensors")
    ckptio.rewrite(src, out, [ckptio.Cast("float16", only=("^h$",))])
    with ckptio.open(src) as ck:
        entries = ck.entries()
    assert announced == [sorted((entries[n].offset, entries[n].size) for n in ("a", "b", "c"))]
    got = load_reference(out)
    assert all(same(got[n], arrays[n]) for n in ("a", "b", "c"))
    assert same(got["h"], arrays["h"].astype(np.float16))


def test_corrupt_source_bytes_fail_the_export_and_leave_nothing(tmp_path):
    big = RNG.standard_normal((300, 300)).astype(np.float32)
    src = write_bundle(tmp_path / "src" / "m", {"big": big, "small": np.arange(5, dtype=np.float32)})
    data = tmp_path / "src" / "m.data-00000-of-00001"
    raw = bytearray(data.read_bytes())
    raw[1000] ^= 0xFF
    data.write_bytes(bytes(raw))
    out = tmp_path / "out" / "m.safetensors"
    with pytest.raises(ChecksumError):
        ckptio.rewrite(src, str(out))
    assert os.listdir(out.parent) == []  # no output, no temp file
    ckptio.rewrite(src, str(out), verify=False)  # --no-verify copies what is there
    assert out.exists()


def test_cast_and_rename_and_strip_into_safetensors(tmp_path):
    arrays = {
        "dense/kernel": RNG.standard_normal((4, 3)).astype(np.float32),
        "dense/kernel/Adam": np.ones((4, 3), np.float32),
        "dense/kernel/Adam_1": np.ones((4, 3), np.float32),
        "beta1_power": np.float32(0.9),
        "global_step": np.int64(7),
    }
    src = write_bundle(tmp_path / "src" / "m", arrays)
    out = str(tmp_path / "m.safetensors")
    ckptio.rewrite(
        src, out, [ckptio.StripOptimizer(), ckptio.Rename((("dense/", "encoder/dense/"),)), ckptio.Cast("bfloat16")]
    )
    got = load_reference(out)
    assert set(got) == {"encoder/dense/kernel", "global_step"}
    assert same(got["encoder/dense/kernel"], arrays["dense/kernel"].astype(ml_dtypes.bfloat16))
    assert same(got["global_step"], arrays["global_step"])


def test_an_export_lists_every_dropped_tensor_once(tmp_path):
    arrays = {}
    for i in range(300):
        arrays[f"l{i:03d}/kernel"] = np.full(2, i, np.float32)
        arrays[f"l{i:03d}/kernel/Adam"] = np.zeros(2, np.float32)
        arrays[f"l{i:03d}/kernel/Adam_1"] = np.zeros(2, np.float32)
    src = write_bundle(tmp_path / "src" / "m", arrays)
    report = ckptio.rewrite(src, str(tmp_path / "m.safetensors"), [ckptio.StripOptimizer()])
    assert sorted(report.dropped) == sorted(n for n in arrays if "Adam" in n)  # each once
    assert set(load_reference(tmp_path / "m.safetensors")) == {n for n in arrays if "Adam" not in n}


def test_string_tensor_is_an_error_naming_it(tmp_path):
    src = str(tmp_path / "src" / "m")
    with BundleWriter(src) as w:
        w.add_array("vocab", np.array([b"a", b"bc"], dtype=object))
        w.add_array("w", np.ones(3, np.float32))
        w.finish(state_file=False)
    out = tmp_path / "out" / "m.safetensors"
    with pytest.raises(PlanError, match=r"'vocab' is a string tensor.*--exclude '\^vocab\$'"):
        ckptio.rewrite(src, str(out))
    assert not out.parent.exists() or os.listdir(out.parent) == []
    proc = subprocess.run(
        [sys.executable, "-m", "ckptio", "rewrite", src, str(out)],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=os.getcwd()),
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "vocab" in proc.stderr, proc.stderr
    ckptio.rewrite(src, str(out), [ckptio.Select(exclude=("^vocab$",))])
    assert set(load_reference(out)) == {"w"}


def test_dtype_safetensors_lacks_is_an_error(tmp_path):
    src = write_bundle(tmp_path / "src" / "m", {"c128": np.ones(2, np.complex128), "w": np.ones(2, np.float32)})
    with pytest.raises(PlanError, match="'c128' is a complex128 tensor, which safetensors cannot hold"):
        ckptio.rewrite(src, str(tmp_path / "m.safetensors"))


def test_sharded_export_names_shards_as_hugging_face_and_maps_every_tensor(tmp_path):
    arrays = {f"layer_{i}/w": np.full((100,), i, np.float32) for i in range(7)}  # 400 bytes each
    src = write_bundle(tmp_path / "src" / "m", arrays)
    out = tmp_path / "out" / "model.safetensors"
    ckptio.rewrite(src, str(out), max_shard_size=1000)
    names = sorted(os.listdir(out.parent))
    assert names == [f"model-0000{i}-of-00004.safetensors" for i in range(1, 5)] + ["model.safetensors.index.json"]
    index = json.loads((out.parent / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == 7 * 400
    assert set(index["weight_map"]) == set(arrays)
    for name, shard in index["weight_map"].items():
        assert same(safetensors_numpy.load_file(str(out.parent / shard))[name], arrays[name])
    with ckptio.open(str(out) + ".index.json") as ck:  # and read back through the index
        assert ck.num_shards == 4 and all(same(ck[n].read(), a) for n, a in arrays.items())
    prefix = str(tmp_path / "tf" / "model.ckpt")  # a sharded set into a TF checkpoint
    ckptio.rewrite(str(out) + ".index.json", prefix)
    assert ckptio.verify(prefix).ok
    with ckptio.open(prefix) as ck:
        assert ck.format == "v2" and all(same(ck[n].read(), a) for n, a in arrays.items())
    # --force to a single file replaces the whole set
    ckptio.rewrite(src, str(out), force=True)
    assert sorted(os.listdir(out.parent)) == ["model.safetensors"]


def test_cli_max_shard_size(tmp_path):
    src = write_bundle(tmp_path / "src" / "m", {f"w{i}": np.zeros(300, np.float32) for i in range(3)})
    out = tmp_path / "o" / "weights.safetensors"
    proc = subprocess.run(
        [sys.executable, "-m", "ckptio", "rewrite", src, str(out), "--max-shard-size", "1K", "-q"],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=os.getcwd()),
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(out.parent)) == [
        "weights-00001-of-00003.safetensors",
        "weights-00002-of-00003.safetensors",
        "weights-00003-of-00003.safetensors",
        "weights.safetensors.index.json",
    ]


def test_existing_output_needs_force_and_the_input_is_never_overwritten(bundle, tmp_path):
    out = tmp_path / "m.safetensors"
    ckptio.rewrite(bundle, str(out))
    before = out.read_bytes()
    with pytest.raises(OutputExistsError, match="--force"):
        ckptio.rewrite(bundle, str(out), [ckptio.Select(include=("f32",))])
    assert out.read_bytes() == before
    ckptio.rewrite(bundle, str(out), [ckptio.Select(include=("f32",))], force=True)
    assert set(load_reference(out)) == {"f32"}
    with pytest.raises(OutputExistsError, match="is the input"):
        ckptio.rewrite(str(out), str(out), force=True)
    link = tmp_path / "link.safetensors"
    link.symlink_to(out)
    with pytest.raises(OutputExistsError, match="is the input"):
        ckptio.rewrite(str(out), str(link), force=True)
    assert set(load_reference(out)) == {"f32"}


def test_failure_midway_leaves_no_file(bundle, tmp_path, monkeypatch):
    from ckptio.formats import export as export_mod

    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")
        yield  # a generator, as the real one

    monkeypatch.setattr(export_mod, "_converted", boom)
    out = tmp_path / "out" / "m.safetensors"
    with pytest.raises(OSError):
        ckptio.rewrite(bundle, str(out), [ckptio.Cast("float16")])
    assert os.listdir(out.parent) == []


# -- reading --------------------------------------------------------------------------------------------------


def test_reads_a_file_the_reference_wrote(tmp_path):
    path = str(tmp_path / "ref.safetensors")
    arrays = {k: np.asarray(ARRAYS[k]) for k in ("f32", "i64", "u8", "bool", "c64", "empty")}
    safetensors_numpy.save_file(arrays, path, metadata={"format": "pt"})
    with ckptio.open(path) as ck:
        assert set(ck) == set(arrays) and ck.format == "safetensors" and ck.metadata == {"format": "pt"}
        for name, want in arrays.items():
            assert same(ck[name].read(), want)
        t = ck["f32"]
        assert (t.dtype_name, t.shape, t.nbytes) == ("float32", (3, 5), 60)


def test_listing_reads_only_the_header(bundle, tmp_path):
    out = str(tmp_path / "m.safetensors")
    ckptio.rewrite(bundle, out)
    with open(out, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
    with ckptio.open(out) as ck:
        assert len([ck[name].shape for name in ck]) == len(ARRAYS)
        assert ck.bytes_read == 8 + n
        ck["f32"].read()
        assert ck.bytes_read == 8 + n + ARRAYS["f32"].nbytes


def test_strip_and_rename_from_safetensors(tmp_path):
    path = str(tmp_path / "in.safetensors")
    safetensors_numpy.save_file(
        {
            "dense/kernel": np.ones((2, 2), np.float32),
            "dense/kernel/Adam": np.zeros((2, 2), np.float32),
            "beta1_power": np.array(0.9, np.float32),
        },
        path,
    )
    out = str(tmp_path / "out.safetensors")
    report = ckptio.rewrite(path, out, [ckptio.StripOptimizer(), ckptio.Rename((("dense/", "d/"),))])
    assert sorted(report.dropped) == ["beta1_power", "dense/kernel/Adam"]
    assert set(load_reference(out)) == {"d/kernel"}


def _header_file(path, header, data=b"", *, n=None) -> str:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw) if n is None else n) + raw + data)
    return str(path)


def _t(dtype="F32", shape=(2,), offsets=(0, 8)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


HOSTILE = [
    ("too small", lambda p: open(p, "wb").write(b"\x01\x02") and str(p), TruncatedError, "header too small"),
    ("header too large", lambda p: _header_file(p, b"{}", n=100_000_001), CorruptCheckpointError, "header too large"),
    ("header past the end", lambda p: _header_file(p, b"{}", n=4096), TruncatedError, "runs past the end"),
    ("not json", lambda p: _header_file(p, b"{not json"), CorruptCheckpointError, "not UTF-8 JSON"),
    ("not utf-8", lambda p: _header_file(p, b'{"\xff": 1}'), CorruptCheckpointError, "not UTF-8 JSON"),
    ("not an object", lambda p: _header_file(p, b"[1, 2]"), CorruptCheckpointError, "not a JSON object"),
    (
        "duplicate name",
        lambda p: _header_file(
            p, b'{"a": %s, "a": %s}' % (json.dumps(_t()).encode(), json.dumps(_t()).encode()), bytes(8)
        ),
        CorruptCheckpointError,
        "duplicate key 'a'",
    ),
    (
        "metadata not strings",
        lambda p: _header_file(p, {"__metadata__": {"k": 1}}),
        CorruptCheckpointError,
        "__metadata__",
    ),
    (
        "unknown dtype",
        lambda p: _header_file(p, {"a": _t(dtype="F128")}, bytes(8)),
        CorruptCheckpointError,
        "unknown dtype",
    ),
    ("negative dim", lambda p: _header_file(p, {"a": _t(shape=(-2,))}, bytes(8)), CorruptCheckpointError, "bad shape"),
    (
        "float dim",
        lambda p: _header_file(p, {"a": {"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]}}, bytes(8)),
        CorruptCheckpointError,
        "bad shape",
    ),
    (
        "bool dim",
        lambda p: _header_file(p, {"a": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}}, bytes(4)),
        CorruptCheckpointError,
        "bad shape",
    ),
    (
        "huge shape",
        lambda p: _header_file(p, {"a": _t(shape=(1 << 40, 1 << 40))}, bytes(8)),
        CorruptCheckpointError,
        "too many elements",
    ),
    (
        "offsets reversed",
        lambda p: _header_file(p, {"a": _t(offsets=(8, 0))}, bytes(8)),
        CorruptCheckpointError,
        "bad data_offsets",
    ),
    (
        "size mismatch",
        lambda p: _header_file(p, {"a": _t(offsets=(0, 12))}, bytes(12)),
        CorruptCheckpointError,
        "hold 12 bytes, but F32[2] needs 8",
    ),
    (
        "hole",
        lambda p: _header_file(p, {"a": _t(offsets=(4, 12))}, bytes(12)),
        CorruptCheckpointError,
        "leaves a hole of 4 bytes",
    ),
    (
        "overlap",
        lambda p: _header_file(p, {"a": _t(), "b": _t(offsets=(4, 12))}, bytes(12)),
        CorruptCheckpointError,
        "overlaps",
    ),
    ("trailing bytes", lambda p: _header_file(p, {"a": _t()}, bytes(9)), CorruptCheckpointError, "not fully covered"),
    ("truncated data", lambda p: _header_file(p, {"a": _t()}, bytes(5)), TruncatedError, "holds 5"),
    (
        "no TF dtype",
        lambda p: _header_file(p, {"a": _t(dtype="F8_E8M0", offsets=(0, 2))}, bytes(2)),
        UnsupportedError,
        "F8_E8M0 has no TensorFlow equivalent",
    ),
]


@pytest.mark.parametrize("make, kind, message", [h[1:] for h in HOSTILE], ids=[h[0] for h in HOSTILE])
def test_hostile_headers_give_one_typed_error(tmp_path, make, kind, message):
    path = make(tmp_path / "bad.safetensors")
    with pytest.raises(kind) as info:
        ckptio.open(path)
    assert message in str(info.value)
    proc = subprocess.run(
        [sys.executable, "-m", "ckptio", "ls", path],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=os.getcwd()),
    )
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr


def test_hostile_index_files(tmp_path):
    good = tmp_path / "model-00001-of-00001.safetensors"
    safetensors_numpy.save_file({"a": np.ones(2, np.float32), "b": np.ones(1, np.float32)}, str(good))
    index = tmp_path / "model.safetensors.index.json"
    cases = [
        ({"weight_map": {"a": "../model-00001-of-00001.safetensors"}}, CorruptCheckpointError, "not a file beside"),
        ({"weight_map": {"a": "/etc/passwd"}}, CorruptCheckpointError, "not a file beside"),
        ({"weight_map": {"a": good.name}}, CorruptCheckpointError, "entry b: tensor in shard"),
        (
            {"weight_map": {"a": good.name, "b": good.name, "c": good.name}},
            CorruptCheckpointError,
            "lists 1 tensor(s) its shard lacks",
        ),
        ({"metadata": {}}, WrongFileError, 'no "weight_map"'),
        ({"weight_map": {"a": "gone.safetensors"}}, MissingShardError, "shard named by the index is missing"),
    ]
    for doc, kind, message in cases:
        index.write_text(json.dumps(doc))
        with pytest.raises(kind) as info:
            ckptio.open(str(index))
        assert message in str(info.value), doc


def test_verify_says_what_it_checked(bundle, tmp_path):
    out = str(tmp_path / "m.safetensors")
    ckptio.rewrite(bundle, out)
    report = ckptio.verify(out)
    assert report.ok and report.tensors == len(ARRAYS)
    assert "data_offsets" in report.checked and "no checksums" in report.checked
    proc = subprocess.run(
        [sys.executable, "-m", "ckptio", "verify", out],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=os.getcwd()),
    )
    assert proc.returncode == 0 and "no checksums" in proc.stdout


def test_rewrite_from_safetensors_to_a_tf_prefix(tmp_path):
    path = str(tmp_path / "in.safetensors")
    arrays = {k: np.asarray(ARRAYS[k]) for k in ("f32", "i64", "bool", "f16")}
    safetensors_numpy.save_file(arrays, path)
    prefix = str(tmp_path / "tf" / "model.ckpt")
    ckptio.rewrite(path, prefix)
    assert ckptio.verify(prefix).ok
    with ckptio.open(prefix) as ck:
        assert ck.format == "v2" and all(same(ck[n].read(), a) for n, a in arrays.items())


def test_show_says_there_is_no_crc(bundle, tmp_path):
    out = str(tmp_path / "m.safetensors")
    ckptio.rewrite(bundle, out)
    proc = subprocess.run(
        [sys.executable, "-m", "ckptio", "show", out, "f32", "--json"],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=os.getcwd()),
    )
    doc = json.loads(proc.stdout)
    assert proc.returncode == 0 and doc["crc32c"] == "none" and doc["shape"] == [3, 5]
    assert doc["stats"]["max"] == float(ARRAYS["f32"].max())


def test_random_corruption_gives_only_typed_errors(tmp_path):
    """Flipped, inserted and cut bytes anywhere in the header: a CkptioError or a consistent file, never a crash."""
    import random

    from ckptio.errors import CkptioError

    good = tmp_path / "good.safetensors"
    safetensors_numpy.save_file(
        {
            "a": np.arange(6, dtype=np.float32).reshape(2, 3),
            "b": np.arange(3, dtype=np.int64),
            "c": np.zeros((0,), np.float16),
        },
        str(good),
        metadata={"k": "v"},
    )
    clean = good.read_bytes()
    (n,) = struct.unpack("<Q", clean[:8])
    rng = random.Random(15)
    bad = tmp_path / "bad.safetensors"
    outcomes = {"refused": 0, "read": 0}
    for _ in range(300):
        data = bytearray(clean)
        at = rng.randrange(8 + n)
        choice = rng.random()
        if choice < 0.6:
            data[at] = rng.randrange(256)
        elif choice < 0.8:
            data[at:at] = bytes([rng.randrange(256)])
        else:
            del data[at:]
        bad.write_bytes(bytes(data))
        try:
            with ckptio.open(str(bad)) as ck:
                for name in ck:
                    ck[name].read()
            outcomes["read"] += 1
        except CkptioError:
            outcomes["refused"] += 1
    assert outcomes["refused"] > 100 and sum(outcomes.values()) == 300, outcomes


def test_packing_into_a_tar_zst_is_refused_in_one_line(bundle, tmp_path):
    out = str(tmp_path / "m.safetensors")
    ckptio.rewrite(bundle, out)
    for argv in (["pack", out, str(tmp_path / "p.tar.zst")], ["rewrite", out, str(tmp_path / "r.tar.zst")]):
        proc = subprocess.run(
            [sys.executable, "-m", "ckptio", *argv],
            capture_output=True,
            text=True,
            env=dict(os.environ, PYTHONPATH=os.getcwd()),
        )
        assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
        assert "only TensorFlow checkpoints are packed" in proc.stderr and "internal error" not in proc.stderr
    assert sorted(os.listdir(tmp_path)) == ["m.safetensors", "src"]
