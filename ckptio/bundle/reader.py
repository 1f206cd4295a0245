"""Read a V2 bundle: the .index table on open, data shards lazily, one range read per tensor."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from functools import partial

from ..errors import (
    ChecksumError,
    CkptioError,
    CorruptCheckpointError,
    MissingShardError,
    TensorNotFoundError,
    TruncatedError,
    UnsupportedError,
    WrongFileError,
)
from ..sstable import Table
from ..sstable.coding import crc32c, unmask
from ..store.base import Source, Store
from . import dtypes, naming, strings
from .entry import Entry, Header
from .locate import LFS_POINTER
from .slices import Slice, tiling_problem
from .slices import encode_key as slice_key
from .tensors import CHUNK, CheckpointReader


class BundleReader(CheckpointReader):
    """A V2 checkpoint. Opening reads the footer, the index block and the first data block."""

    format = "v2"
    checksums = True  # each entry's crc32c covers its bytes in the data shard
    header: Header

    def __init__(
        self,
        prefix: str,
        *,
        store: Store | None = None,
        open_source: Callable[[str], Source] | None = None,
        index_source: Source | None = None,
    ):
        # store: where the files are (local files by default); open_source, a callable path ->
        # Source, is the older way to say it, kept as an alias.
        self.prefix = prefix
        self.store = store = store or local_store()
        self._open_source = open_source or store.open
        self.index_source = index_source or self._open_source(naming.index_path(prefix))
        self.path = self.index_source.name
        try:
            self._open_index()
        except BaseException:
            if index_source is None:  # ours to close: a failed open must not leak the descriptor
                self.index_source.close()
            raise
        self._entries: dict[str, Entry] | None = None
        self._slices: dict[bytes, Entry] | None = None
        self._shards: dict[int, Source] = {}
        self._shards_lock = threading.Lock()  # rewrite threads open shards concurrently
        self._tiled: dict[str, Entry] = {}  # sliced tensors' metadata, once their slices were checked to tile them

    def _open_index(self) -> None:
        """Read the footer, index block and header."""
        # The index is read whole, in the table's order, some blocks twice: say so up front (a
        # remote index up to 16 MiB is then one request, kept; a local one a cheap fadvise).
        self.index_source.will_need([(0, self.index_source.size)])
        try:
            self.table = Table(self.index_source)
        except CorruptCheckpointError:
            if is_lfs_pointer(self.index_source):
                raise WrongFileError(
                    "this .index is a Git LFS pointer, not the file itself; run 'git lfs pull' to fetch it",
                    path=self.path,
                ) from None
            raise
        first = self.table.first()
        if first is None or first[0] != b"":
            raise CorruptCheckpointError('the first entry is not the bundle header (key "")', path=self.path)
        self.header = Header.parse(first[1], path=self.path)

    @property
    def copies_bytes(self) -> bool:
        return not self.header.big_endian  # the writer writes little-endian bundles

    @property
    def index_file(self) -> str:
        return self.index_source.name

    def stores_ranges(self, name: str, entry: Entry) -> bool:
        return True

    def files(self) -> list[tuple[str, Callable[[], Source]]]:
        out: list[tuple[str, Callable[[], Source]]] = [(self.index_source.name, lambda: self.index_source)]
        return out + [(self.shard_path(i), partial(self.shard, i)) for i in range(self.header.num_shards)]

    def sstables(self) -> list[Table]:
        return [self.table]

    @property
    def bytes_read(self) -> int:
        return self.index_source.bytes_read + sum(s.bytes_read for s in list(self._shards.values()))

    # -- index ---------------------------------------------------------------------------------

    def _load(self) -> None:
        entries, slices = {}, {}
        parse, path = Entry.parse, self.path
        for key, value in self.table:
            if not key:
                continue
            entry = parse(value, path=path, key=key)  # errors show bytes keys readably
            if key[0] == 0:
                slices[key] = entry
            else:
                entries[key.decode("utf-8", "surrogateescape")] = entry
        self._entries, self._slices = entries, slices

    def entries(self) -> dict[str, Entry]:
        """Every named entry (slice pieces hidden), parsing the whole index once."""
        if self._entries is None:
            self._load()
        assert self._entries is not None
        return self._entries

    def slice_entries(self) -> dict[bytes, Entry]:
        """Stored slice pieces by their OrderedCode key."""
        if self._slices is None:
            self._load()
        assert self._slices is not None
        return self._slices

    def entry(self, name: str) -> Entry:
        """One entry; a point lookup (one data block) unless the index is already loaded."""
        if self._entries is not None:
            try:
                return self._entries[name]
            except KeyError:
                raise TensorNotFoundError("no such tensor", path=self.path, key=name) from None
        value = self.table.get(naming.encode_key(name)) if name else None
        if value is None or name.startswith("\x00"):
            raise TensorNotFoundError("no such tensor", path=self.path, key=name)
        return Entry.parse(value, path=self.path, key=name)

    def slice_entry(self, name: str, s: Slice) -> Entry:
        """The entry of stored slice s of name, checked to agree with name's metadata entry."""
        meta = self._check_tiling(name)
        key = slice_key(name, s)
        if self._slices is not None:
            entry = self._slices.get(key)
        else:
            value = self.table.get(key)
            entry = None if value is None else Entry.parse(value, path=self.path, key=f"{name}[{s.spec()}]")
        if entry is None:
            raise CorruptCheckpointError(
                f"slice {s.spec()} is listed but its entry is missing", path=self.path, key=name
            )
        problem = meta.piece_problem(s, entry)
        if problem:
            raise CorruptCheckpointError(problem, path=self.path, key=name)
        return entry

    def read_slice(self, name: str, s: Slice, shape: tuple[int, ...] | None = None):
        """Decode stored slice s of name (slice_entry checks it holds that slice's dtype and shape)."""
        return self.read_entry(name, self.slice_entry(name, s))

    def _check_tiling(self, name: str) -> Entry:
        """name's metadata entry; refuse a sliced tensor whose slices overlap or leave holes, before
        anything is sized by it."""
        entry = self._tiled.get(name)
        if entry is not None:
            return entry
        entry = self.entry(name)
        problem = tiling_problem(entry.shape, entry.slices) if entry.slices else None
        if problem:
            raise CorruptCheckpointError(problem, path=self.path, key=name)
        self._tiled[name] = entry
        return entry

    # -- data ----------------------------------------------------------------------------------

    def shard_path(self, shard: int) -> str:
        return naming.data_path(self.prefix, shard, self.header.num_shards)

    def shard(self, shard: int) -> Source:
        """The data file of a shard, opened on first use."""
        src = self._shards.get(shard)
        if src is not None:
            return src
        if not 0 <= shard < self.header.num_shards:
            raise CorruptCheckpointError(
                f"shard_id {shard} but the header says {self.header.num_shards} shards", path=self.path
            )
        with self._shards_lock:  # two threads opening one shard would leak one of the descriptors
            src = self._shards.get(shard)
            if src is None:
                if not self._shards and self.header.num_shards > 1:
                    # A remote store then stats every shard in one round trip, not one each.
                    self.store.will_open([self.shard_path(i) for i in range(self.header.num_shards)])
                try:
                    src = self._open_source(self.shard_path(shard))
                except CkptioError as exc:
                    if isinstance(exc, FileNotFoundError):
                        raise MissingShardError("data shard is missing", path=self.shard_path(shard)) from None
                    raise
                self._shards[shard] = src
        return src

    def check_entry(self, name: str, entry: Entry) -> None:
        """Raise if the entry's bytes cannot be read as it claims (no I/O beyond a stat)."""
        if entry.dtype != 0 and entry.dtype_info is None:  # a dtype TF has and ckptio does not know
            raise UnsupportedError(f"unknown dtype enum {entry.dtype}", path=self.path, key=name)
        problem = entry.data_problem()
        if problem:
            raise CorruptCheckpointError(problem, path=self.path, key=name)
        if entry.dtype == dtypes.VARIANT and self.header.big_endian:
            raise UnsupportedError("variant tensors in big-endian bundles", path=self.path, key=name)
        src = self.shard(entry.shard_id)
        if entry.offset + entry.size > src.size:
            if is_lfs_pointer(src):
                raise WrongFileError(
                    "this data shard is a Git LFS pointer, not the file itself; run 'git lfs pull' to fetch it",
                    path=src.name,
                    key=name,
                )
            raise TruncatedError(
                f"bytes [{entry.offset}, {entry.offset + entry.size}) lie past the end of the {src.size}-byte shard",
                path=src.name,
                key=name,
                offset=entry.offset,
            )

    def _blame_lfs(self, entry: Entry) -> None:
        """After a failure: raise WrongFileError instead if the shard is a Git LFS pointer."""
        src = self._shards.get(entry.shard_id)
        if src is not None and is_lfs_pointer(src):
            raise WrongFileError(
                "this data shard is a Git LFS pointer, not the file itself; run 'git lfs pull' to fetch it",
                path=src.name,
            ) from None

    def iter_raw(
        self, name: str, entry: Entry, chunk: int = CHUNK, *, verify: bool = True, buffers=()
    ) -> Iterator[bytes]:
        """Stream an entry's stored bytes in chunks, checking its crc32c after the last one.

        With buffers (writable memoryviews of at least chunk bytes), chunk i is read into
        buffers[i % len(buffers)] and yielded as a view of it: nothing is allocated per chunk, and
        with two buffers a chunk stays valid while the next one is read.
        """
        try:
            yield from self._iter_raw(name, entry, chunk, verify, buffers)
        except CorruptCheckpointError:
            self._blame_lfs(entry)
            raise

    def _iter_raw(self, name: str, entry: Entry, chunk: int, verify: bool, buffers) -> Iterator[bytes]:
        self.check_entry(name, entry)
        if verify and entry.dtype in (dtypes.STRING, dtypes.VARIANT):
            # Their crc is not over the stored bytes (FORMAT §4.3, §4.4): check them whole.
            yield self.read_raw(name, entry)
            return
        src = self.shard(entry.shard_id)
        readinto = getattr(src, "readinto", None) if buffers else None
        crc, pos, end, i = 0, entry.offset, entry.offset + entry.size, 0
        while pos < end:
            n = min(chunk, end - pos)
            if readinto is not None:
                buffer = buffers[i % len(buffers)]
                i += 1
                got = readinto(pos, buffer[:n])
                if got != n:
                    raise TruncatedError(f"shard ends after {got} of {n} bytes", path=src.name, key=name, offset=pos)
                data = buffer[:n]
            else:
                data = src.read(pos, n, key=name)
            if verify:
                crc = crc32c(data, crc)
            pos += len(data)
            yield data
        if verify:
            self._check_crc(name, entry, crc)

    def read_raw(self, name: str, entry: Entry, *, verify: bool = True) -> bytes:
        """An entry's stored bytes in one positioned read, crc checked."""
        self.check_entry(name, entry)
        data = self.shard(entry.shard_id).read(entry.offset, entry.size, key=name)
        if verify:
            try:
                self._check_crc(name, entry, self._stored_crc(name, entry, data))
            except CorruptCheckpointError:
                self._blame_lfs(entry)
                raise
        return data

    def _stored_crc(self, name: str, entry: Entry, data: bytes) -> int:
        """The unmasked crc TensorFlow computes for an entry's bytes (per dtype)."""
        return stored_crc(
            entry, data, big_endian=self.header.big_endian, path=self.shard_path(entry.shard_id), key=name
        )

    def _check_crc(self, name: str, entry: Entry, crc: int) -> None:
        problem = crc_problem(entry, crc)
        if problem:
            raise ChecksumError(problem, path=self.shard_path(entry.shard_id), key=name, offset=entry.offset)

    def read_entry(self, name: str, entry: Entry, *, verify: bool = True):
        """Decode one unsliced entry into a numpy array."""
        try:
            return self._read_entry(name, entry, verify)
        except CorruptCheckpointError:
            self._blame_lfs(entry)
            raise

    def _read_entry(self, name: str, entry: Entry, verify: bool):
        import numpy as np

        info = dtypes.lookup(entry.dtype)
        if info is None:
            self.check_entry(name, entry)  # DT_INVALID is corrupt, other unknown enums unsupported
        if info is not None and info.name == "string":
            self.check_entry(name, entry)
            if entry.num_elements == 0 and entry.size == 0:  # TF writes no bytes at all for these
                return np.empty(entry.shape, dtype=object)
            data = self.shard(entry.shard_id).read(entry.offset, entry.size, key=name)
            elements, crc = strings.decode(
                data,
                entry.num_elements,
                big_endian=self.header.big_endian,
                path=self.shard_path(entry.shard_id),
                key=name,
                offset=entry.offset,
            )
            if verify:
                self._check_crc(name, entry, crc)
            return strings.to_array(elements, entry.shape)
        if info is None or not info.fixed_width:
            raise UnsupportedError(
                f"cannot decode {dtypes.name_of(entry.dtype)} tensors (bytes can still be copied)",
                path=self.path,
                key=name,
            )
        from .decode import from_bytes

        self.check_entry(name, entry)
        src = self.shard(entry.shard_id)
        buf = bytearray(entry.size)
        got = src.readinto(entry.offset, memoryview(buf))  # files fill buf in place, other sources copy once
        if got != entry.size:
            raise TruncatedError(f"read {got} of {entry.size} bytes", path=src.name, key=name, offset=entry.offset)
        if verify:
            self._check_crc(name, entry, crc32c(buf))
        return from_bytes(buf, info, entry.shape, big_endian=self.header.big_endian)

    def close(self) -> None:
        for src in self._shards.values():
            src.close()
        self._shards.clear()
        self.index_source.close()


