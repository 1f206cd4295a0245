"""Extract a .tar.zst: every regular file written byte for byte in one pass, data files before any .index."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from ..errors import CheckpointNotFoundError, CorruptCheckpointError, OutputExistsError, Remedy
from ..io import FileSource, Source
from ..store.atomic import AtomicFiles, make_dirs, write_all
from .stream import ArchiveStream
from .tar import REGULAR
from .write import COPY_CHUNK

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (type checkers honour the name)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import IO


@dataclass(frozen=True, slots=True)
class UnpackStats:
    path: str
    out_dir: str
    files: tuple[str, ...]
    bytes_out: int
    seconds: float

    def to_json(self) -> dict:
        return {
            "path": self.path,
            "out_dir": self.out_dir,
            "files": list(self.files),
            "bytes": self.bytes_out,
            "seconds": round(self.seconds, 3),
        }


def unpack(archive_path, out_dir, *, force: bool = False, progress=None) -> UnpackStats:
    """Extract every regular file of the archive into out_dir, byte for byte, in one pass.

    Files go to temp names first; data files are renamed into place before any .index, so a
    checkpoint appears only when whole. Existing files are refused unless force. out_dir may be
    a URL: the files are written through its store's output, data files first, every .index last.
    """
    started = time.perf_counter()
    label = os.fspath(archive_path)
    out_dir = os.fspath(out_dir)
    remote = "://" in out_dir and not out_dir.startswith("file://")  # written through the URL's store
    out_dir = out_dir.removeprefix("file://")
    source: Source
    if "://" in label:
        from ..store.remote import RemoteSource

        source = RemoteSource.from_url(label)
    else:
        source = FileSource(label)
    try:
        stream = ArchiveStream(source, label)
    except BaseException:
        source.close()
        raise
    if remote:
        try:
            names, total = _extract_to_url(stream, label, out_dir, force, progress)
        finally:
            stream.close()
        return UnpackStats(label, out_dir, tuple(names), total, time.perf_counter() - started)
    data_files: dict[str, AtomicFiles] = {}  # directory -> its files
    index_files: dict[str, AtomicFiles] = {}
    names, total = [], 0
    try:
        for m in stream:
            if m.kind != REGULAR:
                continue
            rel = _safe_relpath(m.name, label)
            final = os.path.join(out_dir, rel)
            if os.path.lexists(final) and not force:
                raise OutputExistsError("file exists", path=final, remedy=Remedy("force", "replace it"))
            directory = os.path.dirname(final) or "."
            make_dirs(directory)
            group = index_files if rel.endswith(".index") else data_files
            files = group.setdefault(directory, AtomicFiles(directory))
            tmp, fd = files.create(final)
            try:
                pos = 0
                while pos < m.size:
                    data = stream.read_at(m.data_offset + pos, min(COPY_CHUNK, m.size - pos), name=f"{label}/{m.name}")
                    write_all(fd, data, tmp)
                    pos += len(data)
                    if progress:
                        progress(len(data))
            finally:
                os.close(fd)
            names.append(rel)
            total += m.size
        stream.drain()  # reach the end of the zstd frame so its content checksum is checked
        for group in (data_files, index_files):
            for files in group.values():
                files.commit()
    except BaseException:
        for group in (data_files, index_files):
            for files in group.values():
                files.abort()
        raise
    finally:
        stream.close()
    if not names:
        raise CheckpointNotFoundError("archive holds no files", path=label)
    return UnpackStats(label, out_dir, tuple(names), total, time.perf_counter() - started)


def _extract_to_url(stream: ArchiveStream, label: str, url: str, force: bool, progress) -> tuple[list[str], int]:
    """unpack() into a URL directory through its store's output: data files as they stream, every .index
    (first in a ckptio archive) staged in a local temp file and created last, so that it commits last."""
    import tempfile

    from ..store import file_store

    store, base = file_store(url)
    output = store.output()
    staged: list[tuple[str, IO[bytes]]] = []
    write: Callable[[bytes], object]
    names, total = [], 0
    try:
        for m in stream:
            if m.kind != REGULAR:
                continue
            rel = _safe_relpath(m.name, label)
            final = store.join(base.rstrip("/"), rel.replace(os.sep, "/"))
            if store.exists(final) and not force:
                raise OutputExistsError("file exists", path=final, remedy=Remedy("force", "replace it"))
            if rel.endswith(".index"):
                if force:  # an object store drops it now: never the old index over new data files
                    output.replace([final])
                f: IO[bytes] = tempfile.TemporaryFile()
                staged.append((final, f))
                write = f.write
            else:
                sink = output.create(final)
                write = sink.write
            pos = 0
            while pos < m.size:
                data = stream.read_at(m.data_offset + pos, min(COPY_CHUNK, m.size - pos), name=f"{label}/{m.name}")
                write(data)
                pos += len(data)
                if progress:
                    progress(len(data))
            if not rel.endswith(".index"):
                sink.close()
            names.append(rel)
            total += m.size
        stream.drain()  # reach the end of the zstd frame so its content checksum is checked
        if not names:
            raise CheckpointNotFoundError("archive holds no files", path=label)
        for final, f in staged:
            sink = output.create(final)
            f.seek(0)
            while chunk := f.read(COPY_CHUNK):
                sink.write(chunk)
            sink.close()
        output.commit()
    except BaseException:
        output.abort()
        raise
    finally:
        for _, f in staged:
            f.close()
    return names, total


def _safe_relpath(name: str, label: str) -> str:
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or name.startswith("/") or ".." in parts or "\\" in name or "\0" in name:
        raise CorruptCheckpointError(f"refusing to extract a member with an unsafe name {name!r}", path=label)
    return os.path.join(*parts)
