"""Write a checkpoint into one .tar.zst (.index first, then the data shards), or rewrite straight into one."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..checkpoint import Checkpoint
from ..errors import OutputExistsError, Remedy, WriteError
from ..io import Source
from ..output import (
    AtomicFiles,
    OutputClaim,
    interrupts_deferred,
    make_dirs,
    remove_stale_temps,
    staging_dir,
)

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (type checkers honour the name)
if TYPE_CHECKING:
    from typing import Any

COPY_CHUNK = 4 << 20  # bytes per read while packing
DEFAULT_LEVEL = 3


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


def _mtime(source: Source) -> int:
    fd = source.fileno()
    try:
        return int(os.fstat(fd).st_mtime) if fd is not None else int(time.time())
    except OSError:
        return int(time.time())


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
    """Write the members as a pax tar (stdlib tarfile, forward only) into a zstd stream on f; the bytes in."""
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
        for path, open_source in files:
            source = open_source()
            info = tarfile.TarInfo(_basename(path))
            info.size, info.mtime, info.mode = source.size, _mtime(source), 0o644
            tar.addfile(info, _SourceFile(source, progress))
            total += source.size
    return total


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
    """rewrite() into a temp directory beside out_path, then pack it; returns (RewriteReport, PackStats).

    src: an open Checkpoint, or a local prefix (ckptio.archive.rewrite_packed opens any path form).
    name: the checkpoint's file name prefix inside the archive (default: the source's).
    """
    import shutil
    import tempfile

    from ..rewrite_exec import rewrite_local

    out_path = os.fspath(out_path)
    if "://" not in out_path and os.path.exists(out_path) and not force:
        raise OutputExistsError("the archive already exists", path=out_path, remedy=Remedy("force", "replace it"))
    ckpt = src if isinstance(src, Checkpoint) else Checkpoint(src)
    try:
        checkpoint_files(ckpt)  # refuses what pack refuses (another weight format), before anything is written
        if "://" in out_path:
            tmp = tempfile.mkdtemp(prefix=".ckptio-pack-")
        else:
            # Beside the archive (one filesystem), named after this process: a later writer there
            # removes it if this one is killed (io.remove_stale_temps).
            local_dir = os.path.dirname(os.path.abspath(out_path))
            make_dirs(local_dir)
            remove_stale_temps(local_dir)
            tmp = staging_dir(local_dir)
    except BaseException:
        if ckpt is not src:
            ckpt.close()
        raise
    try:
        base = name or _basename(ckpt.prefix) or "model.ckpt"
        report = rewrite_local(ckpt, os.path.join(tmp, base), steps, state_file=False, **options)
        stats = pack(os.path.join(tmp, base), out_path, level=level, threads=threads, force=force)
        report.dst = out_path
        return report, stats
    finally:
        if ckpt is not src:
            ckpt.close()
        shutil.rmtree(tmp, ignore_errors=True)
