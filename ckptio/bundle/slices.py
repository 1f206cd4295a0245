"""Tensor slices and the OrderedCode keys under which sliced tensors store each piece.

    key = NumIncreasing(0) String(name) NumIncreasing(rank) {Signed(start) Signed(length)}*
    NumIncreasing(v): 1 length byte L, then v in L big-endian bytes
    String(s):        s with 00 -> 00 ff and ff -> ff 00, then 00 01
    Signed(v):        n-byte big-endian two's complement with a unary length header in the top bits
A whole dimension is stored as start 0, length -1 in the key and as an Extent without length in the proto.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import CorruptCheckpointError


@dataclass(frozen=True, slots=True)
class Slice:
    """A hyper-rectangle of a tensor, one extent per dimension."""

    extents: tuple[tuple[int, int | None], ...]  # (start, length) per dimension; length None: the whole dimension

    def bounds(self, shape: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
        """(start, stop) per dimension for a tensor of this full shape."""
        return tuple(
            (0, dim) if length is None else (start, start + length) for (start, length), dim in zip(self.extents, shape)
        )

    def shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(stop - start for start, stop in self.bounds(shape))

    def is_full(self, shape: tuple[int, ...]) -> bool:
        return all(b == (0, d) for b, d in zip(self.bounds(shape), shape))

    def spec(self) -> str:
        """TF's slice string: "start,length:-" ..."""
        return ":".join("-" if length is None else f"{start},{length}" for start, length in self.extents)

    def check(self, shape: tuple[int, ...]) -> str | None:
        """Why this slice does not fit shape, or None."""
        if len(self.extents) != len(shape):
            return f"slice has rank {len(self.extents)}, tensor has rank {len(shape)}"
        for (start, length), dim in zip(self.extents, shape):
            if length is None:
                if start != 0:
                    return f"whole-dimension extent with start {start}"
            elif start < 0 or length < 0 or start + length > dim:
                return f"extent {start},{length} outside dimension {dim}"
        return None


MAX_TILING_CELLS = 1 << 24  # grid cells examined when checking that slices tile a tensor


def tiling_problem(shape: tuple[int, ...], slices) -> str | None:
    """Why these slices (each already checked to fit shape) do not tile shape exactly, or None.

    Cost is O(len(slices)) plus one pass over the grid the slice boundaries cut the tensor into,
    so hostile slice lists cannot make it quadratic; memory is at most MAX_TILING_CELLS bytes.
    """
    total = 1
    for d in shape:
        total *= d
    covered = 0
    boxes = []
    for s in slices:
        bounds = s.bounds(shape)
        volume = 1
        for start, stop in bounds:
            volume *= stop - start
        covered += volume
        boxes.append(bounds)
    if covered < total:
        return f"stored slices cover at most {covered} of {total} elements"
    if covered > total:
        return f"stored slices overlap (they hold {covered} elements of a {total}-element tensor)"
    if total == 0 or len(boxes) <= 1:
        return None
    # Equal volume: the slices tile the tensor unless two overlap. Cut every dimension at every
    # slice boundary and count how often each grid cell is covered.
    import numpy as np

    cuts = [sorted({0, dim} | {b[i][0] for b in boxes} | {b[i][1] for b in boxes}) for i, dim in enumerate(shape)]
    cells = 1
    for c in cuts:
        cells *= len(c) - 1
    if cells > MAX_TILING_CELLS:
        return f"{len(boxes)} slices cut the tensor into too many pieces ({cells}) to check"
    position = [{v: i for i, v in enumerate(c)} for c in cuts]
    count = np.zeros([len(c) - 1 for c in cuts], dtype=np.uint8)
    for bounds in boxes:
        index = tuple(slice(p[start], p[stop]) for p, (start, stop) in zip(position, bounds))
        view = count[index]
        if view.any():
            return "stored slices overlap"
        view += 1
    return None


def from_proto(proto) -> Slice:
    return Slice(tuple((e.start, e.length if e.HasField("length") else None) for e in proto.extent))


def to_proto(s: Slice, proto) -> None:
    """Fill a TensorSliceProto; whole dimensions become empty extents, as TF writes them."""
    for start, length in s.extents:
        extent = proto.extent.add()
        if length is not None:
            extent.start = start
            extent.length = length


