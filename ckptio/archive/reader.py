"""A Checkpoint read straight out of a .tar.zst archive (see the package docstring)."""

from __future__ import annotations

import os

from ..bundle import naming
from ..bundle.locate import Located, locate
from ..checkpoint import Checkpoint
from ..errors import CheckpointNotFoundError, UnsupportedError
from ..sstable.format import MAGIC_BYTES
from ..store.archive import ArchiveStore, ArchiveStream
from ..store.base import Source
from ..store.local import FileSource
from ..store.tar import REGULAR

# Members held in memory are capped far above any real checkpoint's (an index of 512 MiB lists
# millions of tensors) and well below what a 64 KB archive of zeros can inflate to.
MAX_INDEX = 512 << 20  # cap on an index member held in memory
MAX_V1 = 512 << 20  # cap on V1 members held in memory (all together)


class ArchiveCheckpoint(Checkpoint):
    """A checkpoint read straight out of a .tar.zst archive; see the module docstring.

    `archive` is the ArchiveStream: `compressed_bytes_read`, `decompressed`, `passes`.
    """

    store: ArchiveStore

    def __init__(self, path: str, store: ArchiveStore, located: Located):
        self.archive_path = path
        super().__init__(path, located=located, store=store)

    @property
    def archive(self) -> ArchiveStream:
        return self.store.stream

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
            self.store.close()

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
        store = ArchiveStore(src, label)
    except BaseException:
        src.close()
        raise
    return archive_checkpoint(store)


def archive_checkpoint(store: ArchiveStore) -> ArchiveCheckpoint:
    """The checkpoint an open archive store holds; the store is closed with it (or on failure)."""
    try:
        return ArchiveCheckpoint(store.name, store, locate_archive(store))
    except BaseException:
        store.close()
        raise


def locate_archive(store: ArchiveStore) -> Located:
    """The checkpoint an archive holds: its first .index member, held in memory; else its V1 tables."""
    index = None
    while index is None:
        m = store.stream.scan()
        if m is None:
            break
        if m.kind == REGULAR and m.name.endswith(".index") and len(m.name) > len(".index"):
            index = m
    if index is None:
        return _locate_v1(store)
    if index.size > MAX_INDEX:  # before a byte of it is decompressed
        raise UnsupportedError(
            f"index member of {index.size} bytes is more than ckptio holds in memory "
            f"({MAX_INDEX} bytes); unpack the archive first",
            path=store.path_of(index.name),
        )
    store.hold(index)
    return Located("v2", store.path_of(index.name[: -len(".index")]))


def _locate_v1(store: ArchiveStore) -> Located:
    """Hold every V1 table member in memory and pick the checkpoint they form."""
    label = store.name
    candidates = [
        m
        for m in store.stream.members
        if m.kind == REGULAR
        and m.size >= 48
        and os.path.basename(m.name) != "checkpoint"
        and not m.name.endswith(".meta")
    ]
    if not candidates:
        raise CheckpointNotFoundError("archive holds no checkpoint (no .index member, no V1 table file)", path=label)
    data = [m for m in candidates if naming.split_data_path(m.name)]
    if data:  # V2 data shards without their .index: refused as locate refuses one locally, naming it
        locate(store, store.path_of(data[0].name))
    if sum(m.size for m in candidates) > MAX_V1:
        raise UnsupportedError(
            f"V1 archives are read into memory; this one holds more than {MAX_V1} bytes (unpack it first)", path=label
        )
    tables = []
    for m in candidates:
        if store.hold(m)[-8:] == MAGIC_BYTES:
            tables.append(m.name)
    if not tables:
        if len(candidates) == 1:  # one file that is no checkpoint: refused as locate refuses it locally
            locate(store, store.path_of(candidates[0].name))
        raise CheckpointNotFoundError("archive holds no checkpoint (no .index member, no V1 table file)", path=label)
    for m in candidates:
        if m.name not in tables:
            del store.held[m.name]
    matches = [naming.V1_SHARD_RE.match(n) for n in tables]
    shards = [m for m in matches if m is not None]
    if len(shards) == len(matches) and len({(s["base"], s["count"]) for s in shards}) == 1:
        return Located("v1", store.path_of(shards[0]["base"]), tuple(store.path_of(n) for n in sorted(tables)))
    if len(tables) == 1:
        return Located("v1", store.path_of(tables[0]), (store.path_of(tables[0]),))
    raise CheckpointNotFoundError(f"archive holds {len(tables)} V1 checkpoints: {', '.join(tables[:5])}", path=label)
