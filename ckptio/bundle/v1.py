"""Read V1 checkpoints: one table (or -SSSSS-of-NNNNN files) of SavedTensorSlices, values inline.

    key ""                          -> SavedTensorSlices{meta: [SavedSliceMeta{name, shape, type, slice*}]}
    key EncodeTensorNameSlice(n, s) -> SavedTensorSlices{data: SavedSlice{name, slice, data: TensorProto}}
The TensorProto carries only its typed value list (float_val, int_val, ...), no dtype or shape.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace

from .._proto import saved_tensor_slice_pb2 as pb
from ..errors import CorruptCheckpointError, TensorNotFoundError, UnsupportedError, WrongFileError
from ..sstable import Table
from ..store.base import Source, Store
from . import dtypes
from .entry import CONSUMER_VERSION, Entry, parse_proto
from .slices import Slice, encode_key, from_proto, tiling_problem
from .tensors import CheckpointReader


class V1Reader(CheckpointReader):
    """A V1 checkpoint spread over one or more table files.

    Values sit inline in the tables as protobufs: no entry is a byte range (stores_ranges is False),
    none has a crc32c of its own (the table's block CRCs cover them), and there is no header.
    """

    format = "v1"

    def __init__(
        self, paths: list[str], *, store: Store | None = None, open_source: Callable[[str], Source] | None = None
    ):
        if open_source is None:
            from .reader import local_store

            open_source = (store or local_store()).open
        self.paths = list(paths)
        self.path = self.paths[0]
        self.tables: list[Table] = []
        self._entries: dict[str, Entry] = {}
        self._stored: dict[str, tuple[Slice, ...]] = {}  # every slice stored, full ones included
        self._file_of: dict[bytes, int] = {}
        self._tiled: set[str] = set()
        try:
            for p in self.paths:
                source = open_source(p)
                try:
                    source.will_need([(0, source.size)])  # values sit inside the table: all of it is read
                    self.tables.append(Table(source))
                except BaseException:
                    source.close()
                    raise
            for i, table in enumerate(self.tables):
                self._read_meta(i, table)
        except BaseException:
            self.close()  # a failed open must not leak the files opened so far
            raise
        # V1 stores even whole tensors as one full slice; show those as unsliced, like V2.
        for name, entry in self._entries.items():
            stored = self._stored[name]
            if len(stored) == 1 and stored[0].is_full(entry.shape):
                self._entries[name] = replace(entry, slices=())

    def _read_meta(self, i: int, table: Table) -> None:
        path = table.source.name
        first = table.first()
        if first is None or first[0] != b"":
            raise CorruptCheckpointError('V1 table has no metadata entry (key "")', path=path)
        if first[1][:1] == b"\x08":
            # Field 1 as a varint: BundleHeaderProto.num_shards, never SavedTensorSlices.meta (a message).
            # Parsed as V1 it would read as a checkpoint of no tensors.
            raise WrongFileError(
                "this is a V2 .index file (its first entry is a bundle header), not a V1 "
                "checkpoint; pass its prefix P, with the file named P.index beside P.data-*",
                path=path,
            )
        sts = parse_slices(first[1])
        if sts is None:
            raise CorruptCheckpointError("metadata entry is not a SavedTensorSlices", path=path, key="")
        versions = sts.meta.versions
        if versions.min_consumer > CONSUMER_VERSION or CONSUMER_VERSION in versions.bad_consumers:
            raise UnsupportedError(f"V1 checkpoint needs reader version {versions.min_consumer}", path=path, key="")
        for name, dtype, shape, slices in declared(sts):
            old = self._entries.get(name)
            if old is not None:
                old = replace(old, slices=self._stored[name])
                if old.dtype != dtype or old.shape != shape:
                    raise CorruptCheckpointError(
                        "tensor declared with different dtype or shape in two files", path=path, key=name
                    )
                slices = old.slices + slices
            entry = Entry(dtype, shape, i, 0, _estimate_size(dtype, shape), 0, slices)
            problem = entry.problem()
            if problem:
                raise CorruptCheckpointError(problem, path=path, key=name)
            self._entries[name] = entry
            self._stored[name] = slices
            for s in slices[len(old.slices) if old else 0 :]:
                self._file_of[encode_key(name, s)] = i

    def entries(self) -> dict[str, Entry]:
        return self._entries

    def entry(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except KeyError:
            raise TensorNotFoundError("no such tensor", path=self.path, key=name) from None

    @property
    def num_shards(self) -> int:
        return len(self.tables)

    def slice_entry(self, name: str, s: Slice) -> Entry:
        """Stored slice s of name as an entry of its own: dtype, the slice's shape, its file, its size
        as decoded (a V1 value's size in the table is that of its protobuf)."""
        entry = self._check_tiling(name)
        if s not in self._stored[name]:
            raise TensorNotFoundError(f"slice {s.spec()} is not stored", path=self.path, key=name)
        shape = s.shape(entry.shape)
        file = self._file_of.get(encode_key(name, s), 0)
        return Entry(entry.dtype, shape, file, 0, _estimate_size(entry.dtype, shape), 0, ())

    def stored_size(self, name: str, entry: Entry) -> int:
        return entry.size  # decoded: the values' size in the table is their protobuf's

    def files(self) -> list[tuple[str, Callable[[], Source]]]:
        return [(t.source.name, _source_of(t)) for t in self.tables]

    def sstables(self) -> list[Table]:
        return list(self.tables)

    @property
    def bytes_read(self) -> int:
        return sum(t.source.bytes_read for t in self.tables)

    def read_entry(self, name: str, entry: Entry, *, verify: bool = True):
        """Decode a tensor stored whole (as one full slice); the table's block CRCs are always checked."""
        stored = self._stored.get(name)
        if not stored:  # TF's reader finds no data for it either
            raise CorruptCheckpointError(
                f"tensor of shape {list(entry.shape)} lists no stored slice (its values are missing)",
                path=self.path,
                key=name,
            )
        return self.read_slice(name, stored[0], entry.shape)

    def _check_tiling(self, name: str) -> Entry:
        """name's entry; overlapping or missing slices are refused before anything is sized by them."""
        entry = self.entry(name)
        if name not in self._tiled:
            problem = tiling_problem(entry.shape, self._stored[name])
            if problem:
                raise CorruptCheckpointError(problem, path=self.path, key=name)
            self._tiled.add(name)
        return entry

    def read_slice(self, name: str, s: Slice, shape: tuple[int, ...] | None = None):
        """Decode the stored slice s of tensor name (whose full shape is shape, its entry's if None)."""
        entry = self._check_tiling(name)
        shape = entry.shape if shape is None else shape
        key = encode_key(name, s if shape else Slice(()))
        i = self._file_of.get(encode_key(name, s), 0)
        table = self.tables[i]
        value = table.get(key)
        if value is None:
            raise CorruptCheckpointError(
                f"slice {s.spec() or '(scalar)'} is listed but not stored", path=table.source.name, key=name
            )
        return tensor_proto_to_array(
            slice_data(value, name, path=table.source.name),
            entry.dtype,
            s.shape(shape),
            path=table.source.name,
            key=name,
        )

    def close(self) -> None:
        for t in self.tables:
            t.source.close()


def _source_of(table: Table) -> Callable[[], Source]:
    return lambda: table.source


def parse_slices(value: bytes):
    """The SavedTensorSlices proto a V1 table value holds, or None if it is not one."""
    sts = pb.SavedTensorSlices()
    return sts if parse_proto(sts, value) else None


def declared(sts) -> Iterator[tuple[str, int, tuple[int, ...], tuple[Slice, ...]]]:
    """(name, dtype, shape, stored slices) of every tensor a V1 metadata entry declares."""
    for meta in sts.meta.tensor:
        yield meta.name, meta.type, tuple(d.size for d in meta.shape.dim), tuple(from_proto(s) for s in meta.slice)


def slice_data(value: bytes, name: str, *, path=None):
    """The TensorProto of one stored slice of tensor name, from its V1 table value."""
    sts = parse_slices(value)
    if sts is None:
        raise CorruptCheckpointError("slice entry is not a SavedTensorSlices", path=path, key=name)
    if sts.data.name != name:
        raise CorruptCheckpointError(f"slice entry names {sts.data.name!r}", path=path, key=name)
    return sts.data.data


def _estimate_size(dtype: int, shape: tuple[int, ...]) -> int:
    info = dtypes.lookup(dtype)
    n = 1
    for d in shape:
        n *= max(d, 0)
    return n * info.itemsize if info and info.fixed_width else 0


# dtype name -> TensorProto field holding its values
_FIELDS = {
    "float32": "float_val",
    "float64": "double_val",
    "int64": "int64_val",
    "bool": "bool_val",
    "string": "string_val",
    "complex64": "scomplex_val",
    "complex128": "dcomplex_val",
    "float16": "half_val",
    "bfloat16": "half_val",
    "uint32": "uint32_val",
    "uint64": "uint64_val",
    "int32": "int_val",
    "uint8": "int_val",
    "int8": "int_val",
    "int16": "int_val",
    "uint16": "int_val",
    "qint8": "int_val",
    "quint8": "int_val",
    "qint32": "int_val",
    "qint16": "int_val",
    "quint16": "int_val",
}


def tensor_proto_to_array(proto, dtype: int, shape: tuple[int, ...], *, path=None, key=None):
    """Decode a V1 TensorProto's typed values into an array of shape."""
    import numpy as np

    info = dtypes.lookup(dtype)
    if info is None or info.numpy_name is None:
        raise UnsupportedError(f"cannot decode {dtypes.name_of(dtype)} in a V1 checkpoint", path=path, key=key)
    n = 1
    for d in shape:
        n *= d
    dt = np.dtype(object) if info.name == "string" else info.numpy()
    if proto.tensor_content:
        from .decode import from_bytes

        if len(proto.tensor_content) != n * info.itemsize:
            raise CorruptCheckpointError("tensor_content size does not match the slice", path=path, key=key)
        return from_bytes(bytes(proto.tensor_content), info, shape).copy()
    if info.name.startswith("float8"):
        raw = bytes(proto.float8_val)
        if len(raw) != n:
            raise CorruptCheckpointError(f"{len(raw)} values stored for {n} elements", path=path, key=key)
        return np.frombuffer(raw, dt).reshape(shape).copy()
    field = _FIELDS.get(info.name)
    if field is None:
        raise UnsupportedError(f"cannot decode {info.name} in a V1 checkpoint", path=path, key=key)
    values = getattr(proto, field)
    per = 2 if info.name.startswith("complex") else 1
    if len(values) != n * per:
        raise CorruptCheckpointError(f"{len(values) // per} values stored for {n} elements", path=path, key=key)
    if info.name == "string":
        arr = np.empty(n, dtype=object)
        arr[:] = list(values)
        return arr.reshape(shape)
    if info.name in ("float16", "bfloat16"):
        # half_val holds the raw 16-bit patterns; a larger value is not one.
        if n and not 0 <= min(values) <= max(values) <= 0xFFFF:
            raise CorruptCheckpointError("half_val holds a value that is not 16 bits", path=path, key=key)
        return np.array(values, dtype=np.uint16).view(dt).reshape(shape)
    if per == 2:
        part = np.float32 if info.name == "complex64" else np.float64
        return np.array(values, dtype=part).view(dt).reshape(shape)
    return np.array(values).astype(dt).reshape(shape) if n else np.empty(shape, dt)