def _num_increasing(value: int) -> bytes:
    body = value.to_bytes((value.bit_length() + 7) // 8, "big") if value else b""
    return bytes([len(body)]) + body


# Header bits XORed into the leading bytes of an n-byte signed number.
_SIGNED_HEADERS = {
    1: b"\x80",
    2: b"\xc0",
    3: b"\xe0",
    4: b"\xf0",
    5: b"\xf8",
    6: b"\xfc",
    7: b"\xfe",
    8: b"\xff",
    9: b"\xff\x80",
    10: b"\xff\xc0",
}


def _signed(value: int) -> bytes:
    x = value if value >= 0 else ~value
    n = 1
    while n < 10 and x >= 1 << (7 * n - 1):
        n += 1
    body = bytearray((value & ((1 << 80) - 1)).to_bytes(10, "big")[-n:])
    for i, h in enumerate(_SIGNED_HEADERS[n]):
        body[i] ^= h
    return bytes(body)


def _escape(data: bytes) -> bytes:
    out = bytearray()
    for b in data:
        if b == 0:
            out += b"\x00\xff"
        elif b == 0xFF:
            out += b"\xff\x00"
        else:
            out.append(b)
    return bytes(out)


def encode_key(name: str | bytes, s: Slice) -> bytes:
    """The bundle key of one stored slice of `name`."""
    raw = name.encode("utf-8", "surrogateescape") if isinstance(name, str) else name
    out = [_num_increasing(0), _escape(raw) + b"\x00\x01", _num_increasing(len(s.extents))]
    for start, length in s.extents:
        out.append(_signed(0 if length is None else start))
        out.append(_signed(-1 if length is None else length))
    return b"".join(out)


class SliceKeyError(CorruptCheckpointError):
    """Bytes that are not an OrderedCode slice key (a ValueError, like every CorruptCheckpointError)."""


def decode_key(key: bytes) -> tuple[bytes, Slice]:
    """Inverse of encode_key: (name bytes, slice). Rank 0 keys (V1 scalars) give an empty slice."""
    pos = 0

    def num() -> int:
        nonlocal pos
        if pos >= len(key):
            raise SliceKeyError("slice key ends early")
        n = key[pos]
        if n > 8 or pos + 1 + n > len(key):
            raise SliceKeyError("bad number in slice key")
        value = int.from_bytes(key[pos + 1 : pos + 1 + n], "big")
        pos += 1 + n
        return value

    def signed() -> int:
        nonlocal pos
        if pos >= len(key):
            raise SliceKeyError("slice key ends early")
        first = key[pos]
        negative = first < 0x80
        lead = first ^ 0xFF if negative else first
        n = 1
        while n < 8 and lead & (0x80 >> n):
            n += 1
        if n == 8 and pos + 1 < len(key):
            second = key[pos + 1] ^ (0xFF if negative else 0)
            if second & 0x80:
                n = 9 if not second & 0x40 else 10
        if pos + n > len(key):
            raise SliceKeyError("slice key ends early")
        body = bytearray(key[pos : pos + n])
        for i, h in enumerate(_SIGNED_HEADERS[n]):
            body[i] ^= h
        value = int.from_bytes(body, "big")
        if negative:
            value -= 1 << (8 * n)
        # Re-apply the sign into the header bits cleared above.
        bits = 7 * n
        value = value & ((1 << bits) - 1)
        if value >= 1 << (bits - 1):
            value -= 1 << bits
        pos += n
        return value

    if num() != 0:
        raise SliceKeyError("slice key does not start with 0")
    name = bytearray()
    while True:
        if pos >= len(key):
            raise SliceKeyError("unterminated name in slice key")
        b = key[pos]
        if b == 0x00:
            nxt = key[pos + 1] if pos + 1 < len(key) else None
            if nxt == 0x01:
                pos += 2
                break
            if nxt == 0xFF:
                name.append(0)
                pos += 2
                continue
            raise SliceKeyError("bad escape in slice key name")
        if b == 0xFF:
            if pos + 1 < len(key) and key[pos + 1] == 0x00:
                name.append(0xFF)
                pos += 2
                continue
            raise SliceKeyError("bad escape in slice key name")
        name.append(b)
        pos += 1
    rank = num()
    if rank > 64:
        raise SliceKeyError(f"slice key rank {rank} is absurd")
    extents = []
    for _ in range(rank):
        start, length = signed(), signed()
        extents.append((start, None) if length == -1 else (start, length))
    if pos != len(key):
        raise SliceKeyError("trailing bytes after slice key")
    return bytes(name), Slice(tuple(extents))


def key_label(key: bytes) -> str:
    """A slice key as people read it: name[spec] (or its repr if it does not decode)."""
    try:
        base, s = decode_key(key)
    except SliceKeyError:
        return repr(key)
    return f"{base.decode('utf-8', 'surrogateescape')}[{s.spec()}]"
