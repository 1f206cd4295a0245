"""BundleEntryProto and BundleHeaderProto as small immutable values, validated on parse."""

from __future__ import annotations

from collections import namedtuple

from google.protobuf.message import DecodeError

from .._proto import tensor_bundle_pb2 as pb
from ..errors import CorruptCheckpointError, UnsupportedError
from . import dtypes
from .slices import from_proto, to_proto

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
    try:
        message.ParseFromString(data)
    except (DecodeError, RecursionError, ValueError, OverflowError):
        return False
    return True


class Header(
    namedtuple("Header", "num_shards big_endian producer min_consumer bad_consumers", defaults=(1, False, 1, 0, ()))
):
    """The "" entry: shard count, byte order and version."""

    __slots__ = ()

    @staticmethod
    def parse(value: bytes, *, path=None) -> Header:
        proto = pb.BundleHeaderProto()
        if not parse_proto(proto, value):
            raise CorruptCheckpointError("header entry is not a BundleHeaderProto", path=path, key="")
        v = proto.version
        header = Header(
            proto.num_shards,
            proto.endianness == pb.BundleHeaderProto.BIG,
            v.producer,
            v.min_consumer,
            tuple(v.bad_consumers),
        )
        if not 1 <= header.num_shards <= MAX_SHARDS:
            raise CorruptCheckpointError(f"header says {header.num_shards} shards", path=path, key="")
        if proto.endianness not in (0, 1):
            raise CorruptCheckpointError(f"header has unknown endianness {proto.endianness}", path=path, key="")
        if header.min_consumer > CONSUMER_VERSION or CONSUMER_VERSION in header.bad_consumers:
            raise UnsupportedError(
                f"checkpoint needs a reader of version {header.min_consumer} (bad: "
                f"{list(header.bad_consumers)}); ckptio reads version {CONSUMER_VERSION}",
                path=path,
                key="",
            )
        return header

    def encode(self) -> bytes:
        proto = pb.BundleHeaderProto(
            num_shards=self.num_shards, endianness=pb.BundleHeaderProto.BIG if self.big_endian else 0
        )
        proto.version.producer = self.producer
        proto.version.min_consumer = self.min_consumer
        proto.version.bad_consumers.extend(self.bad_consumers)
        return proto.SerializeToString()


# A named tuple rather than a frozen dataclass: listings build 100,000s of these, and a frozen
# dataclass's __init__ costs several times more than tuple construction. crc32c is masked, as stored.
class Entry(namedtuple("Entry", "dtype shape shard_id offset size crc32c slices", defaults=(0, 0, 0, 0, ()))):
    """One tensor's index entry. A sliced tensor's metadata entry has slices and no bytes."""

    __slots__ = ()

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
        proto = pb.BundleEntryProto(
            dtype=self.dtype, shard_id=self.shard_id, offset=self.offset, size=self.size, crc32c=self.crc32c
        )
        proto.shape.SetInParent()
        for d in self.shape:
            proto.shape.dim.add().size = d
        for s in self.slices:
            to_proto(s, proto.slices.add())
        return proto.SerializeToString()
