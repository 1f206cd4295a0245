"""Write a table the way TensorFlow does, byte for byte.

    [data block][trailer] ... [metaindex block][trailer] [index block][trailer] [footer]

Data blocks hold up to ~block_size bytes with a restart every 16 keys; the index
block maps a short separator key per data block to its handle (restart every key);
the metaindex is always empty. REQUIRES: keys added in strictly increasing order.
"""

from __future__ import annotations

from .block_builder import BlockBuilder
from .format import NO_COMPRESSION, BlockHandle, Footer, encode_trailer

BLOCK_SIZE = 262144


def shortest_separator(start: bytes, limit: bytes) -> bytes:
    """A short key k with start <= k < limit (LevelDB's bytewise rule)."""
    n = min(len(start), len(limit))
    i = 0
    while i < n and start[i] == limit[i]:
        i += 1
    if i < n:
        byte = start[i]
        if byte < 0xFF and byte + 1 < limit[i]:
            return start[:i] + bytes([byte + 1])
    return start


def short_successor(key: bytes) -> bytes:
    """A short key >= key: the first non-0xff byte incremented, the rest dropped."""
    for i, byte in enumerate(key):
        if byte != 0xFF:
            return key[:i] + bytes([byte + 1])
    return key


class TableBuilder:
    """Streams a table to write(bytes); call add() in key order, then finish()."""

    def __init__(self, write, *, block_size: int = BLOCK_SIZE, restart_interval: int = 16):
        self._write = write
        self.block_size = block_size
        self.offset = 0
        self.num_entries = 0
        self._data = BlockBuilder(restart_interval)
        self._index = BlockBuilder(1)
        self._last_key = b""
        self._pending: BlockHandle | None = None  # handle of the last flushed block, awaiting its index key

    def add(self, key: bytes, value: bytes) -> None:
        if self.num_entries and key <= self._last_key:
            raise ValueError(f"keys must be strictly increasing: {key!r} after {self._last_key!r}")
        # TensorFlow's table writer starts a new block before any very large entry.
        if len(key) + len(value) >= 2 * self.block_size and not self._data.empty:
            self._flush()
        if self._pending is not None:
            self._index.add(shortest_separator(self._last_key, key), self._pending.encode())
            self._pending = None
        self._last_key = bytes(key)
        self.num_entries += 1
        self._data.add(key, value)
        if self._data.size_estimate() >= self.block_size:
            self._flush()

    def _flush(self) -> None:
        if self._data.empty:
            return
        self._pending = self._write_block(self._data.finish())
        self._data.reset()

    def _write_block(self, contents: bytes) -> BlockHandle:
        handle = BlockHandle(self.offset, len(contents))
        self._write(contents)
        self._write(encode_trailer(contents, NO_COMPRESSION))
        self.offset += len(contents) + 5
        return handle

    def finish(self) -> int:
        """Write the last block, metaindex, index and footer; return the file size."""
        self._flush()
        metaindex = self._write_block(BlockBuilder().finish())
        if self._pending is not None:
            self._index.add(short_successor(self._last_key), self._pending.encode())
            self._pending = None
        index = self._write_block(self._index.finish())
        footer = Footer(metaindex, index).encode()
        self._write(footer)
        self.offset += len(footer)
        return self.offset
