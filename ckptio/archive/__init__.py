"""Checkpoints in one zstandard-compressed tar archive (.tar.zst): pack, unpack, and stream-read.

    archive   := zstd( member* end-of-archive )          any number of zstd frames, content checksums on
    member    := [pax header block + records, padded]  header block (512 bytes)  data, zero-padded to 512
    end       := two zero blocks, then zeros up to a multiple of 10240 bytes (the tar record size)

`pack` writes the `.index` member first, then the data shards in shard order (V1: the table files
in order), and nothing else: no manifest, so `tar --zstd -xf` gives back exactly the checkpoint.

Reading never makes an unpacked copy. Opening decompresses only up to the end of the `.index`
member, which is kept in memory; each data shard is then a forward-only `Source` over the one
decompressing stream. Reads must come in increasing (member, offset) order, as `rewrite` and
`verify` make them; a backward read starts a new pass from the beginning of the archive and skips
forward, which is correct but costs a decompression of everything before it (`passes` counts
them). Memory stays bounded by the read size. V1 archives are the exception: V1 tables need
random access, so their members are read into memory.
"""

from __future__ import annotations

# The old single module's names, all still importable from ckptio.archive.
from ..checkpoint import ARCHIVE_SUFFIXES, Checkpoint
from .extract import UnpackStats, unpack
from .reader import MAX_INDEX, MAX_V1, ArchiveCheckpoint, open_archive  # noqa: F401
from .stream import READ_CHUNK, SKIP_CHUNK, ZSTD_MAGIC, ArchiveStream, MemberSource  # noqa: F401
from .tar import (  # noqa: F401
    BLOCK,
    DIRECTORY,
    MAX_META,
    OTHER,
    RECORD,
    REGULAR,
    Member,
    TarHeader,
    decode_header,
    encode_header,
    parse_pax,
)
from .write import COPY_CHUNK, DEFAULT_LEVEL, PackStats, checkpoint_files  # noqa: F401
from .write import pack as _pack
from .write import rewrite_packed as _rewrite_packed

SUFFIXES = ARCHIVE_SUFFIXES


# This package's front sits above the router (sources.py), which reads archives through .reader:
# here src may be any path form ckptio.open takes; archive/write.py works on the open Checkpoint.


def pack(
    src, out_path, *, level: int = DEFAULT_LEVEL, threads: int = -1, force: bool = False, progress=None
) -> PackStats:
    """Write the checkpoint src (any path ckptio.open takes, or an open Checkpoint) to one .tar.zst (see write.pack)."""
    from ..sources import open as open_checkpoint

    ckpt = src if isinstance(src, Checkpoint) else open_checkpoint(src)
    try:
        return _pack(ckpt, out_path, level=level, threads=threads, force=force, progress=progress)
    finally:
        if ckpt is not src:
            ckpt.close()


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
    """rewrite() src (any path form, or an open Checkpoint) into the .tar.zst out_path; returns (Report, PackStats).

    name: the checkpoint's file name prefix inside the archive; options are rewrite()'s (see write.rewrite_packed).
    """
    from ..sources import open as open_checkpoint

    ckpt = src if isinstance(src, Checkpoint) else open_checkpoint(src)
    try:
        return _rewrite_packed(ckpt, out_path, steps, level=level, threads=threads, force=force, name=name, **options)
    finally:
        if ckpt is not src:
            ckpt.close()


__all__ = [
    "pack",
    "unpack",
    "open_archive",
    "rewrite_packed",
    "PackStats",
    "UnpackStats",
    "ArchiveCheckpoint",
    "ArchiveStream",
    "MemberSource",
    "encode_header",
    "decode_header",
    "parse_pax",
    "SUFFIXES",
]
