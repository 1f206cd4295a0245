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

from ..bundle.entry import Entry
from ..errors import CorruptCheckpointError, MissingShardError, UnsupportedError, WrongFileError
from .base import ForeignCheckpoint, RangeReader

# The header codec and the writer live in their own modules; every name stays importable from here.
from .safetensors_header import (
    DTYPES,
    FROM_TF,
    INDEX_SUFFIX,
    MAX_HEADER_SIZE,
    MAX_INDEX_SIZE,
    RANK,
    TO_TF,
    _no_duplicates,
    dtype_for,
    encode_header,
    encode_index,
    parse_header,
)
from .safetensors_write import (
    FORMAT_NAME,
    can_store,
    existing_outputs,
    layout_order,
    output_paths,
    shard_names,
    stale_outputs,
    write,
)

__all__ = [
    "DTYPES",
    "FORMAT_NAME",
    "FROM_TF",
    "INDEX_SUFFIX",
    "MAX_HEADER_SIZE",
    "MAX_INDEX_SIZE",
    "RANK",
    "TO_TF",
    "SafetensorsCheckpoint",
    "can_store",
    "dtype_for",
    "encode_header",
    "encode_index",
    "existing_outputs",
    "layout_order",
    "open_safetensors",
    "output_paths",
    "parse_header",
    "read_index",
    "shard_names",
    "stale_outputs",
    "write",
]


# -- reading -----------------------------------------------------------------------------------------


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
