"""A Checkpoint read straight out of a .tar.zst archive (see the package docstring)."""

from __future__ import annotations

import os

from ..bundle import naming
from ..bundle.paths import Located
from ..checkpoint import Checkpoint
from ..errors import CheckpointNotFoundError, UnsupportedError
from ..io import FileSource, MemorySource, Source
from ..sstable.format import MAGIC_BYTES
from .stream import ArchiveStream, MemberSource
from .tar import REGULAR

# Members held in memory are capped far above any real checkpoint's (an index of 512 MiB lists
# millions of tensors) and well below what a 64 KB archive of zeros can inflate to.
MAX_INDEX = 512 << 20  # cap on an index member held in memory
MAX_V1 = 512 << 20  # cap on V1 members held in memory (all together)


class ArchiveCheckpoint(Checkpoint):
    """A checkpoint read straight out of a .tar.zst archive; see the module docstring.

    `archive` is the ArchiveStream: `compressed_bytes_read`, `decompressed`, `passes`.
    """

    sequential = True  # sources are forward-only: read in (shard, offset) order, one thread

    def __init__(self, path: str, stream: ArchiveStream, located: Located, held: dict[str, bytes]):
        self.archive = stream
        self._held = held
        self.archive_path = path
        super().__init__(path, located=located, open_source=self._open_member)

    def _open_member(self, path: str) -> Source:
        prefix = self.archive.label + "/"
        name = path[len(prefix) :] if path.startswith(prefix) else None
        if name is not None and name in self._held:
            return MemorySource(self._held[name], name=path)
        member = self.archive.find(name) if name is not None else None
        if member is None:
            raise CheckpointNotFoundError("no such member in the archive", path=path)
        return MemberSource(self.archive, member)

    @property
    def bytes_read(self) -> int:
        """Compressed bytes read from the archive so far."""
        return self.archive.compressed_bytes_read

    def check_container(self) -> None:
        """For verify, after the tensors: the rest of the archive (duplicates, zstd checksum)."""
        self.archive.check_rest()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.archive.close()

    def __repr__(self) -> str:
        return f"<ckptio.ArchiveCheckpoint {self.format} {self.prefix!r}>"


def open_archive(path, *, source: Source | None = None) -> ArchiveCheckpoint:
    """Open a checkpoint inside a .tar.zst archive, decompressing only up to the end of its .index.

    The archive's first `.index` member names the checkpoint (ckptio writes it first; in other
    archives the members before it are skipped, and read again by a second pass if needed).
    Without an `.index`, the V1 table files in the archive are used (read into memory).
    """
    label = os.fspath(path)
    src = source or FileSource(label)
    try:
        stream = ArchiveStream(src, label)
        held: dict[str, bytes] = {}
        index = None
        while index is None:
            m = stream.scan()
            if m is None:
                break
            if m.kind == REGULAR and m.name.endswith(".index") and len(m.name) > len(".index"):
                index = m
        if index is not None:
            if index.size > MAX_INDEX:  # before a byte of it is decompressed
                raise UnsupportedError(
                    f"index member of {index.size} bytes is more than ckptio holds in memory "
                    f"({MAX_INDEX} bytes); unpack the archive first",
                    path=f"{label}/{index.name}",
                )
            held[index.name] = stream.read_at(index.data_offset, index.size, name=f"{label}/{index.name}")
            located = Located("v2", f"{label}/{index.name[: -len('.index')]}")
        else:
            located = _locate_v1(stream, held, label)
        return ArchiveCheckpoint(label, stream, located, held)
    except BaseException:
        src.close()
        raise


def _locate_v1(stream: ArchiveStream, held: dict[str, bytes], label: str) -> Located:
    """Hold every V1 table member in memory and pick the checkpoint they form."""
    candidates = [
        m
        for m in stream.members
        if m.kind == REGULAR
        and m.size >= 48
        and os.path.basename(m.name) != "checkpoint"
        and not m.name.endswith(".meta")
    ]
    if not candidates:
        raise CheckpointNotFoundError("archive holds no checkpoint (no .index member, no V1 table file)", path=label)
    if sum(m.size for m in candidates) > MAX_V1:
        raise UnsupportedError(
            f"V1 archives are read into memory; this one holds more than {MAX_V1} bytes (unpack it first)", path=label
        )
    tables = []
    for m in candidates:
        data = stream.read_at(m.data_offset, m.size, name=f"{label}/{m.name}")
        if data[-8:] == MAGIC_BYTES:
            held[m.name] = data
            tables.append(m.name)
    if not tables:
        raise CheckpointNotFoundError("archive holds no checkpoint (no .index member, no V1 table file)", path=label)
    shards = [naming.V1_SHARD_RE.match(n) for n in tables]
    if all(shards) and len({(s["base"], s["count"]) for s in shards}) == 1:
        return Located("v1", f"{label}/{shards[0]['base']}", tuple(f"{label}/{n}" for n in sorted(tables)))
    if len(tables) == 1:
        return Located("v1", f"{label}/{tables[0]}", (f"{label}/{tables[0]}",))
    raise CheckpointNotFoundError(f"archive holds {len(tables)} V1 checkpoints: {', '.join(tables[:5])}", path=label)
