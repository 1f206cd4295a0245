"""Randomized hostile input for every parser: only ckptio's own errors may come out.

Bounded (max_examples, no deadline) so the whole file runs in seconds; tools/fuzz_atheris.py
drives the same parsers with coverage guidance for as long as you like.

Each target also has a model: what a parser returns for valid input equals what was encoded,
and what it returns for damaged input is either an error or exactly the original.
"""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ckptio
from ckptio.bundle import strings
from ckptio.bundle.entry import Entry, Header
from ckptio.bundle.paths import Located
from ckptio.bundle.slices import Slice, SliceKeyError, decode_key, encode_key, tiling_problem
from ckptio.bundle.v1 import tensor_proto_to_array
from ckptio.errors import CkptioError, CorruptCheckpointError
from ckptio.io import MemorySource
from ckptio.sstable import Table, TableBuilder
from ckptio.sstable.block import Block
from ckptio.sstable.block_builder import BlockBuilder
from ckptio.sstable.coding import decode_varint, encode_varint, unmask
from ckptio.sstable.format import Footer
from ckptio.verify import verify

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
FEW = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))

keys_st = st.lists(st.binary(max_size=12), unique=True, max_size=40).map(sorted)


def mutate(data: bytes, edits, cut) -> bytes:
    """Apply (position fraction, xor byte) edits and an optional truncation to data."""
    out = bytearray(data)
    for where, value in edits:
        if out:
            out[int(where * (len(out) - 1))] ^= value
    if cut is not None:
        out = out[: int(cut * len(out))]
    return bytes(out)


edits_st = st.lists(st.tuples(st.floats(0, 1), st.integers(1, 255)), max_size=4)
cut_st = st.one_of(st.none(), st.floats(0, 1))


# -- varints, blocks, tables ----------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=16), st.integers(1, 10))
def test_varint_decoder(data, max_bytes):
    try:
        value, pos = decode_varint(data, 0, len(data), max_bytes)
    except CorruptCheckpointError:
        assert len(data) < max_bytes or all(b & 0x80 for b in data[:max_bytes])
        return
    assert 0 < pos <= min(len(data), max_bytes) and data[pos - 1] < 0x80
    canonical = encode_varint(value)
    assert decode_varint(canonical, 0, len(canonical)) == (value, len(canonical))


@FUZZ
@given(st.binary(max_size=300), st.binary(max_size=8))
def test_block_parser_random_bytes(data, target):
    try:
        block = Block(data)
        list(block.entries())
        list(block.seek(target))
    except CorruptCheckpointError:
        pass


@FUZZ
@given(
    st.lists(st.tuples(st.binary(max_size=10), st.binary(max_size=20)), max_size=30, unique_by=lambda kv: kv[0]).map(
        sorted
    ),
    st.sampled_from([1, 2, 16]),
    edits_st,
    st.binary(max_size=10),
)
def test_block_round_trip_and_mutation(items, interval, edits, target):
    bb = BlockBuilder(interval)
    for k, v in items:
        bb.add(k, v)
    data = bb.finish()
    block = Block(data)
    assert list(block.entries()) == items
    assert list(block.seek(target)) == [kv for kv in items if kv[0] >= target]
    try:
        damaged = Block(mutate(data, edits, None))
        list(damaged.entries())
        list(damaged.seek(target))
    except CorruptCheckpointError:
        pass


@FUZZ
@given(st.binary(min_size=48, max_size=48))
def test_footer_parser(data):
    try:
        Footer.decode(data)
    except CorruptCheckpointError:
        pass


@FUZZ
@given(keys_st, st.sampled_from([64, 256, 4096]), edits_st, cut_st, st.binary(max_size=12))
def test_table_mutation(keys, block_size, edits, cut, probe):
    items = [(k, k[::-1] * 3) for k in keys]
    out = bytearray()
    tb = TableBuilder(out.extend, block_size=block_size, restart_interval=2)
    for k, v in items:
        tb.add(k, v)
    tb.finish()
    data = mutate(bytes(out), edits, cut)
    try:
        table = Table(MemorySource(data))
        got = list(table)
        found = table.get(probe)
    except CorruptCheckpointError:
        return
    # Everything the table vouched for (checksums) must be what was written.
    assert got == items
    assert found == dict(items).get(probe)


@FUZZ
@given(st.binary(max_size=400))
def test_table_random_bytes(data):
    try:
        table = Table(MemorySource(data))
        list(table)
        table.get(b"x")
    except CorruptCheckpointError:
        pass


# -- bundle entries, strings, slices -------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=200))
def test_entry_and_header_parsers(data):
    for parse in (Entry.parse, Header.parse):
        try:
            parsed = parse(data)
        except CkptioError:
            continue
        if isinstance(parsed, Entry):
            assert parsed.problem() is None
            assert Entry.parse(parsed.encode()) == parsed


