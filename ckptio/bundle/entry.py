"""BundleEntryProto and BundleHeaderProto as small immutable values, validated on parse."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import CorruptCheckpointError, UnsupportedError
from . import dtypes
from .slices import Slice

# Beyond any real tensor, and small enough that numpy can describe the shape (its byte size,
# zero dimensions ignored, must fit an int64 at 16 bytes per element).
MAX_ELEMENTS = 1 << 58
MAX_RANK = 64
MAX_SHARDS = 1 << 20
CONSUMER_VERSION = 1  # what TensorFlow's bundle reader declares; we read what it reads


def parse_proto(message, data: bytes) -> bool:
    """ParseFromString that reports failure instead of raising.

    Besides DecodeError, protobuf implementations can raise RecursionError, ValueError (bad
    UTF-8) or OverflowError on hostile bytes; all of them mean "not this message".
    """
    from google.protobuf.message import DecodeError

    try:
        message.ParseFromString(data)
    except (DecodeError, RecursionError, ValueError, OverflowError):
        return False
    return True


@dataclass(frozen=True, slots=True)
class Header:
    """The "" entry: shard count, byte order and version."""

    num_shards: int = 1
    big_endian: bool = False
    producer: int = 1
    min_consumer: int = 0
    bad_consumers: tuple[int, ...] = ()

    @staticmethod
    def parse(value: bytes, *, path=None) -> Header:
        fields = _parse_common_header(value)
        if fields is not None:
            endianness = fields[1]
            header = Header(fields[0], endianness == 1, *fields[2:])
        else:
            from .._proto import tensor_bundle_pb2 as pb

            proto = pb.BundleHeaderProto()
            if not parse_proto(proto, value):
                raise CorruptCheckpointError("header entry is not a BundleHeaderProto", path=path, key="")
            v, endianness = proto.version, proto.endianness
            header = Header(
                proto.num_shards,
                endianness == pb.BundleHeaderProto.BIG,
                v.producer,
                v.min_consumer,
                tuple(v.bad_consumers),
            )
        if not 1 <= header.num_shards <= MAX_SHARDS:
            raise CorruptCheckpointError(f"header says {header.num_shards} shards", path=path, key="")
        if endianness not in (0, 1):
            raise CorruptCheckpointError(f"header has unknown endianness {endianness}", path=path, key="")
        if header.min_consumer > CONSUMER_VERSION or CONSUMER_VERSION in header.bad_consumers:
            raise UnsupportedError(
                f"checkpoint needs a reader of version {header.min_consumer} (bad: "
                f"{list(header.bad_consumers)}); ckptio reads version {CONSUMER_VERSION}",
                path=path,
                key="",
            )
        return header

    def encode(self) -> bytes:
        from .._proto import tensor_bundle_pb2 as pb

        proto = pb.BundleHeaderProto(
            num_shards=self.num_shards, endianness=pb.BundleHeaderProto.BIG if self.big_endian else 0
        )
        proto.version.producer = self.producer
        proto.version.min_consumer = self.min_consumer
        proto.version.bad_consumers.extend(self.bad_consumers)
        return proto.SerializeToString()


# crc32c is masked, as stored. Listings build 100,000s of these: parse() builds them through
# _make_entry, which skips the frozen __init__ (see there).
@dataclass(frozen=True, slots=True)
class Entry:
    """One tensor's index entry. A sliced tensor's metadata entry has slices and no bytes."""

    dtype: int
    shape: tuple[int, ...]
    shard_id: int = 0
    offset: int = 0
    size: int = 0
    crc32c: int = 0
    slices: tuple[Slice, ...] = ()

    @property
    def num_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def dtype_info(self) -> dtypes.DType | None:
        return dtypes.lookup(self.dtype)

    @staticmethod
    def parse(value: bytes, *, path=None, key=None) -> Entry:
        # Nearly every entry has the form TensorFlow writes for an unsliced tensor, decoded here
        # without building a message (a quarter of the time); anything else goes through protobuf.
        entry = _parse_common(value)
        if entry is not None:
            return entry
        return parse_with_protobuf(value, path=path, key=key)

    def problem(self) -> str | None:
        """Why this entry is structurally impossible (TF would abort on it), or None."""
        shape = self.shape
        if len(shape) > MAX_RANK:
            return f"shape has rank {len(shape)}"
        n = 1
        for d in shape:
            if d < 0:
                return f"shape {list(shape)} has a negative dimension"
            if d > 1:  # a zero dimension does not make the others harmless to numpy
                n *= d
        if n > MAX_ELEMENTS:
            return f"shape {list(shape)} has too many elements"
        if self.offset < 0 or self.size < 0:
            return f"negative offset {self.offset} or size {self.size}"
        if self.slices:
            seen = set()
            for s in self.slices:
                why = s.check(shape)
                if why:
                    return why
                if s in seen:
                    return f"slice {s.spec()} is listed twice"
                seen.add(s)
        return None

    def piece_problem(self, s, piece: Entry) -> str | None:
        """Why piece cannot be the stored slice s of this sliced tensor's metadata entry, or None.

        TF reads a slice into a tensor of the metadata's dtype and shape and fails on a piece that
        disagrees; so must we, rather than copy it on.
        """
        expected = s.shape(self.shape)
        if piece.dtype != self.dtype or piece.shape != expected:
            return (
                f"slice {s.spec()} is stored as {dtypes.name_of(piece.dtype)}{list(piece.shape)}, expected "
                f"{dtypes.name_of(self.dtype)}{list(expected)}"
            )
        return None

    def data_problem(self) -> str | None:
        """Why this entry's bytes cannot be decoded, or None (checked before any read)."""
        if self.dtype == 0:
            return "dtype is DT_INVALID (0)"
        info = self.dtype_info
        if info is None:
            return f"unknown dtype enum {self.dtype}"
        if not self.slices and info.fixed_width and self.size != self.num_elements * info.itemsize:
            return (
                f"size {self.size} != {self.num_elements} elements x {info.itemsize} bytes "
                f"for {info.name}{list(self.shape)}"
            )
        return None

    def encode(self) -> bytes:
        """Serialize as TensorFlow does: shape and crc32c always present."""
        from .._proto import tensor_bundle_pb2 as pb
        from .slices import to_proto

        proto = pb.BundleEntryProto(
            dtype=self.dtype, shard_id=self.shard_id, offset=self.offset, size=self.size, crc32c=self.crc32c
        )
        proto.shape.SetInParent()
        for d in self.shape:
            proto.shape.dim.add().size = d
        for s in self.slices:
            to_proto(s, proto.slices.add())
        return proto.SerializeToString()


