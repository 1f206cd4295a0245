"""Extract a .tar.zst: every regular file written byte for byte in one pass, data files before any .index."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from ..errors import CheckpointNotFoundError, CorruptCheckpointError, OutputExistsError, Remedy
from ..io import FileSource, Source
from ..store.base import COPY_CHUNK, Store, copy_source
from .stream import ArchiveStream, MemberSource
from .tar import REGULAR

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (type checkers honour the name)
if TYPE_CHECKING:
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

    Files are written through out_dir's store output (temp names on a local disk); data files become
    visible before any .index, so a checkpoint appears only when whole. Existing files are refused
    unless force. out_dir may be a URL.
    """
    from ..store import file_store

    started = time.perf_counter()
    label = os.fspath(archive_path)
    store, base = file_store(os.fspath(out_dir))
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
    try:
        names, total = _extract(stream, label, store, base, force, progress)
    finally:
        stream.close()
    shown = os.fspath(out_dir).removeprefix("file://")
    return UnpackStats(label, shown, tuple(names), total, time.perf_counter() - started)


def _extract(stream: ArchiveStream, label: str, store: Store, base: str, force: bool, progress):
    """(names, bytes) written: data files as they stream, every .index (first in a ckptio archive)
    staged in a local temp file and created last, so that it commits last."""
    import tempfile

    output = store.output()
    staged: list[tuple[str, IO[bytes]]] = []
    names, total = [], 0
    try:
        for m in stream:
            if m.kind != REGULAR:
                continue
            rel = _safe_relpath(m.name, label)
            final = store.join(base, rel) if base else rel
            if store.exists(final) and not force:
                raise OutputExistsError("file exists", path=final, remedy=Remedy("force", "replace it"))
            member = MemberSource(stream, m)
            if rel.endswith(".index"):
                if force:  # removed before anything is visible: never the old index over new data files
                    output.replace([final])
                f: IO[bytes] = tempfile.TemporaryFile()
                staged.append((final, f))
                copy_source(member, f.write, progress)
            else:
                output.put(final, member, progress)
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
    return "/".join(parts)
