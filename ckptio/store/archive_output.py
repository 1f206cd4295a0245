"""Writing a .tar.zst through the Output interface: members staged as files, packed commit-file-first on commit.

A reader of an archive streams it forward, so the member it needs first (a bundle's .index, which
the writer creates last) must come first. Members are therefore written to staged files (beside
the archive, in a `.ckptio-pack-<pid>-<token>` directory a later writer sweeps if this one is
killed; in a local temp directory when the archive goes to a URL), and commit() packs them, the
last one created first and the others in creation order, into one zstd-compressed pax tar written
through the parent store's own output (temp name and rename, or one PUT).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterable

from ..errors import CheckpointNotFoundError, WriteError
from .base import Output, Sink, Source, Store
from .local import FileSource, LocalSink, LocalStore

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

COPY_CHUNK = 4 << 20  # bytes per read while packing
DEFAULT_LEVEL = 3


class PackingStore(Store):
    """An archive being written, as a store: '<archive>/<member>' paths are its members, the rest the parent's.

    No member exists before commit; asked about one, the store answers for the archive itself,
    since committing replaces it whole (so an existing archive is refused unless forced).
    `packed` is (member names, bytes in, bytes out) of the last commit.
    """

    random_access = False

    def __init__(self, parent: Store, archive: str, *, level: int = DEFAULT_LEVEL, threads: int = -1) -> None:
        self.parent, self.archive = parent, archive
        self.name = archive
        self.level, self.threads = level, threads
        self.packed: tuple[tuple[str, ...], int, int] | None = None

    def member_name(self, path: str) -> str | None:
        prefix = self.archive + "/"
        return path[len(prefix) :] if path.startswith(prefix) else None

    def open(self, path: str) -> Source:
        if self.member_name(path) is not None:
            raise CheckpointNotFoundError("no such member in the archive being written", path=path)
        return self.parent.open(path)

    def size(self, path: str) -> int | None:
        return None if self.member_name(path) is not None else self.parent.size(path)

    def exists(self, path: str) -> bool:
        return self.parent.exists(self.archive if self.member_name(path) is not None else path)

    def is_dir(self, path: str) -> bool:
        return path.rstrip("/") != self.archive and self.member_name(path) is None and self.parent.is_dir(path)

    def list(self, directory: str) -> list[str]:
        inside = directory.rstrip("/") == self.archive or self.member_name(directory) is not None
        return [] if inside else self.parent.list(directory)

    def file_kind(self, path: str) -> str | None:
        return None if self.member_name(path) is not None else self.parent.file_kind(path)

    def same_path(self, a: str, b: str) -> bool:
        return a == b if self.member_name(a) is not None else self.parent.same_path(a, b)

    def remove(self, path: str) -> None:
        if self.member_name(path) is None:  # members go with the archive they were in
            self.parent.remove(path)

    def output(self) -> PackingOutput:
        return PackingOutput(self)


class PackingOutput(Output):
    """Members staged as local files (zero-copy writes there), packed into the archive on commit."""

    def __init__(self, store: PackingStore) -> None:
        super().__init__()
        self.store = store
        self._parent: Output = store.parent.output()
        self._staging: str | None = None
        self._sinks: list[tuple[str, str, LocalSink]] = []  # (member name, staged path, sink)

    def claim(self, path: str) -> None:
        self._parent.claim(self.store.archive)

    def release(self) -> None:
        self._parent.release()

    def replace(self, paths: Iterable[str]) -> None:
        """Members are replaced with their archive, by the commit itself: nothing to remove first."""
        self._replacing += [p for p in paths if self.store.member_name(p) is None]

    def _staging_dir(self) -> str:
        if self._staging is None:
            from ..output import remove_stale_temps, staging_dir

            if isinstance(self.store.parent, LocalStore):
                # Beside the archive (one filesystem), named after this process: a later writer
                # there removes it if this one is killed (output.remove_stale_temps).
                directory = os.path.dirname(os.path.abspath(self.store.archive))
                remove_stale_temps(directory)
                self._staging = staging_dir(directory)
            else:  # an archive going to a URL: its members wait on this machine
                import tempfile

                self._staging = tempfile.mkdtemp(prefix=".ckptio-pack-")
        return self._staging

    def create(self, path: str) -> Sink:
        member = self.store.member_name(path)
        if member is None or not member or member.startswith("/") or ".." in member.split("/"):
            raise WriteError("not a member path of this archive", path=path)
        staged = os.path.join(self._staging_dir(), *member.split("/"))
        try:
            os.makedirs(os.path.dirname(staged), exist_ok=True)
            fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as exc:
            raise WriteError(f"cannot stage a member: {exc.strerror or exc}", path=path) from None
        sink = LocalSink(path, staged, fd)
        self._sinks.append((member, staged, sink))
        return sink

    def commit(self, *, remove_first: Iterable[str] = (), fsync: bool = False, no_replace: Iterable[str] = ()) -> None:
        """Pack the staged members (the last one created first) into the archive and commit it."""
        keep_old = any(self.store.member_name(p) is not None or p == self.store.archive for p in no_replace)
        opened: list[Source] = []
        try:
            for _, _, sink in self._sinks:
                sink.close()
            order = self._sinks[-1:] + self._sinks[:-1]
            members = [(name, _opener(staged, opened)) for name, staged, _ in order]
            out = _SinkFile(self._parent.create(self.store.archive))
            try:
                bytes_in = write_archive(out, members, self.store.level, self.store.threads)
            finally:
                for source in opened:
                    source.close()
            out.sink.close()
            self._parent.commit(
                remove_first=self.replacing(remove_first),
                fsync=fsync,
                no_replace=(self.store.archive,) if keep_old else (),
            )
        except BaseException:
            self.abort()
            raise
        self.store.packed = (tuple(name for name, _ in members), bytes_in, out.n)
        self.store.parent.forget(self.store.archive)
        self._remove_staging()

    def abort(self) -> None:
        for _, _, sink in self._sinks:
            try:
                sink.close()
            except OSError:
                pass
        self._sinks = []
        try:
            self._parent.abort()
        finally:
            self._remove_staging()

    def _remove_staging(self) -> None:
        self._sinks = []
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None


def _opener(path: str, opened: list[Source]) -> Callable[[], Source]:
    def open_staged() -> Source:
        source = FileSource(path)
        opened.append(source)
        return source

    return open_staged


class _SinkFile:
    """A Sink as the file object the compressor writes to; counts the bytes."""

    def __init__(self, sink: Sink) -> None:
        self.sink, self.n = sink, 0

    def write(self, data) -> int:
        self.sink.write(data)
        n = memoryview(data).nbytes
        self.n += n
        return n

    def flush(self) -> None:
        pass


def write_archive(f, members, level: int, threads: int, progress=None) -> int:
    """Write (name, open) members as a pax tar (stdlib tarfile, forward only) into a zstd stream on f;
    open() gives the member's Source, opened (and closed) in turn. Returns the bytes in."""
    import tarfile

    import zstandard

    try:
        cctx = zstandard.ZstdCompressor(level=level, threads=threads, write_checksum=True)
    except zstandard.ZstdError as exc:
        raise WriteError(f"bad compression settings (level {level}, threads {threads}): {exc}") from None
    total = 0
    # Not stream mode ("w|"): its buffer copies every byte twice more (a third slower on incompressible
    # shards); "w" on a forward-only writer never seeks either, it only asks tell() once at the start.
    with (
        cctx.stream_writer(f, closefd=False, write_size=1 << 20) as zw,
        tarfile.open(fileobj=_forward(zw), mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        # Read each member COPY_CHUNK bytes at a time (tarfile's default is 16 KiB); typeshed omits the attribute.
        tar.copybufsize = COPY_CHUNK  # type: ignore[attr-defined]
        for name, open_source in members:
            source = open_source()
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = source.size, mtime_of(source), 0o644
            tar.addfile(info, _SourceFile(source, progress))
            total += source.size
    return total


def mtime_of(source: Source) -> int:
    """A local file's modification time, else now."""
    fd = source.fileno()
    try:
        return int(os.fstat(fd).st_mtime) if fd is not None else int(time.time())
    except OSError:
        return int(time.time())


class _Forward:
    """The tar stream going into the compressor: write() passes through, tell() is the bytes so far."""

    def __init__(self, f):
        self.f, self.n = f, 0

    def write(self, data) -> int:
        self.f.write(data)
        self.n += len(data)
        return len(data)

    def tell(self) -> int:
        return self.n


def _forward(zw) -> Any:
    """zw as the file object tarfile takes (typeshed's protocol also asks for read, seek and close, never called in "w")."""
    return _Forward(zw)


class _SourceFile:
    """A Source read front to back through read(n), the one call tarfile.addfile makes on its file object."""

    def __init__(self, source: Source, progress=None):
        self.source, self.progress, self.pos = source, progress, 0

    def read(self, n: int = -1) -> bytes:
        left = self.source.size - self.pos
        data = self.source.read(self.pos, left if n < 0 else min(n, left))
        self.pos += len(data)
        if self.progress and data:
            self.progress(len(data))
        return data


__all__ = ["PackingStore", "PackingOutput", "write_archive", "mtime_of"]
