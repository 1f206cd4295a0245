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
    checkpoint appears only when whole. Existing files are refused unless force.
    """
    started = time.perf_counter()
    label = os.fspath(archive_path)
    out_dir = os.fspath(out_dir)
    if "://" in out_dir and not out_dir.startswith("file://"):
        from ..errors import UnsupportedError

        raise UnsupportedError("unpack writes into a local directory; unpack here, then upload", path=out_dir)
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


def _safe_relpath(name: str, label: str) -> str:
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or name.startswith("/") or ".." in parts or "\\" in name or "\0" in name:
        raise CorruptCheckpointError(f"refusing to extract a member with an unsafe name {name!r}", path=label)
    return os.path.join(*parts)