def local_store() -> Store:
    """The default store: local files."""
    from ..store.local import LocalStore

    return LocalStore()


def is_lfs_pointer(src: Source) -> bool:
    """Whether a source holds a Git LFS pointer (asked only after something failed)."""
    n = len(LFS_POINTER)
    if not n <= src.size <= 1024:
        return False
    try:
        return src.read(0, n) == LFS_POINTER
    except CkptioError:
        return False


def stored_crc(entry: Entry, data: bytes, *, big_endian: bool = False, path=None, key=None) -> int:
    """The unmasked crc TensorFlow computes over an entry's stored bytes (per dtype, FORMAT §4)."""
    where = dict(path=path, key=key, offset=entry.offset)
    if entry.dtype == dtypes.STRING:
        if entry.num_elements == 0 and not data:
            return 0
        return strings.decode(data, entry.num_elements, big_endian=big_endian, **where)[1]
    if entry.dtype == dtypes.VARIANT:
        return strings.variant_crc(data, entry.num_elements, **where)
    return crc32c(data)


def crc_problem(entry: Entry, crc: int) -> str | None:
    """Why an entry's computed (unmasked) crc shows its bytes are not as written, or None."""
    if crc == unmask(entry.crc32c):
        return None
    return f"checksum does not match: stored {unmask(entry.crc32c):#010x}, computed {crc:#010x}"
