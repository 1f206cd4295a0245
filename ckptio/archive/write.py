"""Write a checkpoint into one .tar.zst (.index first, then the data shards), or rewrite straight into one."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from ..checkpoint import Checkpoint
from ..errors import OutputExistsError, Remedy, WriteError
from ..io import Source
from ..output import AtomicFiles, OutputClaim, interrupts_deferred, make_dirs
from ..store.archive_output import COPY_CHUNK, DEFAULT_LEVEL, PackingStore, write_archive  # noqa: F401 (COPY_CHUNK: its old home)

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (type checkers honour the name)
if TYPE_CHECKING:
    from typing import Any


@dataclass(frozen=True, slots=True)
class PackStats:
    """What pack did: bytes_in (checkpoint files), bytes_out (archive), wall seconds."""

    path: str
    files: tuple[str, ...]
    bytes_in: int
    bytes_out: int
    seconds: float
    level: int
    threads: int

    @property
    def ratio(self) -> float:
        """Compression ratio, bytes_in / bytes_out."""
        return self.bytes_in / self.bytes_out if self.bytes_out else 0.0

    @property
    def throughput(self) -> float:
        """Checkpoint bytes packed per second."""
        return self.bytes_in / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict:
        return {
            "path": self.path,
            "files": list(self.files),
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "ratio": round(self.ratio, 4),
            "seconds": round(self.seconds, 3),
            "throughput": round(self.throughput),
            "level": self.level,
            "threads": self.threads,
        }


def checkpoint_files(ckpt: Checkpoint) -> list[tuple[str, Callable[[], Source]]]:
    """(path, open) of every file of a checkpoint, .index first, then data shards in order (V1: its
    tables); open() returns the file's Source. Opening is deferred so that an archive source is
    read in one forward pass."""
    # A BundleReader, a V1 reader or a foreign format's RangeReader (whose `tables` refuses): Checkpoint
    # does not type its readers as one interface yet.
    reader: Any = ckpt.reader
    if ckpt.format == "v2":
        files: list[tuple[str, Callable[[], Source]]] = [(reader.index_source.name, lambda: reader.index_source)]
        files += [(reader.shard_path(i), partial(reader.shard, i)) for i in range(reader.header.num_shards)]
        return files
    return [(t.source.name, _source_of(t)) for t in reader.tables]


def _source_of(table: Any) -> Callable[[], Source]:
    return lambda: table.source


def _basename(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


class _Counting:
    """Counts bytes written through to a binary file (zstd's output)."""

    def __init__(self, f):
        self.f, self.n = f, 0

    def write(self, data) -> int:
        n = self.f.write(data)
        self.n += len(data)
        return n

    def flush(self) -> None:
        self.f.flush()


def pack(
    src, out_path, *, level: int = DEFAULT_LEVEL, threads: int = -1, force: bool = False, progress=None
) -> PackStats:
    """Write the checkpoint src (an open Checkpoint, or a local prefix) to one .tar.zst.

    Members: the .index, then every data shard in order (V1: its table files). The archive is
    written to a temp name beside out_path and renamed into place when complete; out_path may
    also be a remote URL (committed the same way where the filesystem allows renames).
    threads: zstd worker threads; -1 = one per CPU, 0 = compress on the calling thread.
    Other path forms (archives, URLs) are opened by ckptio.archive.pack, above the router.
    """
    started = time.perf_counter()
    out_path = os.fspath(out_path)
    ckpt = src if isinstance(src, Checkpoint) else Checkpoint(src)
    try:
        files = checkpoint_files(ckpt)
        inputs = {os.path.abspath(p) for p, _ in files if "://" not in p}
        archive_path = getattr(ckpt, "archive_path", None)  # set when ckpt was read from an archive
        if archive_path:
            inputs.add(os.path.abspath(archive_path))
        if "://" not in out_path and os.path.abspath(out_path) in inputs:
            raise OutputExistsError("output is the input; write the archive elsewhere", path=out_path)
        output = _open_output(out_path, force=force)
        try:
            bytes_in = _write_archive(output.file, files, level, threads, progress)
            bytes_out = output.commit()
        except BaseException:
            output.abort()
            raise
    finally:
        if ckpt is not src:
            ckpt.close()
    return PackStats(
        out_path,
        tuple(_basename(p) for p, _ in files),
        bytes_in,
        bytes_out,
        time.perf_counter() - started,
        level,
        threads,
    )


def _write_archive(f, files, level: int, threads: int, progress) -> int:
    """Write a checkpoint's (path, open) files as archive members named by their base names; the bytes in."""
    return write_archive(f, [(_basename(p), open_source) for p, open_source in files], level, threads, progress)


class _LocalOutput:
    """The archive's temp file, owned by this writer (OutputClaim) until committed or aborted."""

    def __init__(self, path: str, force: bool):
        self.path, self.force = path, force
        if os.path.exists(path) and not force:
            raise OutputExistsError("the archive already exists", path=path, remedy=Remedy("force", "replace it"))
        directory = os.path.dirname(path) or "."
        make_dirs(directory)
        self.claim = OutputClaim(path)
        try:
            if os.path.exists(path) and not force:  # another writer finished it meanwhile
                raise OutputExistsError("the archive already exists (use --force to replace it)", path=path)
            self.files = AtomicFiles(directory)
            self.tmp, fd = self.files.create(path)
        except BaseException:
            self.claim.release()
            raise
        self._raw = os.fdopen(fd, "wb", buffering=1 << 20)
        self.file = _Counting(self._raw)

    def commit(self) -> int:
        try:
            self._raw.close()
        except OSError as exc:
            raise WriteError(f"cannot write: {exc.strerror}", path=self.tmp) from None
        with interrupts_deferred():
            self.files.commit(no_replace=() if self.force else (self.path,))
            self.claim.release()
        return self.file.n

    def abort(self) -> None:
        try:
            self._raw.close()
        except OSError:
            pass
        self.files.abort()
        self.claim.release()


def _open_output(path: str, *, force: bool):
    if "://" in path:
        from ..store.remote import RemoteOutput

        return RemoteOutput(path, overwrite=force)
    return _LocalOutput(path, force)


def rewrite_packed(
    src,
    out_path,
    steps=(),
    *,
    level: int = DEFAULT_LEVEL,
    threads: int = -1,
    force: bool = False,
    name: str | None = None,
    **options,
):
    """rewrite() into an archive through its store's output (store/archive_output.py: members staged
    beside the archive, packed index-first on commit); returns (RewriteReport, PackStats).

    src: an open Checkpoint, or a local prefix (ckptio.archive.rewrite_packed opens any path form).
    name: the checkpoint's file name prefix inside the archive (default: the source's).
    """
    from ..rewrite_exec import rewrite_local
    from ..store import for_output

    started = time.perf_counter()
    out_path = os.fspath(out_path)
    ckpt = src if isinstance(src, Checkpoint) else Checkpoint(src)
    try:
        store, prefix = for_output(out_path, name=name or _basename(ckpt.prefix) or "model.ckpt")
        assert isinstance(store, PackingStore)  # for_output of an archive path
        store.level, store.threads = level, threads
        if store.parent.exists(out_path) and not force:
            raise OutputExistsError("the archive already exists", path=out_path, remedy=Remedy("force", "replace it"))
        checkpoint_files(ckpt)  # refuses what pack refuses (another weight format), before anything is written
        report = rewrite_local(ckpt, prefix, steps, store=store, state_file=False, force=force, **options)
    finally:
        if ckpt is not src:
            ckpt.close()
    report.dst = out_path
    files, bytes_in, bytes_out = store.packed or ((), 0, 0)
    stats = PackStats(out_path, files, bytes_in, bytes_out, time.perf_counter() - started, level, threads)
    return report, stats