entry_st = st.builds(
    lambda dtype, shape, shard, offset, size, crc: Entry(dtype, tuple(shape), shard, offset, size, crc),
    st.integers(1, 30),
    st.lists(st.integers(0, 1 << 12), max_size=4),
    st.integers(0, 100),
    st.integers(0, 1 << 40),
    st.integers(0, 1 << 40),
    st.integers(0, 0xFFFFFFFF),
)


@FUZZ
@given(entry_st, edits_st)
def test_entry_round_trip_and_mutation(entry, edits):
    data = entry.encode()
    assert Entry.parse(data) == entry
    try:
        Entry.parse(mutate(data, edits, None))
    except CkptioError:
        pass


@FUZZ
@given(st.lists(st.binary(max_size=20), max_size=12), st.booleans(), edits_st, cut_st)
def test_string_tensor_round_trip_and_mutation(elements, big, edits, cut):
    data, crc = strings.encode(elements, big_endian=big)
    got, computed = strings.decode(data, len(elements), big_endian=big)
    assert got == elements and computed == unmask(crc)
    damaged = mutate(data, edits, cut)
    try:
        out, c = strings.decode(damaged, len(elements), big_endian=big)
    except CorruptCheckpointError:
        return
    if c == unmask(crc):
        assert out == elements


@FUZZ
@given(st.binary(max_size=100), st.integers(0, 200), st.booleans())
def test_string_tensor_random_bytes(data, count, big):
    for fn in (lambda: strings.decode(data, count, big_endian=big), lambda: strings.variant_crc(data, count)):
        try:
            fn()
        except CorruptCheckpointError:
            pass


extent_st = st.tuples(st.integers(-(1 << 62), 1 << 62), st.one_of(st.none(), st.integers(0, 1 << 62)))


@FUZZ
@given(st.binary(max_size=12), st.lists(extent_st, min_size=1, max_size=5))
def test_slice_key_round_trip(name, extents):
    extents = [(0 if length is None else start, length) for start, length in extents]
    s = Slice(tuple(extents))
    assert decode_key(encode_key(name, s)) == (name, s)


@FUZZ
@given(st.binary(max_size=40))
def test_slice_key_random_bytes(data):
    try:
        decode_key(data)
    except SliceKeyError:
        pass
    try:
        decode_key(b"\x00" + data)
    except CorruptCheckpointError:  # SliceKeyError is one
        pass


@FUZZ
@given(
    st.lists(st.integers(1, 5), min_size=1, max_size=3).flatmap(
        lambda shape: st.tuples(
            st.just(tuple(shape)),
            st.lists(
                st.tuples(
                    *[
                        st.integers(0, d - 1).flatmap(lambda a, d=d: st.tuples(st.just(a), st.integers(1, d - a)))
                        for d in shape
                    ]
                ),
                min_size=1,
                max_size=6,
            ),
        )
    )
)
def test_tiling_against_a_brute_force_model(case):
    shape, boxes = case
    slices = [Slice(tuple(box)) for box in boxes]
    count = np.zeros(shape, dtype=int)
    for s in slices:
        count[tuple(slice(a, b) for a, b in s.bounds(shape))] += 1
    assert (tiling_problem(shape, slices) is None) == bool((count == 1).all())


# -- V1 -------------------------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=120), st.integers(-2, 35), st.lists(st.integers(0, 6), max_size=3))
def test_v1_tensor_proto_decoder(data, dtype, shape):
    from ckptio._proto import saved_tensor_slice_pb2 as pb
    from ckptio.bundle.entry import parse_proto

    proto = pb.SavedSlice().data.__class__()  # a TensorProto
    if not parse_proto(proto, data):
        return
    try:
        arr = tensor_proto_to_array(proto, dtype, tuple(shape))
    except CkptioError:
        return
    assert arr.shape == tuple(shape)


def _v1_file(tensors: dict) -> bytes:
    """A V1 table (what TF's TensorSliceWriter writes) for float32 tensors, each one full slice."""
    from ckptio._proto import saved_tensor_slice_pb2 as pb

    meta = pb.SavedTensorSlices()
    meta.meta.versions.producer = 1
    items = []
    for name, arr in tensors.items():
        t = meta.meta.tensor.add()
        t.name, t.type = name, 1
        for d in arr.shape:
            t.shape.dim.add().size = d
        sl = t.slice.add()
        for _ in arr.shape:
            sl.extent.add()
        data = pb.SavedTensorSlices()
        data.data.name = name
        data.data.slice.CopyFrom(sl)
        data.data.data.float_val.extend(arr.reshape(-1).tolist())
        s = Slice(tuple((0, None) for _ in arr.shape))
        items.append((encode_key(name, s), data.SerializeToString()))
    out = bytearray()
    tb = TableBuilder(out.extend, block_size=64)
    tb.add(b"", meta.SerializeToString())
    for k, v in sorted(items):
        tb.add(k, v)
    tb.finish()
    return bytes(out)


