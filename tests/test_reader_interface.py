"""V1 and V2 readers answer one interface (bundle.tensors.CheckpointReader) with the same values.

A V1 table and a V2 bundle are written from the same arrays (one tensor stored as two slices);
every interface method must agree on them, and the capabilities must say what each stores. A
last test fails if code above ckptio/bundle/ compares anything with "v1" or "v2" again.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import numpy as np
import pytest

import ckptio
from ckptio.bundle import dtypes
from ckptio.bundle.decode import from_bytes
from ckptio.bundle.entry import Entry
from ckptio.bundle.readers import open_reader
from ckptio.bundle.slices import Slice
from ckptio.bundle.slices import encode_key as slice_key
from ckptio.bundle.tensors import CheckpointReader
from ckptio.bundle.writer import BundleWriter
from ckptio.errors import CkptioError, UnsupportedError
from ckptio.sstable.table_builder import TableBuilder
from ckptio.verify import verify

VALUES = {
    "dense/kernel": np.arange(12, dtype=np.float32).reshape(3, 4) / 7,
    "dense/bias": np.array([1, -2, 3, -4, 5], dtype=np.int32),
    "global_step": np.array(41.5, dtype=np.float64),
    "vocab": np.array([b"alpha", b"", b"gamma"], dtype=object),
    "emb": np.arange(12, dtype=np.float32).reshape(6, 2) - 3,  # stored as two slices
}
SLICED = {"emb": (Slice(((0, 4), (0, None))), Slice(((4, 2), (0, None))))}
FIELDS = {np.float32: ("float_val", 1), np.int32: ("int_val", 3), np.float64: ("double_val", 2)}


def _v1_value(arr: np.ndarray):
    """(TF dtype enum, TensorProto field, python values) of an array, as TF's V1 writer stores it."""
    if arr.dtype == object:
        return dtypes.STRING, "string_val", list(arr.reshape(-1))
    field, enum = FIELDS[arr.dtype.type]
    return enum, field, [v.item() for v in arr.reshape(-1)]


def write_v1(path: Path) -> str:
    """VALUES as one V1 table file (TF's TensorSliceWriter layout); SLICED tensors as several slices."""
    from ckptio._proto import saved_tensor_slice_pb2 as pb
    from ckptio.bundle.slices import to_proto

    meta = pb.SavedTensorSlices()
    meta.meta.versions.producer = 1
    items = []
    for name, arr in VALUES.items():
        enum, field, _ = _v1_value(arr)
        t = meta.meta.tensor.add()
        t.name, t.type = name, enum
        for d in arr.shape:
            t.shape.dim.add().size = d
        for s in SLICED.get(name, (Slice(tuple((0, None) for _ in arr.shape)),)):
            to_proto(s, t.slice.add())
            piece = arr[tuple(slice(a, b) for a, b in s.bounds(arr.shape))]
            data = pb.SavedTensorSlices()
            data.data.name = name
            to_proto(s, data.data.slice)
            getattr(data.data.data, field).extend(_v1_value(piece)[2])
            items.append((slice_key(name, s), data.SerializeToString()))
    with open(path, "wb") as f:
        builder = TableBuilder(f.write, block_size=64)  # small blocks: a damaged value leaves the rest readable
        builder.add(b"", meta.SerializeToString())
        for key, value in sorted(items):
            builder.add(key, value)
        builder.finish()
    return str(path)


def write_v2(prefix: Path) -> str:
    """VALUES as a two-shard V2 bundle; SLICED tensors as a metadata entry plus one entry per slice."""
    with BundleWriter(str(prefix), num_shards=2) as w:
        for i, (name, arr) in enumerate(VALUES.items()):
            enum = _v1_value(arr)[0]
            if name in SLICED:
                w.add_entry(name, Entry(enum, arr.shape, slices=SLICED[name]))
                for s in SLICED[name]:
                    piece = arr[tuple(slice(a, b) for a, b in s.bounds(arr.shape))]
                    w.add_array(slice_key(name, s), piece, i % 2, dtype=enum)
            else:
                w.add_array(name, arr, i % 2, dtype=enum)
        w.finish(state_file=False)
    return str(prefix)


@pytest.fixture
def pair(tmp_path):
    """(V1 checkpoint, V2 checkpoint) of VALUES, open."""
    v1 = ckptio.open(write_v1(tmp_path / "model.ckpt"))
    v2 = ckptio.open(write_v2(tmp_path / "v2" / "model"))
    yield v1, v2
    v1.close()
    v2.close()