def parse_with_protobuf(value: bytes, *, path=None, key=None) -> Entry:
    """Entry.parse through protobuf: any entry, checked by problem(); what the fast path must agree with."""
    from .._proto import tensor_bundle_pb2 as pb
    from .slices import from_proto

    proto = pb.BundleEntryProto()
    if not parse_proto(proto, value):
        raise CorruptCheckpointError("entry is not a BundleEntryProto", path=path, key=key)
    shape = proto.shape
    if shape.unknown_rank:
        raise CorruptCheckpointError("entry shape has unknown rank", path=path, key=key)
    entry = Entry(
        proto.dtype,
        tuple([d.size for d in shape.dim]),
        proto.shard_id,
        proto.offset,
        proto.size,
        proto.crc32c,
        tuple([from_proto(s) for s in proto.slices]) if proto.slices else (),
    )
    problem = entry.problem()
    if problem:
        raise CorruptCheckpointError(problem, path=path, key=key)
    return entry


# -- the common wire form, decoded without protobuf ---------------------------------------------
#
# An entry as TensorFlow writes it for an unsliced tensor (proto3: fields in number order, zeros
# left out; the shape is always there):
#   08 dtype  12 L shape{ (12 L Dim{ 08 size })* }  18 shard_id  20 offset  28 size  35 crc32c(4 LE)
# _parse_common decodes exactly that family: each field at most once and in increasing order,
# varints of at most 9 bytes (so non-negative; int32 fields below 2**31), a Dim holding its size
# only, shapes within MAX_RANK and MAX_ELEMENTS. On those bytes protobuf gives the same values and
# problem() finds nothing. Everything else (slices, dim names, unknown_rank, unknown or repeated
# fields, negative or huge values, truncation) returns None and goes through protobuf, so a
# malformed entry meets the same checks and errors as before.


# A frozen dataclass's __init__ assigns each field through object.__setattr__: parsing 100,000
# entries took 80 ms more than with the named tuple Entry was before (13% of `ls --json`).
# _parse_common builds its Entry with these instead, the slots' own descriptors' __set__ in field
# order, which store a value past the frozen __setattr__: 35-40 ms more.
_ENTRY_SETTERS = tuple(Entry.__dict__[name].__set__ for name in Entry.__slots__)


_INT32_END = 1 << 31


