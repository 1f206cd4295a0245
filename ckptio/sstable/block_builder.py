"""Encode one block (see block.py for the layout).

REQUIRES: keys are added in strictly increasing bytewise order.
"""

from __future__ import annotations

import struct

from .coding import encode_varint


class BlockBuilder:
    """Accumulates prefix-compressed entries with a restart point every `restart_interval`."""

    def __init__(self, restart_interval: int = 16):
        if restart_interval < 1:
            raise ValueError("restart_interval must be >= 1")
        self.restart_interval = restart_interval
        self.reset()

    def reset(self) -> None:
        self._buf = bytearray()
        self._restarts = [0]
        self._counter = 0
        self._last_key = b""
        self.num_entries = 0

    @property
    def empty(self) -> bool:
        return self.num_entries == 0

    def size_estimate(self) -> int:
        """Bytes finish() would return now."""
        return len(self._buf) + 4 * len(self._restarts) + 4

    def add(self, key: bytes, value: bytes) -> None:
        if self.num_entries and key <= self._last_key:
            raise ValueError(f"keys must be strictly increasing: {key!r} after {self._last_key!r}")
        shared = 0
        if self._counter < self.restart_interval:
            last = self._last_key
            limit = min(len(last), len(key))
            while shared < limit and last[shared] == key[shared]:
                shared += 1
        else:
            self._restarts.append(len(self._buf))
            self._counter = 0
        self._buf += encode_varint(shared) + encode_varint(len(key) - shared) + encode_varint(len(value))
        self._buf += key[shared:]
        self._buf += value
        self._last_key = bytes(key)
        self._counter += 1
        self.num_entries += 1

    def finish(self) -> bytes:
        restarts = self._restarts
        return bytes(self._buf) + struct.pack(f"<{len(restarts)}I", *restarts) + struct.pack("<I", len(restarts))
