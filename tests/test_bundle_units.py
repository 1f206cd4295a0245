"""Bundle-level units (ckptio.bundle): OrderedCode slice keys, string tensors, masked crc32c,
entry and header protos, byte order, and every dtype through our writer and back.

Exact bytes come from FORMAT.md (checked there against TensorFlow 2.21); the big-endian bundle
is written by hand here, independently of ckptio's encoders (tests/test_reader_tf.py also has
TensorFlow read it).
"""

from __future__ import annotations

import os
import struct

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ckptio
from ckptio.bundle import dtypes, strings
from ckptio.bundle.entry import Entry, Header
from ckptio.bundle.slices import Slice, SliceKeyError, decode_key, encode_key
from ckptio.bundle.writer import BundleWriter
from ckptio.errors import ChecksumError, CorruptCheckpointError, UnsupportedError
from ckptio.sstable import TableBuilder
from ckptio.sstable.coding import crc32c, mask, unmask

try:
    from tf_support import hash_array
except ImportError:  # tests/ imported as a package
    from .tf_support import hash_array


# --------------------------------------------------------------------------- masked crc32c (FORMAT §2.3)


def test_crc32c_check_value():
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"") == 0
    assert crc32c(b"6789", crc32c(b"12345")) == 0xE3069283  # continuation


