"""Checkpoint: a read-only Mapping from tensor names to lazy Tensors."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping

from .bundle import dtypes
from .bundle.locate import Located, locate
from .bundle.slices import Slice
from .bundle.tensors import assemble  # noqa: F401 - its old home (doctor.v1 and users import it from here)
from .errors import CorruptCheckpointError, TensorNotFoundError, UnsupportedError
from .store import ARCHIVE_SUFFIXES, Store  # noqa: F401 - ARCHIVE_SUFFIXES: its old home

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (type checkers honour the name)
if TYPE_CHECKING:  # the protobuf-backed modules load on first use, keeping `ckptio --help` fast
    from .bundle.entry import Entry
    from .bundle.tensors import CheckpointReader


VERIFY_CHUNK = 8 << 20  # bytes per read when a piece's crc32c is checked before ranged reads of it


class Tensor:
    """A tensor in a checkpoint; dtype, shape and nbytes cost no I/O, read() loads it."""

    __slots__ = ("name", "entry", "_ckpt")

    def __init__(self, ckpt: Checkpoint, name: str, entry: Entry):
        self._ckpt, self.name, self.entry = ckpt, name, entry

    @property
    def dtype(self):
        """numpy dtype (object for strings; ml_dtypes for bfloat16, float8, int4)."""
        info = self.entry.dtype_info
        if info is None:
            raise UnsupportedError(f"unknown dtype enum {self.entry.dtype}", key=self.name)
        return info.numpy()

    @property
    def dtype_name(self) -> str:
        return dtypes.name_of(self.entry.dtype)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.entry.shape

    @property
    def size(self) -> int:
        """Number of elements."""
        return self.entry.num_elements

    @property
    def nbytes(self) -> int:
        """Bytes the tensor occupies in the checkpoint (all slices)."""
        return self._ckpt._reader.stored_size(self.name, self.entry)

    @property
    def slices(self) -> tuple[Slice, ...]:
        return self.entry.slices

    def read(self):
        """The whole tensor as a numpy array, checksums verified."""
        return self._ckpt._read(self.name, self.entry)

    def read_slice(self, s: Slice):
        """One stored slice (as listed in .slices) without assembling the rest."""
        if s not in self.entry.slices:
            raise TensorNotFoundError(f"slice {s.spec()} is not stored", key=self.name)
        return self._ckpt._read_slice(self.name, self.entry, s)

    def read_rows(self, start: int, stop: int):
        """Rows [start, stop) along the first axis, reading only the stored rows they lie in.

        Unsliced: one ranged read; sliced: the overlapping rows of each slice that holds any. A crc32c
        covers a whole stored piece, so each piece is checked once, streamed, before a range of it is
        trusted. Pieces that cannot be read by range (see ranged_rows) are read whole and cut.
        """
        return self._ckpt._read_rows(self.name, self.entry, start, stop)

    @property
    def ranged_rows(self) -> bool:
        """True when read_rows reads only the rows asked for: byte ranges, fixed-width, rank >= 1, random access."""
        info = self.entry.dtype_info
        return (
            self._ckpt._reader.stores_ranges(self.name, self.entry)
            and not self._ckpt.sequential
            and info is not None
            and info.fixed_width
            and len(self.shape) >= 1
        )

    def iter_chunks(self, max_bytes: int = 64 << 20):
        """Yield consecutive pieces along the first axis, at most ~max_bytes each (fixed-width, unsliced).

        The checksum is verified as the bytes stream; a mismatch raises after the last piece.
        """
        return self._ckpt._iter_chunks(self.name, self.entry, max_bytes)

    def __repr__(self) -> str:
        return f"<Tensor {self.name!r} {self.dtype_name}{list(self.shape)}>"


class Checkpoint(Mapping):
    """An open checkpoint. Use as a context manager; keys are tensor names."""

    store: Store | None = None  # where the files are; None for checkpoints of other formats (ckptio.formats)

    def __init__(self, path, *, located: Located | None = None, store: Store | None = None, open_source=None):
        # open_source (a callable path -> Source) is the older way to give the store; kept as an alias.
        from .store import OpenerStore
        from .store.local import LocalStore

        finder: Store  # where the path is resolved: the old open_source took local paths
        if store is None and open_source is not None:
            store, finder = OpenerStore(open_source), LocalStore()
        elif store is None:
            store = finder = LocalStore()
        else:
            finder = store
        self.store = store
        self.located = located or locate(finder, os.fspath(path))
        from .bundle.readers import open_reader

        self._reader: CheckpointReader = open_reader(self.located, store)
        self.format = self.located.format
        self.prefix = self.located.prefix
        self.path = self._reader.path

    @property
    def reader(self) -> CheckpointReader:
        """The format's reader (bundle.tensors.CheckpointReader): entries, tensors, stored bytes, files."""
        return self._reader

    @property
    def sequential(self) -> bool:
        """True when the store reads cheaply only in increasing (shard, offset) order (an archive)."""
        return self.store is not None and not self.store.random_access

    # -- Mapping -------------------------------------------------------------------------------

    def __getitem__(self, name: str) -> Tensor:
        if not isinstance(name, str):
            raise TensorNotFoundError("tensor names are strings", key=repr(name))
        return Tensor(self, name, self._reader.entry(name))

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._reader.entries(), key=lambda n: n.encode("utf-8", "surrogateescape")))

    def __len__(self) -> int:
        return len(self._reader.entries())

    def __contains__(self, name) -> bool:
        return isinstance(name, str) and name in self._reader.entries()

    def entries(self) -> dict[str, Entry]:
        """Every named entry's metadata, loading the whole index once."""
        return self._reader.entries()

    @property
    def header(self):
        """The V2 bundle header, or None (V1 has none)."""
        return self._reader.header

    @property
    def num_shards(self) -> int:
        return self._reader.num_shards

    @property
    def object_graph_bytes(self) -> bytes | None:
        """The serialized TrackableObjectGraph of a TF2 checkpoint, or None."""
        from .bundle.naming import OBJECT_GRAPH_KEY

        if OBJECT_GRAPH_KEY not in self:
            return None
        value = self[OBJECT_GRAPH_KEY].read()
        return bytes(value.reshape(-1)[0]) if value.size == 1 else None

    @property
    def bytes_read(self) -> int:
        """Bytes read from disk so far (index and data)."""
        return self._reader.bytes_read

    def close(self) -> None:
        self._reader.close()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<ckptio.Checkpoint {self.format} {self.prefix!r}>"

    # -- reading -------------------------------------------------------------------------------

    def _read(self, name: str, entry: Entry):
        return self._reader.read_tensor(name, entry)

    def _read_slice(self, name: str, entry: Entry, s: Slice):
        return self._reader.read_slice(name, s, entry.shape)

    def _read_rows(self, name: str, entry: Entry, start: int, stop: int):
        import numpy as np

        shape = entry.shape
        if not shape or not 0 <= start <= stop <= shape[0]:
            raise IndexError(f"rows [{start}, {stop}) of {name!r} {list(shape)}")
        if not entry.slices:
            return self._piece_rows(name, entry, None, start, stop)
        checked = self.__dict__.setdefault("_tiled", set())
        if name not in checked:  # before allocating: untiled slices would leave np.empty garbage
            from .bundle.slices import tiling_problem

            problem = tiling_problem(shape, entry.slices)
            if problem:
                raise CorruptCheckpointError(problem, path=self.path, key=name)
            checked.add(name)
        out = np.empty((stop - start,) + shape[1:], dtype=Tensor(self, name, entry).dtype)
        for s in entry.slices:
            bounds = s.bounds(shape)
            lo, hi = max(start, bounds[0][0]), min(stop, bounds[0][1])
            if lo < hi:
                index = (slice(lo - start, hi - start),) + tuple(slice(a, b) for a, b in bounds[1:])
                out[index] = self._piece_rows(name, entry, s, lo - bounds[0][0], hi - bounds[0][0])
        return out

    def _piece_rows(self, name: str, entry: Entry, s: Slice | None, lo: int, hi: int):
        """Rows [lo, hi) of one stored piece: the whole tensor (s None) or slice s."""
        if not Tensor(self, name, entry).ranged_rows:
            return (self._read(name, entry) if s is None else self._read_slice(name, entry, s))[lo:hi]
        from .bundle.decode import from_bytes

        piece = entry if s is None else self._reader.slice_entry(name, s)
        rows = piece.shape[0]
        row_bytes = piece.size // rows if rows else 0
        if row_bytes * rows != piece.size:
            raise CorruptCheckpointError(f"{piece.size} bytes do not split into {rows} rows", path=self.path, key=name)
        verified = self.__dict__.setdefault("_verified", set())
        if self._reader.checksums and (piece.shard_id, piece.offset) not in verified:
            # the crc covers the whole piece: stream it once
            for _ in self._reader.iter_raw(name, piece, VERIFY_CHUNK):
                pass
            verified.add((piece.shard_id, piece.offset))
        data = self._reader.shard(piece.shard_id).read(piece.offset + lo * row_bytes, (hi - lo) * row_bytes, key=name)
        big = self._reader.big_endian
        return from_bytes(data, dtypes.require(piece.dtype), (hi - lo,) + piece.shape[1:], big_endian=big)

    def _iter_chunks(self, name: str, entry: Entry, max_bytes: int):
        info = entry.dtype_info
        if (
            entry.slices
            or not self._reader.stores_ranges(name, entry)
            or info is None
            or not info.fixed_width
            or not entry.shape
        ):
            yield self._read(name, entry)
            return
        from .bundle.decode import from_bytes

        shape = entry.shape
        rows = shape[0] if shape else 1
        row_bytes = entry.size // rows if rows else 0
        per = max(1, max_bytes // row_bytes) if row_bytes else max(rows, 1)
        buffered = b""
        big = self._reader.big_endian
        for data in self._reader.iter_raw(name, entry, chunk=per * row_bytes if row_bytes else 1 << 20):
            buffered += data
            n = len(buffered) // row_bytes if row_bytes else 0
            if n:
                yield from_bytes(buffered[: n * row_bytes], info, (n, *shape[1:]), big_endian=big)
                buffered = buffered[n * row_bytes :]
        if not shape or rows == 0 or row_bytes == 0:
            yield from_bytes(buffered, info, shape, big_endian=big)
