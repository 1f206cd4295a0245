"""DT_STRING tensor bytes.

    varint64 len[0] ... len[n-1]    one per element, row-major
    fixed32  masked crc32c of the lengths, each taken as a 4-byte uint32 (8-byte if > 0xffffffff)
    bytes    s[0] ... s[n-1]        concatenated
The entry crc32c runs over the lengths (as uint32), the 4 stored checksum bytes, then the payload.
In big-endian bundles the uint32 lengths fed to the crc and the stored checksum are big-endian.
"""

from __future__ import annotations

import struct

from ..errors import ChecksumError, CorruptCheckpointError
from ..sstable.coding import VarintError, crc32c, decode_varint, encode_varint, mask, unmask


def _length_bytes(length: int, big_endian: bool) -> bytes:
    return length.to_bytes(4 if length <= 0xFFFFFFFF else 8, "big" if big_endian else "little")


def decode(
    data: bytes, count: int, *, big_endian: bool = False, path=None, key=None, offset=None
) -> tuple[list[bytes], int]:
    """Split string tensor bytes into `count` elements; return (elements, unmasked entry crc)."""
    lengths, pos, crc = [], 0, 0
    if count > len(data):  # every length takes at least one byte
        raise CorruptCheckpointError(
            f"string tensor of {count} elements cannot fit {len(data)} bytes", path=path, key=key, offset=offset
        )
    for _ in range(count):
        at = pos
        try:
            length, pos = decode_varint(data, pos, len(data))
        except VarintError:
            raise CorruptCheckpointError(
                "bad string length varint", path=path, key=key, offset=None if offset is None else offset + at
            ) from None
        if length > len(data) - pos:  # cannot be: checked before anything is sized by it
            raise CorruptCheckpointError(
                f"string length {length} is longer than the {len(data)}-byte tensor",
                path=path,
                key=key,
                offset=None if offset is None else offset + at,
            )
        lengths.append(length)
        crc = crc32c(_length_bytes(length, big_endian), crc)
    if pos + 4 > len(data):
        raise CorruptCheckpointError("string tensor ends inside its length checksum", path=path, key=key, offset=offset)
    stored = struct.unpack_from(">I" if big_endian else "<I", data, pos)[0]
    if unmask(stored) != crc:
        raise ChecksumError(
            "the length checksum of the string tensor does not match",
            path=path,
            key=key,
            offset=None if offset is None else offset + pos,
        )
    crc = crc32c(data[pos : pos + 4], crc)
    pos += 4
    if pos + sum(lengths) != len(data):
        raise CorruptCheckpointError(
            f"string lengths add up to {sum(lengths)} bytes but {len(data) - pos} follow",
            path=path,
            key=key,
            offset=offset,
        )
    out = []
    view = memoryview(data)
    for length in lengths:
        out.append(bytes(view[pos : pos + length]))
        pos += length
    crc = crc32c(data[len(data) - sum(lengths) :], crc)
    return out, crc


def prefix_problem(head: bytes, count: int, size: int, *, big_endian: bool = False) -> str | None:
    """Why head cannot be the start of a `size`-byte string tensor of `count` elements, or None if it can.

    For a tensor cut short: its lengths and their checksum come first, so what is there tells
    whether these are the right bytes cut off, or some other file's bytes.
    """
    pos, total, crc = 0, 0, 0
    for _ in range(count):
        try:
            length, pos = decode_varint(head, pos, len(head))
        except VarintError:
            return None if len(head) - pos < 10 else "bad string length varint"
        total += length
        if pos + 4 + total > size:
            return f"its string lengths add up to more than its {size} bytes"
        crc = crc32c(_length_bytes(length, big_endian), crc)
    if pos + 4 > len(head):
        return None
    if pos + 4 + total != size:
        return f"its string lengths add up to {total} bytes, not the {size - pos - 4} its size leaves"
    if unmask(int.from_bytes(head[pos : pos + 4], "big" if big_endian else "little")) != crc:
        return "the length checksum of the string tensor does not match"
    return None


def to_array(elements: list[bytes], shape: tuple[int, ...]):
    """The decoded elements as a numpy object array of shape (the form a string tensor is read as)."""
    import numpy as np

    arr = np.empty(len(elements), dtype=object)
    arr[:] = elements
    return arr.reshape(shape)


def encode(elements, *, big_endian: bool = False) -> tuple[bytes, int]:
    """Serialize byte strings; return (tensor bytes, masked entry crc32c)."""
    elements = [e if isinstance(e, bytes) else (e.encode() if isinstance(e, str) else bytes(e)) for e in elements]
    varints = b"".join(encode_varint(len(e)) for e in elements)
    crc = 0
    for e in elements:
        crc = crc32c(_length_bytes(len(e), big_endian), crc)
    checksum = mask(crc).to_bytes(4, "big" if big_endian else "little")
    crc = crc32c(checksum, crc)
    payload = b"".join(elements)
    crc = crc32c(payload, crc)
    return varints + checksum + payload, mask(crc)


# DT_VARIANT tensor bytes, per element (little-endian bundles only):
#
#     varint64 len, VariantTensorDataProto bytes (len), fixed32 masked crc32c running so far
# The running crc covers each length as an 8-byte uint64 LE, the proto bytes, then the 4 stored
# checksum bytes; the entry crc32c is the mask of the final running crc.


def variant_crc(data: bytes, count: int, *, path=None, key=None, offset=None) -> int:
    """Check the per-element checksums of `count` variant elements; return the unmasked entry crc."""
    pos, crc = 0, 0
    if count > len(data):
        raise CorruptCheckpointError(
            f"variant tensor of {count} elements cannot fit {len(data)} bytes", path=path, key=key, offset=offset
        )
    for i in range(count):
        at = pos
        try:
            length, pos = decode_varint(data, pos, len(data))
        except VarintError:
            raise CorruptCheckpointError(
                f"bad length varint of variant element {i}",
                path=path,
                key=key,
                offset=None if offset is None else offset + at,
            ) from None
        if length + 4 > len(data) - pos:
            raise CorruptCheckpointError(
                f"variant element {i} of {length} bytes runs past the tensor",
                path=path,
                key=key,
                offset=None if offset is None else offset + at,
            )
        crc = crc32c(data[pos : pos + length], crc32c(length.to_bytes(8, "little"), crc))
        pos += length
        stored = struct.unpack_from("<I", data, pos)[0]
        if unmask(stored) != crc:
            raise ChecksumError(
                f"the checksum of variant element {i} does not match",
                path=path,
                key=key,
                offset=None if offset is None else offset + pos,
            )
        crc = crc32c(data[pos : pos + 4], crc)
        pos += 4
    if pos != len(data):
        raise CorruptCheckpointError(
            f"{len(data) - pos} bytes follow the last variant element", path=path, key=key, offset=offset
        )
    return crc
