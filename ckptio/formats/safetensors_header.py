"""The safetensors header and index JSON: the dtype table, parse_header (validates all of it) and the encoders.

(The byte layout is drawn in ckptio.formats.safetensors; FORMAT-models.md §5.)
"""

from __future__ import annotations

import json
import struct

from ..bundle import dtypes
from ..errors import CorruptCheckpointError, TruncatedError, UnsupportedError
from .base import check_shape, numel

MAX_HEADER_SIZE = 100_000_000  # the reference implementation's cap, on reading and writing
MAX_INDEX_SIZE = 100_000_000
INDEX_SUFFIX = ".index.json"

# safetensors dtype strings in the reference's enum order, with bits per element and the TF dtype
# (None: TensorFlow has no such type).
DTYPES = (
    ("BOOL", 8, "bool"),
    ("F4", 4, None),
    ("F6_E2M3", 6, None),
    ("F6_E3M2", 6, None),
    ("U8", 8, "uint8"),
    ("I8", 8, "int8"),
    ("F8_E5M2", 8, "float8_e5m2"),
    ("F8_E4M3", 8, "float8_e4m3fn"),
    ("F8_E8M0", 8, None),
    ("F8_E4M3FNUZ", 8, "float8_e4m3fnuz"),
    ("F8_E5M2FNUZ", 8, "float8_e5m2fnuz"),
    ("I16", 16, "int16"),
    ("U16", 16, "uint16"),
    ("F16", 16, "float16"),
    ("BF16", 16, "bfloat16"),
    ("I32", 32, "int32"),
    ("U32", 32, "uint32"),
    ("F32", 32, "float32"),
    ("C64", 64, "complex64"),
    ("F64", 64, "float64"),
    ("I64", 64, "int64"),
    ("U64", 64, "uint64"),
)
RANK = {name: i for i, (name, _, _) in enumerate(DTYPES)}
TO_TF = {name: dtypes.BY_NAME[tf].enum for name, _, tf in DTYPES if tf}
FROM_TF = {enum: name for name, enum in TO_TF.items()}


def dtype_for(enum: int) -> str | None:
    """The safetensors dtype string of a TF dtype enum, or None if safetensors has none."""
    return FROM_TF.get(enum)


# -- reading -----------------------------------------------------------------------------------------


def parse_header(src, *, file_size: int | None = None) -> tuple[dict, dict[str, tuple[str, tuple, int, int]], int]:
    """(metadata, {name: (dtype, shape, begin, end)}, data start) of a safetensors file, all validated."""
    path = src.name
    size = src.size if file_size is None else file_size
    if size < 8:
        raise TruncatedError(f"header too small: a safetensors file starts with 8 bytes, this has {size}", path=path)
    (n,) = struct.unpack("<Q", src.read(0, 8))
    if n > MAX_HEADER_SIZE:
        raise CorruptCheckpointError(f"header too large: {n} bytes (at most {MAX_HEADER_SIZE})", path=path)
    if 8 + n > size:
        raise TruncatedError(f"header of {n} bytes runs past the end of the {size}-byte file", path=path, offset=8)
    raw = src.read(8, n)
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CorruptCheckpointError(f"header is not UTF-8 JSON: {exc}", path=path, offset=8) from None
    if not isinstance(header, dict):
        raise CorruptCheckpointError("header is not a JSON object", path=path, offset=8)
    metadata = header.pop("__metadata__", None)
    metadata = {} if metadata is None else metadata
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CorruptCheckpointError("__metadata__ must map strings to strings", path=path, offset=8)
    tensors = {}
    for name, info in header.items():
        tensors[name] = _tensor_info(name, info, path)
    _check_coverage(tensors, size - 8 - n, path)
    return metadata, tensors, 8 + n


def _no_duplicates(pairs):
    seen = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"duplicate key {key!r}")
        seen[key] = value
    return seen


def _tensor_info(name: str, info, path) -> tuple[str, tuple, int, int]:
    if not isinstance(info, dict):
        raise CorruptCheckpointError("tensor info is not a JSON object", path=path, key=name)
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype not in RANK:
        raise CorruptCheckpointError(f"unknown dtype {dtype!r}", path=path, key=name)
    shape = check_shape(shape, path=path, key=name)
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(type(o) is int and o >= 0 for o in offsets)
        or offsets[0] > offsets[1]
    ):
        raise CorruptCheckpointError(f"bad data_offsets {offsets!r}", path=path, key=name)
    bits = DTYPES[RANK[dtype]][1]
    nbits = numel(shape) * bits
    if nbits % 8:
        raise CorruptCheckpointError(
            f"{numel(shape)} elements of {bits} bits are not a whole number of bytes", path=path, key=name
        )
    begin, end = offsets
    if end - begin != nbits // 8:
        raise CorruptCheckpointError(
            f"data_offsets [{begin}, {end}) hold {end - begin} bytes, but {dtype}{list(shape)} needs {nbits // 8}",
            path=path,
            key=name,
        )
    return dtype, shape, begin, end


def _check_coverage(tensors: dict, buffer_size: int, path) -> None:
    """Sorted by offset, the tensors must tile the byte buffer exactly (the reference's rule)."""
    pos = 0
    for name, (_, _, begin, end) in sorted(tensors.items(), key=lambda kv: (kv[1][2], kv[1][3])):
        if begin != pos:
            what = "overlaps the tensor before it" if begin < pos else f"leaves a hole of {begin - pos} bytes"
            raise CorruptCheckpointError(f"data_offsets [{begin}, {end}) {what}", path=path, key=name)
        pos = end
    if pos != buffer_size:
        if pos > buffer_size:
            raise TruncatedError(f"tensors need {pos} bytes of data but the file holds {buffer_size}", path=path)
        raise CorruptCheckpointError(
            f"file not fully covered: {buffer_size - pos} bytes after the last tensor", path=path
        )


# -- writing -----------------------------------------------------------------------------------------


def encode_header(metadata: dict[str, str], tensors) -> tuple[bytes, list[int]]:
    """(8-byte length + padded JSON header, begin offset per tensor) for tensors = [(name, dtype, shape, nbytes)].

    Tensors are laid out in the given order; the header lists __metadata__ first, then the
    tensors in offset order, padded with spaces so the data starts 8-aligned (as the reference does).
    """
    doc: dict[str, object] = {"__metadata__": metadata} if metadata else {}
    begins, pos = [], 0
    for name, dtype, shape, nbytes in tensors:
        doc[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [pos, pos + nbytes]}
        begins.append(pos)
        pos += nbytes
    text = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    if len(text) > MAX_HEADER_SIZE:
        raise UnsupportedError(
            f"the safetensors header would be {len(text)} bytes, over the {MAX_HEADER_SIZE}-byte "
            "limit readers enforce; split the output with --max-shard-size"
        )
    return struct.pack("<Q", len(text)) + text, begins


def encode_index(total_size: int, weight_map: dict[str, str]) -> bytes:
    """The index JSON as transformers writes it (indent 2, sorted keys, trailing newline)."""
    doc = {"metadata": {"total_size": total_size}, "weight_map": weight_map}
    return (json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")
