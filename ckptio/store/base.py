"""The store interface: where bytes live (files, sizes, exact ranged reads, listing, atomic output),
knowing nothing about checkpoints. Format layers (sstable, bundle) read through a Source."""

from __future__ import annotations

import builtins
import threading
from collections.abc import Iterable, Iterator

from ..errors import TruncatedError, UnsupportedError

Range = tuple[int, int]  # (offset, length)
COPY_CHUNK = 8 << 20  # bytes per read where a copy goes through this process


class Source:
    """One file opened for reading by exact byte ranges; subclasses implement _pread.

    `sequential` sources (an archive member in a compressed stream) serve reads only cheaply in
    increasing offset order; `bytes_read` counts what was really fetched from the medium.
    """

    name: str
    size: int
    sequential = False

    def __init__(self) -> None:
        self.bytes_read = 0
        self._lock = threading.Lock()

    def read(self, offset: int, length: int, *, key=None) -> bytes:
        """Return exactly `length` bytes at `offset`, or raise TruncatedError."""
        if offset < 0 or length < 0 or offset + length > self.size:
            raise TruncatedError(
                f"needs bytes [{offset}, {offset + length}) but the file has {self.size}",
                path=self.name,
                key=key,
                offset=offset,
            )
        data = self._pread(offset, length)
        self._count(len(data))
        if len(data) != length:
            raise TruncatedError(f"read {len(data)} of {length} bytes", path=self.name, key=key, offset=offset)
        return data

    def readinto(self, offset: int, buf: memoryview) -> int:
        """Fill buf from offset (fewer bytes only at the end of the file); return the count."""
        n = min(len(buf), max(0, self.size - offset))
        if n:
            buf[:n] = self.read(offset, n)
        return n

    def read_ranges(self, ranges: Iterable[Range], *, key=None) -> Iterator[bytes]:
        """The bytes of each (offset, length) in order; stores with costly requests fetch ahead and coalesce."""
        for offset, length in ranges:
            yield self.read(offset, length, key=key)

    def random_reads(self) -> None:
        """A hint: reads skip around (a strip drops the tensors in between); do not read ahead of them."""

    def will_need(self, ranges: Iterable[Range]) -> None:
        """A hint: these ranges are read next, in this order (local files advise the kernel, remote
        ones fetch ahead, coalesced and in parallel); the default does nothing."""

    def fileno(self) -> int | None:
        """An OS file descriptor for zero-copy paths, or None."""
        return None

    def close(self) -> None:
        pass

    def _count(self, n: int) -> None:
        with self._lock:
            self.bytes_read += n

    def _pread(self, offset: int, length: int) -> bytes:
        raise NotImplementedError


def copy_source(source: Source, write, progress=None) -> int:
    """Pass a Source's bytes to write(), COPY_CHUNK at a time (progress(n) after each); returns the size."""
    pos = 0
    while pos < source.size:
        data = source.read(pos, min(COPY_CHUNK, source.size - pos))
        write(data)
        pos += len(data)
        if progress:
            progress(len(data))
    return pos


class Sink:
    """One output file being written, in order (appended to); a `seekable` one may also be written out of order."""

    name: str
    seekable = False  # True where seek() moves where the next write goes (a local file); an upload is a stream

    def seek(self, offset: int) -> None:
        """Write next at offset (a file filled in another order than its layout); only where `seekable`."""
        raise UnsupportedError("this output is written front to back and cannot seek", path=self.name, offset=offset)

    def write(self, data) -> None:
        raise NotImplementedError

    def reserve(self, nbytes: int) -> bool:
        """Set nbytes of room aside for this file up front (a full disk fails here); False where the
        store cannot (it then finds room as the file grows)."""
        return False

    def truncate(self, size: int) -> None:
        """Give back room reserved past size (the file's length becomes size)."""

    def copy_from(self, source: Source, offset: int, size: int, *, kernel_only: bool = False) -> bool:
        """Append source[offset:offset+size]; True when the bytes never passed through this process
        (a kernel copy). kernel_only: copy only that way, else write nothing and return False (the
        caller then copies through its own buffer, checking the bytes on the way)."""
        if kernel_only:
            return False
        pos, end = offset, offset + size
        while pos < end:
            n = min(COPY_CHUNK, end - pos)
            self.write(source.read(pos, n))
            pos += n
        return False

    def fileno(self) -> int | None:
        """An OS file descriptor (a kernel copy writes to it), or None."""
        return None

    def close(self) -> None:
        pass


