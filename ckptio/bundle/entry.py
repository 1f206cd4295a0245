"""BundleEntryProto and BundleHeaderProto as small immutable values, validated on parse."""
from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.message import DecodeError

from .._proto import tensor_bundle_pb2 as pb
from ..errors import CorruptCheckpointError, UnsupportedError
from . import dtypes
from .slices import Slice, from_proto, to_proto

MAX_ELEMENTS = 1 << 62  # beyond any real tensor; stops overflow games with huge dims
MAX_RANK = 64
MAX_SHARDS = 1 << 20
CONSUMER_VERSION = 1  # what TensorFlow's bundle reader declares; we read what it reads


@dataclass(frozen=True, slots=True)
class Header:
    """The "" entry: shard count, byte order and version."""

    num_shards: int = 1
    big_endian: bool = False
    producer: int = 1
    min_consumer: int = 0
    bad_consumers: tuple[int, ...] = ()

    @staticmethod
    def parse(value: bytes, *, path=None) -> "Header":
        proto = pb.BundleHeaderProto()
        try:
            proto.ParseFromString(value)
        except DecodeError:
            raise CorruptCheckpointError("header entry is not a BundleHeaderProto", path=path, key="") from None
        v = proto.version
        header = Header(proto.num_shards, proto.endianness == pb.BundleHeaderProto.BIG, v.producer,
                        v.min_consumer, tuple(v.bad_consumers))
        if not 1 <= header.num_shards <= MAX_SHARDS:
            raise CorruptCheckpointError(f"header says {header.num_shards} shards", path=path, key="")
        if proto.endianness not in (0, 1):
            raise CorruptCheckpointError(f"header has unknown endianness {proto.endianness}", path=path, key="")
        if header.min_consumer > CONSUMER_VERSION or CONSUMER_VERSION in header.bad_consumers:
            raise UnsupportedError(
                f"checkpoint needs a reader of version {header.min_consumer} (bad: "
                f"{list(header.bad_consumers)}); ckptio reads version {CONSUMER_VERSION}", path=path, key="")
        return header

    def encode(self) -> bytes:
        proto = pb.BundleHeaderProto(num_shards=self.num_shards,
                                     endianness=pb.BundleHeaderProto.BIG if self.big_endian else 0)
        proto.version.producer = self.producer
        proto.version.min_consumer = self.min_consumer
        proto.version.bad_consumers.extend(self.bad_consumers)
        return proto.SerializeToString()


@dataclass(frozen=True, slots=True)
class Entry:
    """One tensor's index entry. A sliced tensor's metadata entry has slices and no bytes."""

    dtype: int
    shape: tuple[int, ...]
    shard_id: int = 0
    offset: int = 0
    size: int = 0
    crc32c: int = 0  # masked, as stored
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
    def parse(value: bytes, *, path=None, key=None) -> "Entry":
        proto = pb.BundleEntryProto()
        try:
            proto.ParseFromString(value)
        except DecodeError:
            raise CorruptCheckpointError("entry is not a BundleEntryProto", path=path, key=key) from None
        if proto.shape.unknown_rank:
            raise CorruptCheckpointError("entry shape has unknown rank", path=path, key=key)
        shape = tuple(d.size for d in proto.shape.dim)
        entry = Entry(proto.dtype, shape, proto.shard_id, proto.offset, proto.size, proto.crc32c,
                      tuple(from_proto(s) for s in proto.slices))
        problem = entry.problem()
        if problem:
            raise CorruptCheckpointError(problem, path=path, key=key)
        return entry

    def problem(self) -> str | None:
        """Why this entry is structurally impossible (TF would abort on it), or None."""
        if len(self.shape) > MAX_RANK:
            return f"shape has rank {len(self.shape)}"
        n = 1
        for d in self.shape:
            if d < 0:
                return f"shape {list(self.shape)} has a negative dimension"
            n *= d
            if n > MAX_ELEMENTS:
                return f"shape {list(self.shape)} has too many elements"
        if self.offset < 0 or self.size < 0:
            return f"negative offset {self.offset} or size {self.size}"
        seen = set()
        for s in self.slices:
            why = s.check(self.shape)
            if why:
                return why
            if s in seen:
                return f"slice {s.spec()} is listed twice"
            seen.add(s)
        return None

    def data_problem(self) -> str | None:
        """Why this entry's bytes cannot be decoded, or None (checked before any read)."""
        if self.dtype == 0:
            return "dtype is DT_INVALID (0)"
        info = self.dtype_info
        if info is None:
            return f"unknown dtype enum {self.dtype}"
        if not self.slices and info.fixed_width and self.size != self.num_elements * info.itemsize:
            return (f"size {self.size} != {self.num_elements} elements x {info.itemsize} bytes "
                    f"for {info.name}{list(self.shape)}")
        return None

    def encode(self) -> bytes:
        """Serialize as TensorFlow does: shape and crc32c always present."""
        proto = pb.BundleEntryProto(dtype=self.dtype, shard_id=self.shard_id, offset=self.offset,
                                    size=self.size, crc32c=self.crc32c)
        proto.shape.SetInParent()
        for d in self.shape:
            proto.shape.dim.add().size = d
        for s in self.slices:
            to_proto(s, proto.slices.add())
        return proto.SerializeToString()