V1_TENSORS = {
    "a": np.arange(6, dtype=np.float32).reshape(2, 3),
    "b": np.array([1.5, -2.0], dtype=np.float32),
    "c": np.zeros((0, 2), dtype=np.float32),
}
V1_BYTES = _v1_file(V1_TENSORS)


@FUZZ
@given(edits_st, cut_st)
def test_v1_reader_mutation(edits, cut):
    data = mutate(V1_BYTES, edits, cut)
    try:
        ck = ckptio.Checkpoint("m", located=Located("v1", "m", ("m",)), open_source=lambda p: MemorySource(data, p))
    except CkptioError:
        return
    for name in list(ck):
        try:
            arr = ck[name].read()
        except CkptioError:
            continue
        assert name in V1_TENSORS and arr.tobytes() == V1_TENSORS[name].tobytes()


# -- whole V2 bundles in memory ------------------------------------------------------------------


def _bundle() -> tuple[bytes, bytes, dict]:
    from ckptio.sstable.coding import crc32c, mask

    arrays = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "step": np.array(7, dtype=np.int64)}
    blob, items = b"", []
    for name, arr in arrays.items():
        raw = arr.tobytes()
        items.append(
            (
                name.encode(),
                Entry(
                    1 if arr.dtype == np.float32 else 9, arr.shape, 0, len(blob), len(raw), mask(crc32c(raw))
                ).encode(),
            )
        )
        blob += raw
    text, crc = strings.encode([b"alpha", b"", b"gamma"])
    items.append((b"vocab", Entry(7, (3,), 0, len(blob), len(text), crc).encode()))
    blob += text
    arrays["vocab"] = np.array([b"alpha", b"", b"gamma"], dtype=object)
    s = Slice(((0, 2),))
    part = np.array([3, 4], dtype=np.int32).tobytes()
    items.append((b"parted", Entry(3, (2,), slices=(s,)).encode()))
    items.append((encode_key("parted", s), Entry(3, (2,), 0, len(blob), 8, mask(crc32c(part))).encode()))
    blob += part
    arrays["parted"] = np.array([3, 4], dtype=np.int32)
    out = bytearray()
    tb = TableBuilder(out.extend, block_size=48, restart_interval=1)
    tb.add(b"", Header().encode())
    for k, v in sorted(items):
        tb.add(k, v)
    tb.finish()
    return bytes(out), blob, arrays


INDEX, DATA, ARRAYS = _bundle()


def _open_memory(index: bytes, data: bytes):
    files = {"m.index": index, "m.data-00000-of-00001": data}

    def source(path):
        if path not in files:
            raise ckptio.CheckpointNotFoundError("no such file", path=path)
        return MemorySource(files[path], path)

    return ckptio.Checkpoint("m", located=Located("v2", "m"), open_source=source)


@FUZZ
@given(edits_st, cut_st, st.booleans())
def test_bundle_mutation(edits, cut, in_index):
    index, data = (mutate(INDEX, edits, cut), DATA) if in_index else (INDEX, mutate(DATA, edits, cut))
    try:
        ck = _open_memory(index, data)
    except CkptioError:
        return
    with ck:
        try:
            report = verify(ck)
        except CkptioError:
            report = None
        try:
            names = list(ck)
        except CkptioError:
            names = list(ARRAYS)
        for name in names:
            try:
                arr = ck[name].read()
            except CkptioError:
                continue
            assert name in ARRAYS
            expect = ARRAYS[name]
            assert arr.dtype == expect.dtype and arr.shape == expect.shape
            assert (
                (list(arr.reshape(-1)) == list(expect.reshape(-1)))
                if arr.dtype == object
                else arr.tobytes() == expect.tobytes()
            )
        if report is not None and report.ok:  # verify vouches for every tensor: all must read back
            for name, expect in ARRAYS.items():
                arr = ck[name].read()
                assert (
                    (list(arr.reshape(-1)) == list(expect.reshape(-1)))
                    if arr.dtype == object
                    else arr.tobytes() == expect.tobytes()
                )


@FEW
@given(st.binary(max_size=300), st.binary(max_size=200))
def test_bundle_random_bytes(index, data):
    try:
        ck = _open_memory(index, data)
    except CkptioError:
        return
    with ck:
        try:
            for name in ck:
                ck[name].read()
        except CkptioError:
            pass


# -- the object graph ----------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=300))
def test_object_graph_parser(data):
    from ckptio.objgraph import ObjectGraph

    try:
        ObjectGraph.parse(data)
    except CkptioError:
        pass
