"""safetensors: read a file (or a sharded set through its index JSON) and lay out new ones.

    [u64 LE N][N bytes: UTF-8 JSON header, space-padded to a multiple of 8][tensor bytes, back to back]
    header = {"__metadata__": {"k": "v", ...},        optional, strings only
              "name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [BEGIN, END]}, ...}
    BEGIN/END are relative to the byte buffer (file offset 8 + N), END exclusive; row-major,
    little-endian. Sorted by BEGIN, the tensors tile the buffer exactly: no hole, no overlap,
    no trailing byte. There are no checksums.

    model.safetensors.index.json = {"metadata": {"total_size": BYTES}, "weight_map": {name: shard file}}
    with shards model-00001-of-00003.safetensors ... in the same directory.
(FORMAT-models.md §5.)
"""

from __future__ import annotations

import json
import os
import struct

from ..bundle import dtypes
from ..bundle.entry import Entry
from ..errors import CorruptCheckpointError, MissingShardError, TruncatedError, UnsupportedError, WrongFileError
from .base import ForeignCheckpoint, RangeReader, check_shape, numel

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


def _entries_of(tensors: dict, data_start: int, shard: int, path) -> dict[str, Entry]:
    out = {}
    for name, (dtype, shape, begin, end) in tensors.items():
        enum = TO_TF.get(dtype)
        if enum is None:
            raise UnsupportedError(f"dtype {dtype} has no TensorFlow equivalent", path=path, key=name)
        out[name] = Entry(enum, shape, shard, data_start + begin, end - begin, 0)
    return out


class SafetensorsCheckpoint(ForeignCheckpoint):
    """One safetensors file or a sharded set; metadata is the (first file's) __metadata__."""

    def __init__(self, reader, path, files, metadata: dict, index: dict | None = None):
        super().__init__(reader, "safetensors", path, files)
        self.metadata = metadata
        self.index = index

    def what_is_checked(self) -> str:
        return _what_is_checked(self)


def open_safetensors(path: str) -> SafetensorsCheckpoint:
    """Open a .safetensors file, or the set a .safetensors.index.json names."""
    from ..io import FileSource

    if path.endswith(INDEX_SUFFIX):
        return _open_index(path)
    src = FileSource(path)
    try:
        metadata, tensors, start = parse_header(src)
        reader = RangeReader(path, [src], _entries_of(tensors, start, 0, path))
    except BaseException:
        src.close()
        raise
    return SafetensorsCheckpoint(reader, path, (path,), metadata)


def read_index(path: str) -> dict:
    """A validated index JSON: {"metadata": {...}, "weight_map": {name: file name in the same directory}}."""
    from ..io import FileSource

    src = FileSource(path)
    try:
        if src.size > MAX_INDEX_SIZE:
            raise CorruptCheckpointError(f"index is {src.size} bytes (at most {MAX_INDEX_SIZE})", path=path)
        raw = src.read(0, src.size)
    finally:
        src.close()
    try:
        doc = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CorruptCheckpointError(f"not a safetensors index (bad JSON: {exc})", path=path) from None
    weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise WrongFileError('not a safetensors index: no "weight_map" of names to files', path=path)
    for name, file in weight_map.items():
        # Only files beside the index: a hostile index must not make us open /etc/passwd or ../x.
        if not file or os.path.basename(file) != file or file in (".", ".."):
            raise CorruptCheckpointError(f"weight_map names {file!r}, not a file beside the index", path=path, key=name)
    return doc


def _open_index(path: str) -> SafetensorsCheckpoint:
    from ..io import FileSource

    doc = read_index(path)
    weight_map = doc["weight_map"]
    directory = os.path.dirname(path)
    files = sorted(set(weight_map.values()))
    sources: list[FileSource] = []
    entries: dict[str, Entry] = {}
    metadata: dict = {}
    try:
        for shard, file in enumerate(files):
            full = os.path.join(directory, file)
            try:
                src = FileSource(full)
            except FileNotFoundError:
                raise MissingShardError("shard named by the index is missing", path=full) from None
            sources.append(src)
            meta, tensors, start = parse_header(src)
            metadata = metadata or meta
            for name, entry in _entries_of(tensors, start, shard, full).items():
                if weight_map.get(name) != file:
                    where = "is not in the weight map" if name not in weight_map else f"is mapped to {weight_map[name]}"
                    raise CorruptCheckpointError(f"tensor in shard {file} {where}", path=path, key=name)
                entries[name] = entry
        missing = sorted(set(weight_map) - set(entries))
        if missing:
            raise CorruptCheckpointError(
                f"weight_map lists {len(missing)} tensor(s) its shard lacks, e.g. "
                f"{missing[0]!r} in {weight_map[missing[0]]}",
                path=path,
            )
    except BaseException:
        for s in sources:
            s.close()
        raise
    reader = RangeReader(path, sources, entries)
    return SafetensorsCheckpoint(reader, path, [path] + [os.path.join(directory, f) for f in files], metadata, doc)


