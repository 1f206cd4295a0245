"""Write a checkpoint into one .tar.zst (.index first, then the data shards), or rewrite straight into one."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..checkpoint import Checkpoint
from ..errors import OutputExistsError, Remedy
from ..io import Source
from ..store import file_store
from ..store.archive_output import COPY_CHUNK, DEFAULT_LEVEL, PackingStore, SinkFile, write_archive  # noqa: F401 (COPY_CHUNK: its old home)
from ..store.atomic import interrupts_deferred


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
    return ckpt.reader.files()  # another format's RangeReader refuses: only TF checkpoints are packed


def _basename(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


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
        bytes_in, bytes_out = _write_one_file(
            out_path, force, lambda f: _write_archive(f, files, level, threads, progress)
        )
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


def _write_one_file(path: str, force: bool, write) -> tuple[int, int]:
    """Write one file through its store's output (temp name and rename, or one PUT), owned by this
    writer until committed; write(f) fills it and returns its result. Returns (that, bytes written)."""
    store, path = file_store(path)
    if store.exists(path) and not force:
        raise OutputExistsError("the archive already exists", path=path, remedy=Remedy("force", "replace it"))
    output = store.output()
    output.claim(path)
    try:
        if store.exists(path) and not force:  # another writer finished it meanwhile
            raise OutputExistsError("the archive already exists", path=path, remedy=Remedy("force", "replace it"))
        f = SinkFile(output.create(path))
        result = write(f)
        with interrupts_deferred():
            output.commit(no_replace=() if force else (path,))
            output.release()
    except BaseException:
        output.abort()
        raise
    return result, f.n


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