class Output:
    """Files written under temporary names and made visible together: commit() in creation order
    (callers create data first and the index last), or abort() leaving nothing behind.

    A writer claims its output first (claim: a second writer of it is refused), names what it
    replaces (replace), creates its files, then commits or aborts; either gives up the claim
    (release, after whatever the writer does once its files are visible).
    """

    def __init__(self) -> None:
        self._replacing: list[str] = []

    def claim(self, path: str) -> None:
        """Hold path for this writer until release() or abort() (OutputBusyError if another holds it)."""

    def release(self) -> None:
        """Give up the claim (after commit, or through abort)."""

    def replace(self, paths: Iterable[str]) -> None:
        """These existing files are replaced: removed before the output becomes visible (where files
        are visible as they are written, at once)."""
        self._replacing += paths

    def create(self, path: str) -> Sink:
        raise NotImplementedError

    def commit(self, *, remove_first: Iterable[str] = (), fsync: bool = False, no_replace: Iterable[str] = ()) -> None:
        """Make every file visible in creation order, after removing remove_first (and what replace()
        named); fsync: durably, where the store can; a final path in no_replace that exists by now
        (another writer's) is an OutputExistsError and nothing is committed."""
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def put(self, path: str, source: Source, progress=None) -> int:
        """Create path with a Source's bytes; returns how many."""
        sink = self.create(path)
        size = copy_source(source, sink.write, progress)
        sink.close()
        return size

    def replacing(self, remove_first: Iterable[str] = ()) -> list[str]:
        """What commit removes first: remove_first and what replace() named."""
        return [*self._replacing, *remove_first]


class Store:
    """A namespace of files named by '/'-separated paths: a local disk, an fsspec URL, an archive, memory.

    `random_access` is False where a read out of order costs a pass over the medium (archives).
    """

    name: str = "<store>"
    random_access = True
    # False where nothing can be added once an output is committed (an archive is packed whole):
    # a `checkpoint` state file is then not written beside the output.
    adds_after_commit = True

    def open(self, path: str) -> Source:
        """Open a regular file for ranged reads; CheckpointNotFoundError if absent."""
        raise NotImplementedError

    def size(self, path: str) -> int | None:
        """A regular file's size, or None when there is no such file (directories included)."""
        raise NotImplementedError

    def is_file(self, path: str) -> bool:
        return self.size(path) is not None

    def will_open(self, paths: Iterable[str]) -> None:
        """A hint: these files are opened soon (a remote store asks for all their sizes at once)."""

    def is_dir(self, path: str) -> bool:
        raise NotImplementedError

    def exists(self, path: str) -> bool:
        """Whether anything is at path: a regular file, a directory, or something odd (a FIFO ...)."""
        return self.size(path) is not None or self.file_kind(path) is not None or self.is_dir(path)

    def list(self, directory: str) -> list[str]:
        """Names (not paths) in a directory, sorted; [] where the store cannot list."""
        raise NotImplementedError

    def glob(self, pattern: str) -> builtins.list[str] | None:
        """Paths matching a shell pattern, sorted; None where the store takes no patterns."""
        return None

    def file_kind(self, path: str) -> str | None:
        """What path is when it is neither a regular file nor a directory ("a FIFO" ...), else None."""
        return None

    def same_path(self, a: str, b: str) -> bool:
        """Whether two paths name one file (the local store also sees through symlinks and '..')."""
        return _norm(a) == _norm(b)

    def isabs(self, path: str) -> bool:
        """Whether a path (as a state file stores it) names its file without a directory to join it to."""
        return path.startswith("/")

    def output(self) -> Output:
        """A new atomic output on this store."""
        raise NotImplementedError

    def forget(self, path: str | None = None) -> None:
        """Drop what the store remembers about path (all paths: None) after writing there."""

    def remove(self, path: str) -> None:
        """Delete a file; nothing happens when there is none."""
        raise UnsupportedError("this store cannot delete files", path=path)

    def move(self, src: str, dst: str) -> None:
        """Rename a file over dst (object stores copy on the server, then delete)."""
        raise UnsupportedError("this store cannot rename files", path=src)

    def remove_tree(self, directory: str) -> None:
        """Delete a directory and everything under it; nothing happens when there is none."""
        raise UnsupportedError("this store cannot delete directories", path=directory)

    def read_file(self, path: str) -> bytes:
        """A whole (small) file's bytes."""
        source = self.open(path)
        try:
            return source.read(0, source.size)
        finally:
            source.close()

    def write_file(self, path: str, data: bytes) -> None:
        """Put one (small) file in place atomically."""
        output = self.output()
        try:
            sink = output.create(path)
            sink.write(data)
            sink.close()
            output.commit()
        except BaseException:
            output.abort()
            raise

    def close(self) -> None:
        pass

    # '/'-path grammar; a local store keeps its OS's
    def join(self, directory: str, name: str) -> str:
        return directory.rstrip("/") + "/" + name if directory else name

    def dirname(self, path: str) -> str:
        return path.rstrip("/").rpartition("/")[0]

    def basename(self, path: str) -> str:
        return path.rstrip("/").rpartition("/")[2]


def _norm(path: str) -> str:
    """A '/'-path without empty or '.' parts and trailing '/' (the scheme of a URL kept whole)."""
    scheme, sep, rest = path.rpartition("://")
    return scheme + sep + "/".join(p for p in rest.split("/") if p not in ("", "."))


__all__ = ["Range", "Source", "Sink", "Output", "Store"]