def same(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and bool(np.all(a == b))


def test_both_are_checkpoint_readers_and_keep_their_format_name(pair):
    v1, v2 = pair
    assert (v1.format, v2.format) == ("v1", "v2")
    assert isinstance(v1.reader, CheckpointReader) and isinstance(v2.reader, CheckpointReader)
    assert (v1.reader.format, v2.reader.format) == ("v1", "v2")


def test_entries_agree(pair):
    v1, v2 = pair
    e1, e2 = v1.reader.entries(), v2.reader.entries()
    assert sorted(e1) == sorted(e2) == sorted(VALUES)
    for name in VALUES:
        a, b = e1[name], e2[name]
        assert (a.dtype, a.shape, a.slices) == (b.dtype, b.shape, b.slices), name
        assert v1.reader.entry(name).shape == VALUES[name].shape
        assert b.slices == SLICED.get(name, ())


def test_whole_tensors_read_the_same(pair):
    for ckpt in pair:
        r = ckpt.reader
        for name, want in VALUES.items():
            assert same(r.read_tensor(name), want), (ckpt.format, name)
            assert same(r.read_tensor(name, r.entry(name)), want)
            assert same(ckpt[name].read(), want)
            if not r.entry(name).slices:
                assert same(r.read_entry(name, r.entry(name)), want)


def test_slices_read_and_describe_the_same(pair):
    v1, v2 = pair
    arr = VALUES["emb"]
    for s in SLICED["emb"]:
        want = arr[tuple(slice(a, b) for a, b in s.bounds(arr.shape))]
        assert same(v1.reader.read_slice("emb", s), want)
        assert same(v2.reader.read_slice("emb", s), want)
        assert same(v1.reader.read_slice("emb", s, arr.shape), v2.reader.read_slice("emb", s, arr.shape))
        p1, p2 = v1.reader.slice_entry("emb", s), v2.reader.slice_entry("emb", s)
        assert (p1.dtype, p1.shape, p1.slices) == (p2.dtype, p2.shape, p2.slices) == (1, want.shape, ())  # DT_FLOAT
        assert p1.size == p2.size == want.nbytes  # V1: the decoded size; V2: the stored bytes
        assert same(v1["emb"].read_slice(s), v2["emb"].read_slice(s))


def test_stored_sizes_agree_for_fixed_width_tensors(pair):
    v1, v2 = pair
    for name, arr in VALUES.items():
        if arr.dtype == object:  # V1 cannot tell a string tensor's size without decoding it
            continue
        e1, e2 = v1.reader.entry(name), v2.reader.entry(name)
        assert v1.reader.stored_size(name, e1) == v2.reader.stored_size(name, e2) == arr.nbytes, name
        assert v1[name].nbytes == v2[name].nbytes == arr.nbytes


def test_capabilities_say_what_each_stores(pair):
    v1, v2 = pair
    r1, r2 = v1.reader, v2.reader
    assert (r1.checksums, r1.copies_bytes, r1.index_file, r1.header, r1.big_endian) == (False, False, None, None, False)
    assert (r2.checksums, r2.copies_bytes, r2.big_endian) == (True, True, False)
    assert r2.index_file.endswith("model.index") and r2.header.num_shards == 2
    assert (r1.num_shards, r2.num_shards) == (1, 2) == (v1.num_shards, v2.num_shards)
    assert (v1.header, v2.header) == (None, r2.header)
    for name in VALUES:
        assert not r1.stores_ranges(name, r1.entry(name))
        assert r2.stores_ranges(name, r2.entry(name))


def test_raw_bytes_where_they_mean_something(pair):
    v1, v2 = pair
    r1, r2 = v1.reader, v2.reader
    for name, arr in VALUES.items():
        e = r2.entry(name)
        pieces = [r2.slice_entry(name, s) for s in e.slices] or [e]
        for piece in pieces:
            raw = b"".join(bytes(c) for c in r2.iter_raw(name, piece, 3))
            assert raw == r2.read_raw(name, piece) and len(raw) == piece.size
            assert r2.shard(piece.shard_id).read(piece.offset, piece.size) == raw
        if arr.dtype != object and not e.slices:
            assert same(from_bytes(r2.read_raw(name, e), dtypes.require(e.dtype), e.shape), arr)
        with pytest.raises(UnsupportedError):  # a V1 value is a protobuf, not a byte range
            list(r1.iter_raw(name, r1.entry(name)))
        with pytest.raises(UnsupportedError):
            r1.shard(0)


def test_files_and_tables(pair, tmp_path):
    v1, v2 = pair
    f1 = [p for p, _ in v1.reader.files()]
    f2 = [p for p, _ in v2.reader.files()]
    assert f1 == [str(tmp_path / "model.ckpt")]
    assert f2 == [v2.reader.index_file] + [f"{tmp_path}/v2/model.data-0000{i}-of-00002" for i in range(2)]
    for ckpt in pair:
        for path, open_file in ckpt.reader.files():
            assert open_file().size == os.path.getsize(path)
        assert len(ckpt.reader.sstables()) == 1


def test_bytes_read_counts_reads(pair):
    for ckpt in pair:
        before = ckpt.reader.bytes_read
        assert before == ckpt.bytes_read
        for name in ckpt:
            ckpt[name].read()
        assert ckpt.bytes_read == ckpt.reader.bytes_read >= before


def test_a_damaged_value_is_found_by_each_format_checksum(tmp_path):
    """V2: the entry's crc32c over its bytes; V1: the table block's CRC over the inline protobuf."""
    p1 = write_v1(tmp_path / "model.ckpt")
    p2 = write_v2(tmp_path / "v2" / "model")
    with ckptio.open(p2) as v2:
        e = v2.reader.entry("dense/kernel")
        data = v2.reader.shard_path(e.shard_id)
    blob = bytearray(Path(data).read_bytes())
    blob[e.offset] ^= 0x40
    Path(data).write_bytes(bytes(blob))
    blob = bytearray(Path(p1).read_bytes())
    at = blob.index(np.float32(VALUES["dense/kernel"][1, 1]).tobytes())  # inside its float_val
    blob[at] ^= 0x40
    Path(p1).write_bytes(bytes(blob))
    for path in (p1, p2):
        report = verify(path)
        assert not report.ok and "dense/kernel" in {p.key for p in report.problems} | report.damaged, path
        with ckptio.open(path) as ckpt, pytest.raises(CkptioError):
            ckpt["dense/kernel"].read()


def test_other_formats_answer_the_interface(tmp_path):
    path = tmp_path / "w.npz"
    np.savez(path, a=VALUES["dense/kernel"], b=VALUES["dense/bias"])
    with ckptio.open(path) as ckpt:
        r = ckpt.reader
        assert isinstance(r, CheckpointReader)
        assert (r.checksums, r.copies_bytes, r.index_file) == (False, False, None)
        assert same(r.read_tensor("a"), VALUES["dense/kernel"]) and same(ckpt["b"].read(), VALUES["dense/bias"])


@pytest.mark.parametrize("short_name", ["v1_savenet", "tf1_ctc_momentum"])
def test_corpus_readers_answer_the_interface(corpus, short_name):
    from corrupt_support import corpus_record

    with ckptio.open(corpus / corpus_record(short_name)["prefix"]) as ckpt:
        r = ckpt.reader
        located = open_reader(ckpt.located)
        try:
            assert type(located) is type(r) and sorted(located.entries()) == sorted(r.entries())
            for name, entry in r.entries().items():
                value = r.read_tensor(name, entry)
                assert same(value, located.read_tensor(name)) and value.shape == entry.shape
                for s in entry.slices:
                    assert r.slice_entry(name, s).shape == s.shape(entry.shape)
                assert r.stores_ranges(name, entry) == r.checksums == (ckpt.format == "v2")
            assert all(os.path.exists(p) for p, _ in r.files()) and len(r.files()) == r.num_shards + (
                r.index_file is not None
            )
            assert verify(ckpt).ok
        finally:
            located.close()


def test_no_format_branch_above_the_bundle_layer():
    """Code above ckptio/bundle/ asks the reader what it can do, never whether it is V1 or V2."""
    root = Path(__file__).resolve().parents[1] / "ckptio"
    found = []
    for path in sorted(root.rglob("*.py")):
        if path.relative_to(root).parts[0] in ("bundle", "_proto"):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Compare) and any(_names_a_format(n) for n in [node.left, *node.comparators]):
                found.append(f"{path.relative_to(root.parent)}:{node.lineno}")
    assert not found, "format branches outside ckptio/bundle/ (ask a CheckpointReader capability): " + ", ".join(found)


def _names_a_format(node: ast.expr) -> bool:
    if isinstance(node, ast.Constant):
        return node.value in ("v1", "v2")
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return any(_names_a_format(e) for e in node.elts)
    return False
