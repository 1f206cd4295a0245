"""Block handles, the footer, and reading one block with its trailer checked.

footer (48 bytes, at end of file):
  varint64 metaindex.offset, varint64 metaindex.size,
  varint64 index.offset, varint64 index.size, zero padding to byte 40,
  fixed64 LE magic 0xdb4775248b80fb57
block trailer (5 bytes, after each block's contents):
  u8 compression type (0 none, 1 snappy), fixed32 masked crc32c(contents + type byte)
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ChecksumError, CorruptCheckpointError, UnsupportedError
from .coding import VarintError, crc32c, decode_fixed32, decode_varint, encode_fixed32, encode_varint, mask, unmask

MAGIC = 0xDB4775248B80FB57
MAGIC_BYTES = MAGIC.to_bytes(8, "little")
FOOTER_SIZE = 48
TRAILER_SIZE = 5
NO_COMPRESSION = 0
SNAPPY_COMPRESSION = 1
MAX_BLOCK_SIZE = 1 << 31  # far above any real block; caps allocation on hostile handles
SNAPPY_MAX_RATIO = 22  # > 64/3, the most raw snappy can expand


@dataclass(frozen=True, slots=True)
class BlockHandle:
    """Where a block's contents are: offset and size, trailer not included."""

    offset: int
    size: int

    def encode(self) -> bytes:
        return encode_varint(self.offset) + encode_varint(self.size)

    @staticmethod
    def decode(buf, pos: int, limit: int) -> tuple[BlockHandle, int]:
        offset, pos = decode_varint(buf, pos, limit)
        size, pos = decode_varint(buf, pos, limit)
        return BlockHandle(offset, size), pos


@dataclass(frozen=True, slots=True)
class Footer:
    """The two handles stored at the end of every table."""

    metaindex: BlockHandle
    index: BlockHandle

    def encode(self) -> bytes:
        handles = self.metaindex.encode() + self.index.encode()
        return handles + bytes(40 - len(handles)) + MAGIC_BYTES

    @staticmethod
    def decode(data: bytes, *, path=None, offset=None) -> Footer:
        if len(data) != FOOTER_SIZE:
            raise CorruptCheckpointError("file too short to be a table (no 48-byte footer)", path=path)
        if data[40:] != MAGIC_BYTES:
            raise CorruptCheckpointError("not an sstable (bad magic number)", path=path, offset=offset)
        try:
            metaindex, pos = BlockHandle.decode(data, 0, 40)
            index, _ = BlockHandle.decode(data, pos, 40)
        except VarintError:
            raise CorruptCheckpointError("bad block handle in footer", path=path, offset=offset) from None
        return Footer(metaindex, index)


def encode_trailer(contents: bytes, compression: int = NO_COMPRESSION) -> bytes:
    """The 5 bytes that follow a block's contents."""
    crc = crc32c(bytes([compression]), crc32c(contents))
    return bytes([compression]) + encode_fixed32(mask(crc))


def read_block(source, handle: BlockHandle, *, what: str = "block", verify: bool = True) -> bytes:
    """Read, check and decompress the block at handle."""
    path = source.name
    if handle.size > MAX_BLOCK_SIZE or handle.offset + handle.size + TRAILER_SIZE > source.size:
        raise CorruptCheckpointError(
            f"{what} handle (offset {handle.offset}, size {handle.size}) points past the end of the "
            f"{source.size}-byte file",
            path=path,
            offset=handle.offset,
        )
    raw = source.read(handle.offset, handle.size + TRAILER_SIZE)
    contents, kind = raw[: handle.size], raw[handle.size]
    if verify:
        stored = unmask(decode_fixed32(raw, handle.size + 1))
        actual = crc32c(raw[handle.size : handle.size + 1], crc32c(contents))
        if stored != actual:
            raise ChecksumError(
                f"{what} checksum mismatch (stored {stored:#010x}, computed {actual:#010x})",
                path=path,
                offset=handle.offset,
            )
    if kind == NO_COMPRESSION:
        return contents
    if kind == SNAPPY_COMPRESSION:
        return _snappy_decompress(contents, path, handle.offset, what)
    raise UnsupportedError(f"{what} has unknown compression type {kind}", path=path, offset=handle.offset)


def _snappy_decompress(contents: bytes, path, offset: int, what: str) -> bytes:
    import cramjam

    try:
        length, _ = decode_varint(contents, 0, len(contents), 5)
    except VarintError:
        length = -1
    if length < 0 or length > MAX_BLOCK_SIZE:
        raise CorruptCheckpointError(f"{what} has a bad snappy length", path=path, offset=offset)
    # A snappy element of n bytes yields at most 64/3 n bytes (a 3-byte copy of 64), so a larger
    # declared length is a decompression bomb; refuse it before anything is allocated.
    if length > SNAPPY_MAX_RATIO * len(contents):
        raise CorruptCheckpointError(
            f"{what} claims {length} bytes after snappy decompression from {len(contents)} (impossible)",
            path=path,
            offset=offset,
        )
    try:
        out = bytes(cramjam.snappy.decompress_raw(contents))
    except Exception as exc:  # cramjam raises its own DecompressionError
        raise CorruptCheckpointError(f"{what} snappy data is corrupt ({exc})", path=path, offset=offset) from None
    if len(out) != length:
        raise CorruptCheckpointError(
            f"{what} decompressed to {len(out)} bytes, expected {length}", path=path, offset=offset
        )
    return out
