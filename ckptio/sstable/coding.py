"""Varints, fixed-width integers and masked CRC32C, as the table format encodes them."""

from __future__ import annotations

import os
import struct

from ..errors import CorruptCheckpointError

MASK_DELTA = 0xA282EAD8
_U32 = struct.Struct("<I")


def _load_crc32c():
    """The crc32c package's compiled function, loaded without running the package's __init__.

    That __init__ looks up its own version in the install metadata (importlib.metadata, email,
    zipfile, csv ...), which cost every ckptio command 15-30 ms of start-up. Falls back to a
    plain import if the package is laid out differently.
    """
    from importlib.machinery import EXTENSION_SUFFIXES, ExtensionFileLoader
    from importlib.util import find_spec, module_from_spec, spec_from_file_location

    try:
        package = find_spec("crc32c")
        for directory in (package.submodule_search_locations or []) if package else []:
            for suffix in EXTENSION_SUFFIXES:
                path = os.path.join(directory, "_crc32c" + suffix)
                if os.path.isfile(path):
                    spec = spec_from_file_location(
                        "crc32c._crc32c", path, loader=ExtensionFileLoader("crc32c._crc32c", path)
                    )
                    module = module_from_spec(spec)
                    spec.loader.exec_module(module)
                    return module.crc32c
    except (ImportError, OSError, AttributeError):
        pass
    import crc32c as package_module

    return package_module.crc32c


crc32c_function = _load_crc32c()


def crc32c(data, crc: int = 0) -> int:
    """CRC-32C of data, continuing from crc (hardware, GIL released on large buffers)."""
    return crc32c_function(data, crc)


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
