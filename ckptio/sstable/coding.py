"""Varints, fixed-width integers and masked CRC32C, as the table format encodes them."""
from __future__ import annotations

import struct

import crc32c as _crc32c

from ..errors import CorruptCheckpointError

MASK_DELTA = 0xA282EAD8
_U32 = struct.Struct("<I")


def crc32c(data, crc: int = 0) -> int:
    """CRC-32C of data, continuing from crc (hardware, GIL released on large buffers)."""
    return _crc32c.crc32c(data, crc)


def mask(crc: int) -> int:
    """Mask a CRC as stored in tables and bundle entries (so a CRC of CRCs stays strong)."""
    return (((crc >> 15) | (crc << 17)) + MASK_DELTA) & 0xFFFFFFFF


def unmask(masked: int) -> int:
    """Invert mask()."""
    rot = (masked - MASK_DELTA) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


def encode_varint(value: int) -> bytes:
    """LEB128: 7 bits a byte, low groups first, high bit set on all but the last."""
    if value < 0:
        raise ValueError("varints here are unsigned")
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


class VarintError(CorruptCheckpointError):
    """A varint runs past its buffer or is longer than max_bytes (a ValueError too)."""


def decode_varint(buf, pos: int, limit: int, max_bytes: int = 10) -> tuple[int, int]:
    """Decode a varint at buf[pos:limit]; return (value, position after it)."""
    result = shift = 0
    end = min(limit, pos + max_bytes)
    while pos < end:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
    raise VarintError("truncated or overlong varint")


def encode_fixed32(value: int) -> bytes:
    return _U32.pack(value)


def decode_fixed32(buf, pos: int) -> int:
    return _U32.unpack_from(buf, pos)[0]