def test_mask_constants():
    assert mask(0) == 0xA282EAD8
    assert unmask(0xA282EAD8) == 0
    c = 0xE3069283
    assert mask(c) == ((((c >> 15) | (c << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


@given(st.integers(0, 2**32 - 1))
def test_mask_unmask_inverse(c):
    assert unmask(mask(c)) == c
    assert 0 <= mask(c) < 2**32


# --------------------------------------------------------------------------- OrderedCode (FORMAT §3.4)


@pytest.mark.parametrize(
    "value,encoded",
    [
        (0, "80"),
        (4, "84"),
        (-1, "7f"),
        (-64, "40"),
        (63, "bf"),
        (64, "c040"),
        (-65, "3fbf"),
        (-8193, "1fdfff"),
        (2**40, "fd0000000000"),
    ],
)
def test_signed_examples(value, encoded):
    key = encode_key(b"n", Slice(((value, 1),)))
    prefix = bytes.fromhex("00") + b"n" + bytes.fromhex("0001 0101")
    assert key == prefix + bytes.fromhex(encoded) + bytes.fromhex("81")
    assert decode_key(key) == (b"n", Slice(((value, 1),)))


def test_part_emb_example():
    key = encode_key("part_emb", Slice(((4, 3), (0, 4))))
    assert key == bytes.fromhex("00 70 61 72 74 5f 65 6d 62 00 01 01 02 84 83 80 84")
    assert decode_key(key) == (b"part_emb", Slice(((4, 3), (0, 4))))


def test_full_extent_and_rank_zero():
    # a whole dimension is (0, -1) in the key, an Extent without length in the proto
    assert encode_key("v", Slice(((0, None),))) == b"\x00v\x00\x01\x01\x01\x80\x7f"
    assert decode_key(b"\x00v\x00\x01\x01\x01\x80\x7f") == (b"v", Slice(((0, None),)))
    # rank 0 (V1 scalars): 00 <name> 00 01 00
    assert encode_key("global_step", Slice(())) == b"\x00global_step\x00\x01\x00"
    assert decode_key(b"\x00global_step\x00\x01\x00") == (b"global_step", Slice(()))
    # the TF1 partitioned fixture's first slice key (tests/test_tf_fixtures.py)
    assert encode_key("model/embedding", Slice(((0, 2), (0, 4)))) == (
        b"\x00model/embedding\x00\x01" + b"\x01\x02" + b"\x80\x82\x80\x84"
    )


def test_name_escaping():
    key = encode_key(b"a\x00b\xffc", Slice(((1, 2),)))
    assert key.startswith(b"\x00a\x00\xffb\xff\x00c\x00\x01")
    assert decode_key(key) == (b"a\x00b\xffc", Slice(((1, 2),)))


_int64 = st.integers(-(2**63), 2**63 - 1)
# (start, length >= 0) or the whole dimension (0, None); a length of -1 *is* "whole" in the key
_extent = st.one_of(st.tuples(_int64, st.integers(0, 2**63 - 1)), st.tuples(st.just(0), st.none()))


@settings(max_examples=300)
@given(st.binary(max_size=20), st.lists(_extent, min_size=0, max_size=5))
def test_ordered_code_round_trip(name, extents):
    s = Slice(tuple(extents))
    key = encode_key(name, s)
    assert key[0] == 0
    assert decode_key(key) == (name, s)


@given(st.lists(_int64, min_size=2, max_size=2, unique=True), st.binary(max_size=6))
def test_ordered_code_keeps_order(starts, name):
    a, b = sorted(starts)
    ka = encode_key(name, Slice(((a, 1),)))
    kb = encode_key(name, Slice(((b, 1),)))
    assert ka < kb  # "signed num increasing": byte order is numeric order


@given(st.binary(max_size=6), st.binary(max_size=6))
def test_ordered_code_orders_names(x, y):
    if x < y:
        assert encode_key(x, Slice(((0, 1),))) < encode_key(y, Slice(((0, 1),)))


@pytest.mark.parametrize(
    "bad",
    [
        b"",
        b"\x01\x01n\x00\x01\x00",  # leading number is not 0
        b"\x00name",
        b"\x00na\x00\x02",
        b"\x00a\xff\x01\x00\x01\x00",  # bad name escapes / terminator
        b"\x00n\x00\x01\x01\x01\x80",
        b"\x00n\x00\x01\x01\x01\x80\x7f\x00",  # truncated, trailing bytes
    ],
)
def test_bad_slice_keys(bad):
    with pytest.raises(SliceKeyError):
        decode_key(bad)
    assert issubclass(SliceKeyError, CorruptCheckpointError)


# --------------------------------------------------------------------------- strings (FORMAT §4.3)


def test_string_tensor_example():
    data, crc = strings.encode([b"", b"a", b"xyz"])
    assert data == bytes.fromhex("00 01 03 d4 eb 08 25 61 78 79 7a")
    assert b"\x35" + struct.pack("<I", crc) == bytes.fromhex("35 99 16 34 ed")
    elements, unmasked = strings.decode(data, 3)
    assert elements == [b"", b"a", b"xyz"] and mask(unmasked) == crc
    # the length checksum is over 4-byte uint32 lengths, not the varints
    assert data[3:7] == struct.pack("<I", mask(crc32c(struct.pack("<III", 0, 1, 3))))


def test_string_scalar_example():
    data, crc = strings.encode([b"hello"])
    assert data == bytes.fromhex("05 d9 c6 9c 43 68 65 6c 6c 6f")
    assert strings.decode(data, 1)[0] == [b"hello"]


@given(st.lists(st.binary(max_size=300), max_size=20), st.booleans())
def test_string_round_trip(elements, big):
    data, crc = strings.encode(elements, big_endian=big)
    got, unmasked = strings.decode(data, len(elements), big_endian=big)
    assert got == elements and mask(unmasked) == crc


def test_string_corruption():
    data, _ = strings.encode([b"ab", b"cde"])
    bad = bytearray(data)
    bad[2] ^= 1  # the length checksum
    with pytest.raises(ChecksumError, match="length checksum"):
        strings.decode(bytes(bad), 2)
    with pytest.raises(CorruptCheckpointError):
        strings.decode(data[:-1], 2)  # payload shorter than the lengths say
    with pytest.raises(CorruptCheckpointError):
        strings.decode(b"\xff\xff", 2)  # varint runs off
    with pytest.raises(CorruptCheckpointError):
        strings.decode(data, 50)  # more elements than bytes
    le, _ = strings.encode([b"ab", b"cde"])
    with pytest.raises(ChecksumError):
        strings.decode(le, 2, big_endian=True)  # byte order matters for the length checksum


# --------------------------------------------------------------------------- entries and header (FORMAT §3)


def test_entry_example():
    e = Entry(dtype=1, shape=(3, 2), offset=32, size=24, crc32c=0xDE037D21)
    raw = bytes.fromhex("08 01 12 08 12 02 08 03 12 02 08 02 20 20 28 18 35 21 7d 03 de")
    assert e.encode() == raw
    assert Entry.parse(raw) == e


def test_entry_scalar_and_empty_shapes():
    scalar = Entry(dtype=1, shape=(), size=4, crc32c=0x67170879)
    assert scalar.encode() == bytes.fromhex("08 01 12 00 28 04 35 79 08 17 67")  # FORMAT §2.8
    empty = Entry(dtype=1, shape=(0,), crc32c=0xA282EAD8)
    assert empty.encode() == bytes.fromhex("08 01 12 02 12 00 35 d8 ea 82 a2")  # size-0 dim: empty Dim
    assert Entry.parse(empty.encode()) == empty
    assert Entry.parse(scalar.encode()).shape == ()


def test_entry_with_slices_and_shard():
    e = Entry(dtype=1, shape=(6, 4), shard_id=2, slices=(Slice(((0, 2), (0, None))), Slice(((2, 4), (0, None)))))
    raw = e.encode()
    # no offset/size/crc on a metadata entry; a whole-dimension extent is an empty Extent (FORMAT §3.3)
    assert raw == bytes.fromhex(
        "08 01 12 08 12 02 08 06 12 02 08 04 18 023a 06 0a 02 10 02 0a 00  3a 08 0a 04 08 02 10 04 0a 00"
    )
    assert Entry.parse(raw) == e


def test_entry_ignores_unknown_fields():
    raw = Entry(dtype=3, shape=(2,), size=8, crc32c=5).encode()
    assert Entry.parse(raw + b"\x78\x07" + b"\x82\x01\x02hi") == Entry(3, (2,), size=8, crc32c=5)


def test_entry_validation():
    assert Entry.parse(bytes.fromhex("08 01 12 04 12 02 08 7f")).shape == (127,)
    with pytest.raises(CorruptCheckpointError, match="negative dimension"):  # TF would abort
        Entry.parse(bytes.fromhex("08 01 12 0d 12 0b 08 ff ff ff ff ff ff ff ff ff 01"))
    with pytest.raises(CorruptCheckpointError, match="not a BundleEntryProto"):
        Entry.parse(b"\x12\xff")
    with pytest.raises(CorruptCheckpointError, match="unknown rank"):
        Entry.parse(bytes.fromhex("08 01 12 02 18 01"))


def test_entry_duplicate_slices_rejected():
    e = Entry(dtype=1, shape=(4,), slices=(Slice(((0, 2),)), Slice(((0, 2),))))
    with pytest.raises(CorruptCheckpointError, match="twice"):
        Entry.parse(e.encode())


def test_header_bytes():
    assert Header().encode() == bytes.fromhex("08 01 1a 02 08 01")
    assert Header(num_shards=4).encode() == bytes.fromhex("08 04 1a 02 08 01")
    h = Header.parse(bytes.fromhex("08 01 10 01 1a 02 08 01"))
    assert h.big_endian and h.num_shards == 1
    assert Header.parse(b"\x08\x01") == Header(1, False, 0, 0, ())  # missing version accepted
    assert Header.parse(bytes.fromhex("08 01 1a 00")).producer == 0  # producer 0 accepted


def _header_proto(num_shards=1, min_consumer=0, bad=()):
    raw = b"\x08" + bytes([num_shards])
    version = b"\x08\x01" + (b"\x10" + bytes([min_consumer]) if min_consumer else b"")
    version += b"".join(b"\x18" + bytes([x]) for x in bad)
    return raw + b"\x1a" + bytes([len(version)]) + version


def write_index(prefix, items, header) -> None:
    """Write prefix.index from (key bytes, value bytes) items plus a raw header value."""
    out = bytearray()
    b = TableBuilder(out.extend)
    b.add(b"", header)
    for k, v in sorted(items):
        b.add(k, v)
    b.finish()
    with open(f"{prefix}.index", "wb") as f:
        f.write(out)


@pytest.mark.parametrize(
    "header,match",
    [
        (_header_proto(min_consumer=5), r"version 5.*ckptio reads version 1"),
        (_header_proto(bad=(1,)), r"bad: \[1\]"),
    ],
)
def test_header_version_refused(tmp_path, header, match):
    prefix = str(tmp_path / "ck")
    write_index(prefix, [], header)
    with pytest.raises(UnsupportedError, match=match) as info:
        ckptio.open(prefix)
    assert "\n" not in str(info.value) and "ck.index" in str(info.value)


def test_header_bad_shard_count(tmp_path):
    prefix = str(tmp_path / "ck")
    write_index(prefix, [], _header_proto(num_shards=0))
    with pytest.raises(CorruptCheckpointError, match="0 shards"):
        ckptio.open(prefix)


def test_header_missing(tmp_path):
    prefix = str(tmp_path / "ck")
    out = bytearray()
    b = TableBuilder(out.extend)
    b.add(b"w", Entry(1, (), size=4, crc32c=0).encode())
    b.finish()
    (tmp_path / "ck.index").write_bytes(bytes(out))
    with pytest.raises(CorruptCheckpointError, match="header"):
        ckptio.open(prefix)


# --------------------------------------------------------------------------- big-endian bundle (FORMAT §4.6)


def big_endian_tensors():
    f = np.random.RandomState(7).standard_normal
    return {
        "f32": f((2, 3)).astype(np.float32),
        "f64": f(3),
        "i16": np.array([-2, 300, 32767], np.int16),
        "i32": np.array([[1, -1], [2**31 - 1, -(2**31)]], np.int32),
        "i64": np.array([2**40, -5], np.int64),
        "u16": np.array([1, 65535], np.uint16),
        "u32": np.array([1, 2**32 - 1], np.uint32),
        "u64": np.array([1, 2**64 - 1], np.uint64),
        "f16": f(4).astype(np.float16),
        "bf16": f(4).astype(ml_dtypes.bfloat16),
        "c64": (f(2) + 1j * f(2)).astype(np.complex64),
        "c128": f(2) + 1j * f(2),
        "i8": np.array([-3, 4], np.int8),
        "u8": np.array([0, 255], np.uint8),
        "bool": np.array([True, False]),
        "scalar": np.float32(2.5),
    }


BE_STRINGS = [b"", b"big", b"endian\x00\xff", b"z" * 130]


def write_big_endian_bundle(prefix: str) -> dict:
    """A big-endian V2 bundle written without ckptio's encoders; returns {name: array}."""
    tensors = big_endian_tensors()
    enums = {
        "f32": 1,
        "f64": 2,
        "i16": 5,
        "i32": 3,
        "i64": 9,
        "u16": 17,
        "u32": 22,
        "u64": 23,
        "f16": 19,
        "bf16": 14,
        "c64": 8,
        "c128": 18,
        "i8": 6,
        "u8": 4,
        "bool": 10,
        "scalar": 1,
    }
    data = bytearray()
    items = []

    def entry(dtype, shape, offset, size, crc):
        # BundleEntryProto by hand: dtype, shape (always), offset, size, crc32c (fixed32)
        shape_bytes = b"".join(b"\x12" + bytes([len(_v(d)) + 1]) + b"\x08" + _v(d) for d in shape)
        out = b"\x08" + _v(dtype) + b"\x12" + _v(len(shape_bytes)) + shape_bytes
        if offset:
            out += b"\x20" + _v(offset)
        if size:
            out += b"\x28" + _v(size)
        return out + b"\x35" + struct.pack("<I", crc)

    for name, arr in tensors.items():
        arr = np.asarray(arr)
        if arr.dtype.kind == "c":  # real and imaginary parts are swapped separately
            stored = arr.view(np.float32 if arr.dtype == np.complex64 else np.float64).byteswap().tobytes()
        elif arr.dtype == ml_dtypes.bfloat16:
            stored = arr.view(np.uint16).byteswap().tobytes()
        else:
            stored = arr.byteswap().tobytes()
        items.append((name.encode(), entry(enums[name], arr.shape, len(data), len(stored), mask(crc32c(stored)))))
        data += stored
    # strings: varint lengths, then the BIG-endian masked crc of the uint32 BE lengths, then bytes
    lengths = b"".join(_v(len(s)) for s in BE_STRINGS)
    crc = crc32c(b"".join(len(s).to_bytes(4, "big") for s in BE_STRINGS))
    checksum = mask(crc).to_bytes(4, "big")
    payload = b"".join(BE_STRINGS)
    stored = lengths + checksum + payload
    entry_crc = mask(crc32c(payload, crc32c(checksum, crc)))
    items.append((b"str", entry(7, (len(BE_STRINGS),), len(data), len(stored), entry_crc)))
    data += stored
    with open(f"{prefix}.data-00000-of-00001", "wb") as f:
        f.write(data)
    write_index(prefix, items, bytes.fromhex("08 01 10 01 1a 02 08 01"))  # endianness = BIG
    out = dict(tensors)
    out["str"] = np.array(BE_STRINGS, dtype=object)
    return out


def _v(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def test_big_endian_bundle(tmp_path):
    prefix = str(tmp_path / "be")
    truth = write_big_endian_bundle(prefix)
    with ckptio.open(prefix) as ck:
        assert ck.header.big_endian
        assert sorted(ck) == sorted(truth)
        for name, want in truth.items():
            got = ck[name].read()
            want = np.asarray(want)
            assert got.dtype == want.dtype and got.shape == want.shape, name
            assert hash_array(got) == hash_array(want), name
            # native byte order out, so arithmetic just works
            assert got.dtype.byteorder in "=|", name
        chunks = list(ck["f32"].iter_chunks(max_bytes=12))
        assert np.array_equal(np.concatenate(chunks), truth["f32"])


# --------------------------------------------------------------------------- every dtype through our writer


def _sample(d: dtypes.DType, shape, rng):
    name = d.name
    if name == "bool":
        return rng.randint(0, 2, shape).astype(bool)
    if name in ("int2", "uint2", "int4", "uint4"):
        dt = np.dtype(getattr(ml_dtypes, name))
        info = ml_dtypes.iinfo(dt)
        return rng.randint(int(info.min), int(info.max) + 1, shape).astype(dt)
    if name.startswith("complex"):
        return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(name)
    dt = d.numpy()
    if dt.kind in "iu":  # random bit patterns cover the whole range
        return rng.randint(0, 256, tuple(shape) + (dt.itemsize,), dtype=np.uint8).view(dt).reshape(shape)
    return (rng.standard_normal(shape) * 2).astype(dt)


NUMERIC = [d for d in dtypes.BY_ENUM.values() if d.fixed_width]
QUANTIZED = {"qint8", "quint8", "qint16", "quint16", "qint32"}


def test_every_dtype_is_covered():
    assert {d.enum for d in NUMERIC} == set(range(1, 34)) - {7, 20, 21}


@pytest.mark.parametrize("shape", [(2, 3), (), (0,), (3, 0)], ids=["2x3", "scalar", "0", "3x0"])
def test_every_dtype_round_trip(tmp_path, shape):
    rng = np.random.RandomState(0)
    prefix = str(tmp_path / "all")
    want = {}
    with BundleWriter(prefix) as w:
        for d in NUMERIC:
            arr = np.asarray(_sample(d, shape, rng))
            if d.name in QUANTIZED:
                from ckptio.bundle.decode import to_bytes

                w.add_bytes(d.name, d.enum, arr.shape, [to_bytes(arr, d)])
            else:
                entry = w.add_array(d.name, arr)
                assert entry.dtype == d.enum, d.name
            want[d.name] = arr
        s = np.empty(shape, dtype=object)
        s.reshape(-1)[:] = [b"s%d\x00" % i for i in range(s.size)]
        w.add_array("string", s)
        want["string"] = s
        w.finish()
    with ckptio.open(prefix) as ck:
        assert sorted(ck) == sorted(want)
        for name, arr in want.items():
            t = ck[name]
            assert t.dtype_name == name and t.shape == shape
            got = t.read()
            assert got.dtype == arr.dtype and got.shape == shape, name
            assert hash_array(got) == hash_array(arr), name
            info = dtypes.BY_NAME[name]
            if info.fixed_width:
                assert t.nbytes == arr.size * info.itemsize
            if arr.size == 0 and info.fixed_width:
                assert t.entry.size == 0 and t.entry.crc32c == 0xA282EAD8  # FORMAT §4.5
            elif arr.size == 0:  # TF writes the 4-byte length checksum of no lengths (tf2_all_dtypes)
                assert (t.entry.size, t.entry.crc32c) == (4, 1678557686)


def test_dtype_property_for_every_dtype(tmp_path):
    prefix = str(tmp_path / "d")
    with BundleWriter(prefix) as w:
        w.add_array("f", np.zeros(2, np.float32))
        w.add_array("bf", np.zeros(2, ml_dtypes.bfloat16))
        w.add_array("s", np.array([b"a"], dtype=object))
        w.finish()
    with ckptio.open(prefix) as ck:
        assert ck["f"].dtype == np.float32
        assert ck["bf"].dtype == np.dtype(ml_dtypes.bfloat16)
        assert ck["s"].dtype == np.dtype(object)  # strings are object arrays of bytes


def test_writer_layout_matches_tf(tmp_path):
    """Alignment 1: tensors back to back in write order, crc over exactly size bytes (FORMAT §4.1)."""
    prefix = str(tmp_path / "lay")
    with BundleWriter(prefix) as w:
        w.add_array("z", np.arange(3, dtype=np.float64))
        w.add_array("a", np.array([1, 2], np.int16))
        w.add_array("m", np.float32(1))
        w.finish()
    data = open(prefix + ".data-00000-of-00001", "rb").read()
    assert len(data) == 24 + 4 + 4
    with ckptio.open(prefix) as ck:
        offs = {n: (ck[n].entry.offset, ck[n].entry.size) for n in ck}
        assert offs == {"z": (0, 24), "a": (24, 4), "m": (28, 4)}
        for n in ck:
            e = ck[n].entry
            assert e.crc32c == mask(crc32c(data[e.offset : e.offset + e.size]))
    index = open(prefix + ".index", "rb").read()
    assert index.startswith(bytes.fromhex("000006 08011a020801"))  # the header entry, as TF writes it


def test_sub_byte_values_sign_extended(tmp_path):
    """int4 stored as 0x0E and as sign-extended 0xFE both read as -2 (FORMAT §4.2)."""
    prefix = str(tmp_path / "i4")
    with BundleWriter(prefix) as w:
        w.add_bytes("i4", 29, (3,), [b"\x0e\xfe\x07"])
        w.add_bytes("u4", 30, (2,), [b"\x0f\xf1"])
        w.finish()
    with ckptio.open(prefix) as ck:
        assert ck["i4"].read().astype(np.int8).tolist() == [-2, -2, 7]
        assert ck["u4"].read().astype(np.uint8).tolist() == [15, 1]


def test_variant_read_is_unsupported(tmp_path):
    prefix = str(tmp_path / "var")
    with BundleWriter(prefix) as w:
        w.add_bytes("it", 21, (), [b"\x05hello" + b"\x00" * 4])
        w.finish()
    with ckptio.open(prefix) as ck:
        assert ck["it"].dtype_name == "variant"
        with pytest.raises(UnsupportedError, match="variant"):
            ck["it"].read()


def test_size_mismatch_and_bad_crc(tmp_path):
    prefix = str(tmp_path / "bad")
    with BundleWriter(prefix) as w:
        w.add_array("ok", np.arange(4, dtype=np.int32))
        w.add_array("flip", np.arange(4, dtype=np.int32))
        w.finish()
    path = prefix + ".data-00000-of-00001"
    with ckptio.open(prefix) as ck:
        off = ck["flip"].entry.offset
    data = bytearray(open(path, "rb").read())
    data[off] ^= 1
    open(path, "wb").write(bytes(data))
    with ckptio.open(prefix) as ck:
        assert ck["ok"].read().tolist() == [0, 1, 2, 3]
        with pytest.raises(ChecksumError, match="flip") as info:
            ck["flip"].read()
        assert "\n" not in str(info.value)
    os.truncate(path, 10)
    with ckptio.open(prefix) as ck:
        with pytest.raises(CorruptCheckpointError):
            ck["flip"].read()
