"""Decode one block: prefix-compressed entries followed by a restart array.

entry:   varint32 shared, varint32 unshared, varint32 value_length,
         key[shared:] (unshared bytes), value (value_length bytes)
trailer: fixed32 restart[0..n-1] (offsets of entries with shared == 0), fixed32 n
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Iterator

from ..errors import CorruptCheckpointError
from .coding import VarintError, decode_fixed32, decode_varint


class Block:
    """A decoded block: iterate entries in order or seek to a key."""

    __slots__ = ("data", "limit", "restarts", "path", "offset")

    def __init__(self, data: bytes, *, path=None, offset=None):
        self.data, self.path, self.offset = data, path, offset
        if len(data) < 4:
            raise self._error("block is shorter than its restart count")
        count = decode_fixed32(data, len(data) - 4)
        if count == 0 and len(data) > 4 or count > (len(data) - 4) // 4:
            raise self._error(f"bad restart count {count} for a {len(data)}-byte block")
        self.limit = len(data) - 4 - 4 * count
        self.restarts = struct.unpack_from(f"<{count}I", data, self.limit)
        if self.limit > 0:
            # Restart points are increasing entry offsets starting at 0; anything else would send
            # the binary search of seek() into the middle of an entry.
            if self.restarts[0] != 0:
                raise self._error(f"first restart point is {self.restarts[0]}, not 0")
            if any(a >= b for a, b in zip(self.restarts, self.restarts[1:])) or self.restarts[-1] >= self.limit:
                raise self._error("restart points are out of order or point past the entries")

    def _error(self, message: str, at: int | None = None) -> CorruptCheckpointError:
        where = self.offset if at is None or self.offset is None else self.offset + at
        return CorruptCheckpointError(message, path=self.path, offset=where)

    def entries(self, start: int = 0, key: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        """Yield (key, value) from byte position start (a restart point) to the end."""
        data, limit = self.data, self.limit
        pos = start
        while pos < limit:
            at = pos
            # Fast path: all three lengths fit one byte each, as in almost every entry.
            try:
                shared, unshared, vlen = data[pos], data[pos + 1], data[pos + 2]
                if (shared | unshared | vlen) < 0x80:
                    pos += 3
                else:
                    shared, pos = decode_varint(data, pos, limit, 5)
                    unshared, pos = decode_varint(data, pos, limit, 5)
                    vlen, pos = decode_varint(data, pos, limit, 5)
            except (IndexError, VarintError):
                raise self._error("bad entry header", at) from None
            end = pos + unshared
            if shared > len(key) or end + vlen > limit:
                raise self._error("entry runs past the block or shares more than the previous key", at)
            key = key[:shared] + data[pos:end]
            yield key, data[end : end + vlen]
            pos = end + vlen

    def items(self) -> tuple[list[bytes], list[bytes]]:
        """Every key and value, as two lists: entries() without a generator step per entry.

        Raises at the first bad entry header, before returning anything; entries() yields the good
        entries before it.
        """
        data, limit = self.data, self.limit
        keys: list[bytes] = []
        values: list[bytes] = []
        add_key, add_value = keys.append, values.append
        key = b""
        pos = 0
        while pos < limit:
            at = pos
            try:
                shared, unshared, vlen = data[pos], data[pos + 1], data[pos + 2]
                if (shared | unshared | vlen) < 0x80:
                    pos += 3
                else:
                    shared, pos = decode_varint(data, pos, limit, 5)
                    unshared, pos = decode_varint(data, pos, limit, 5)
                    vlen, pos = decode_varint(data, pos, limit, 5)
            except (IndexError, VarintError):
                raise self._error("bad entry header", at) from None
            end = pos + unshared
            if shared > len(key) or end + vlen > limit:
                raise self._error("entry runs past the block or shares more than the previous key", at)
            key = key[:shared] + data[pos:end]
            add_key(key)
            pos = end + vlen
            add_value(data[end:pos])
        return keys, values

    def seek(self, target: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Yield entries from the first key >= target (binary search over restart points)."""
        if self.limit == 0:  # no entries (an empty block still has one restart at 0)
            return
        keys = _RestartKeys(self)
        i = bisect.bisect_right(keys, target) - 1  # last restart whose key <= target
        start = self.restarts[max(i, 0)] if self.restarts else self.limit
        for key, value in self.entries(start):
            if key >= target:
                yield key, value


class _RestartKeys:
    """Sequence view of the full keys at restart points, decoded on access."""

    def __init__(self, block: Block):
        self.block = block

    def __len__(self) -> int:
        return len(self.block.restarts)

    def __getitem__(self, i: int) -> bytes:
        block = self.block
        pos = block.restarts[i]
        try:
            shared, pos = decode_varint(block.data, pos, block.limit, 5)
            unshared, pos = decode_varint(block.data, pos, block.limit, 5)
            _, pos = decode_varint(block.data, pos, block.limit, 5)
        except VarintError:
            raise block._error("bad entry header at restart point", block.restarts[i]) from None
        if shared != 0 or pos + unshared > block.limit:
            raise block._error("restart point does not hold a full key", block.restarts[i])
        return bytes(block.data[pos : pos + unshared])