def _varint(v, pos: int, end: int) -> tuple[int, int]:
    """(value, next position) of a varint of at most 9 bytes that ends before end, or (-1, pos)."""
    result = shift = 0
    stop = min(pos + 9, end)
    while pos < stop:
        b = v[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
    return -1, pos


def _parse_shape(v, pos: int, end: int) -> tuple[int, ...] | None:
    """The dims of a TensorShapeProto at v[pos:end] holding only sized Dims, or None."""
    dims = []
    n = 1
    while pos < end:
        if v[pos] != 0x12 or pos + 1 >= end:
            return None
        length = v[pos + 1]
        pos += 2
        if length >= 0x80:
            length, pos = _varint(v, pos - 1, end)
            if length < 0:
                return None
        dim_end = pos + length
        if dim_end > end:
            return None
        if length == 0:
            d = 0
        elif v[pos] != 0x08:
            return None
        else:
            d = v[pos + 1] if pos + 1 < dim_end else 0x80  # 0x80: missing, decoded (and refused) below
            if d < 0x80:
                pos += 2
            else:
                d, pos = _varint(v, pos + 1, dim_end)
                if d < 0:
                    return None
            if pos != dim_end:
                return None
        dims.append(d)
        if d > 1:
            n *= d
    if len(dims) > MAX_RANK or n > MAX_ELEMENTS:
        return None
    return tuple(dims)


def _parse_common(v, new=object.__new__, cls=Entry, _s=_ENTRY_SETTERS) -> Entry | None:
    """The Entry of the common form, or None."""
    if type(v) is not bytes:  # a bytearray's or memoryview's slices could not key _SHAPES
        v = bytes(v)
    n = len(v)
    pos = last = 0
    dtype = shard = offset = size = crc = 0
    shape: tuple[int, ...] | None = ()
    try:  # an IndexError is a truncated varint
        while pos < n:
            tag = v[pos]
            if tag >> 3 <= last:
                return None
            last = tag >> 3
            if tag == 0x35:  # crc32c, fixed32
                if pos + 5 > n:
                    return None
                crc = int.from_bytes(v[pos + 1 : pos + 5], "little")
                pos += 5
                continue
            # A varint of at most 9 bytes, inline: this runs for nearly every field of every entry.
            x = v[pos + 1]
            pos += 2
            if x >= 0x80:
                x &= 0x7F
                shift = 7
                while True:
                    b = v[pos]
                    pos += 1
                    x |= (b & 0x7F) << shift
                    if b < 0x80:
                        break
                    shift += 7
                    if shift > 56:
                        return None
            if tag == 0x12:
                end = pos + x
                if end > n:
                    return None
                # Shapes repeat (a variable and its slots, layer after layer): decode each once.
                raw = v[pos:end]
                shape = _SHAPES.get(raw)
                if shape is None:
                    shape = _parse_shape(v, pos, end)
                    if shape is None:
                        return None
                    if len(_SHAPES) < 4096:
                        _SHAPES[bytes(raw)] = shape
                pos = end
            elif tag == 0x28:
                size = x
            elif tag == 0x20:
                offset = x
            elif tag == 0x08 and x < _INT32_END:
                dtype = x
            elif tag == 0x18 and x < _INT32_END:
                shard = x
            else:
                return None
    except IndexError:
        return None
    e = new(cls)  # fields in Entry's order, without the frozen __init__ (see _ENTRY_SETTERS)
    _s[0](e, dtype)
    _s[1](e, shape)
    _s[2](e, shard)
    _s[3](e, offset)
    _s[4](e, size)
    _s[5](e, crc)
    _s[6](e, ())
    return e


_SHAPES: dict[bytes, tuple[int, ...]] = {}  # encoded shape -> dims, for shapes _parse_shape accepted


def _parse_common_header(v) -> tuple | None:
    """Header fields (num_shards, endianness, producer, min_consumer, ()) as TF writes them, or None.

    08 num_shards  10 endianness  1a L VersionDef{ 08 producer  10 min_consumer }: each at most once,
    in order, int32 varints below 2**31; bad_consumers, unknown fields and the rest go to protobuf.
    """
    values = {0x08: 0, 0x10: 0}
    version = _varint_fields(v, 0, len(v), values, nested=0x1A)
    if version is None:
        return None
    found = {0x08: 0, 0x10: 0}
    if version and _varint_fields(v, version[0], version[1], found) is None:
        return None
    return (values[0x08], values[0x10], found[0x08], found[0x10], ())


def _varint_fields(v, pos: int, end: int, values: dict, nested: int = -1) -> tuple | None:
    """Fill values[tag] for int32 varint fields in v[pos:end] (increasing tags, each once).

    Returns the (start, end) of the one nested message with tag nested ((), if absent), or None
    when anything else is there.
    """
    last = -1
    span: tuple = ()
    while pos < end:
        tag = v[pos]
        if tag <= last or (tag not in values and tag != nested):
            return None
        last = tag
        x, pos = _varint(v, pos + 1, end)
        if x < 0:
            return None
        if tag == nested:
            if pos + x > end:
                return None
            span = (pos, pos + x)
            pos += x
        elif x < _INT32_END:
            values[tag] = x
        else:
            return None
    return span