def _what_is_checked(ckpt: SafetensorsCheckpoint) -> str:
    """What verify could check for a safetensors input (the header was validated when it was opened)."""
    reader = ckpt.reader
    assert isinstance(reader, RangeReader)  # what open_safetensors gives every SafetensorsCheckpoint
    files = len(reader.sources)
    what = (
        f"{len(ckpt)} tensors in {files} file{'s' if files != 1 else ''}: header JSON, dtypes, shapes, "
        "data_offsets (sizes, order, no overlap or hole, file fully covered)"
    )
    if ckpt.index is not None:
        what += ", and the index's weight map against every shard"
    return what + "; safetensors stores no checksums, so the tensor bytes themselves cannot be verified"


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


def layout_order(tensors):
    """The reference writer's order: dtype descending in enum order (larger items first, all aligned), then name."""
    return sorted(tensors, key=lambda t: (-RANK[FROM_TF[t.dtype]], t.name))


def shard_names(dst: str, count: int) -> tuple[list[str], str | None]:
    """Output file paths for count shards and the index path (None for a single file), named as Hugging Face does."""
    if dst.endswith(INDEX_SUFFIX):
        base, index = dst[: -len(INDEX_SUFFIX)], dst
    elif count == 1:
        return [dst], None
    else:
        base, index = dst, dst + INDEX_SUFFIX
    stem = base[: -len(".safetensors")]
    return [f"{stem}-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)], index


def stale_outputs(dst: str) -> list[str]:
    """Files an earlier export to dst may have left: the single file, its index and its shards."""
    import re

    base = dst[: -len(INDEX_SUFFIX)] if dst.endswith(INDEX_SUFFIX) else dst
    directory, name = os.path.split(base)
    stem = re.escape(name[: -len(".safetensors")])
    shard = re.compile(stem + r"-\d{5}-of-\d{5}\.safetensors$")
    try:
        names = os.listdir(directory or ".")
    except OSError:
        names = []
    found = [os.path.join(directory, n) for n in names if shard.match(n)]
    return [p for p in (base, base + INDEX_SUFFIX) if os.path.exists(p)] + sorted(found)


def existing_outputs(dst: str) -> list[str]:
    return stale_outputs(dst)


def encode_index(total_size: int, weight_map: dict[str, str]) -> bytes:
    """The index JSON as transformers writes it (indent 2, sorted keys, trailing newline)."""
    doc = {"metadata": {"total_size": total_size}, "weight_map": weight_map}
    return (json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


FORMAT_NAME = "safetensors"


def can_store(enum: int) -> bool:
    return enum in FROM_TF


def output_paths(dst: str, tensors, *, num_shards=1, max_shard_size=None) -> list[str]:
    """Every file an export to dst writes (shards, then the index if any)."""
    from .export import groups_by_size

    paths, index = shard_names(dst, len(groups_by_size(tensors, num_shards, max_shard_size)))
    return paths + ([index] if index else [])


def write(
    ckpt,
    tensors,
    dst: str,
    *,
    num_shards=1,
    max_shard_size=None,
    verify=True,
    progress=None,
    fsync=False,
    metadata=None,
) -> list[str]:
    """Write tensors as one safetensors file or a sharded set with its index, atomically; return the paths."""
    from ..bundle.copy import ShardFile
    from ..io import AtomicFiles, make_dirs, preallocate
    from .export import groups_by_size, runs_of, write_error, write_runs

    for t in tensors:  # JSON cannot carry names that are not valid Unicode text
        try:
            t.name.encode("utf-8")
        except UnicodeEncodeError:
            from ..errors import PlanError

            raise PlanError("the name is not valid UTF-8, which a safetensors header cannot hold", key=t.name) from None
    groups = groups_by_size(tensors, num_shards, max_shard_size)
    paths, index = shard_names(dst, len(groups))
    directory = os.path.dirname(dst) or "."
    make_dirs(directory)
    stale = [p for p in stale_outputs(dst) if p not in paths and p != index]
    files = AtomicFiles(directory)
    weight_map: dict[str, str] = {}
    try:
        for path, group in zip(paths, groups):
            order = layout_order(group)
            head, begins = encode_header(metadata or {}, [(t.name, FROM_TF[t.dtype], t.shape, t.nbytes) for t in order])
            total = len(head) + sum(t.nbytes for t in order)
            _, fd = files.create(path)
            out = ShardFile(fd, path)
            try:
                try:
                    preallocate(fd, total)  # a full disk fails here, before any copying
                except OSError as exc:
                    raise write_error(exc, path) from None
                out.write(head)
                placed = [
                    (len(head) + begin + run.at, run) for t, begin in zip(order, begins) for run in runs_of(ckpt, t)
                ]
                write_runs(ckpt, out, placed, verify=verify, progress=progress)
                try:
                    os.ftruncate(fd, total)  # every byte was written; this only pins the size
                except OSError as exc:
                    raise write_error(exc, path) from None
            finally:
                os.close(fd)
            weight_map.update((t.name, os.path.basename(path)) for t in group)
        if index:
            _, fd = files.create(index)
            try:
                ShardFile(fd, index).write(encode_index(sum(t.nbytes for t in tensors), weight_map))
            finally:
                os.close(fd)
        # An index being replaced goes first: a crash then leaves no set rather than a stale index.
        files.commit(remove_first=[p for p in stale if p.endswith(INDEX_SUFFIX)], fsync=fsync)
    except BaseException:
        files.abort()
        raise
    for p in stale:  # files of the export this one replaced (--force)
        try:
            os.unlink(p)
        except OSError:
            pass
    return paths + ([index] if index else [])
