"""Diagnose a broken checkpoint in plain words, and salvage the tensors that are still intact.

diagnose(path) never stops at the first problem and never trusts a byte it has not checked:

    resolve the path       wrong file (and what to pass instead), missing .index, Git LFS pointers
    walk the table         footer, magic, index block, every data block on its own; when the
                           footer or index block is damaged, scan for intact blocks instead
    header and entries     bad header (shard count inferred from the data files), unparsable
                           entries, keys out of order or stored twice, slices that do not tile
    data shards            missing, truncated, from another checkpoint (most checksums fail, or
                           the size is far off), trailing bytes
    every tensor's bytes   checksums as TensorFlow checks them (numeric, string, variant)

salvage(diagnosis, out) then writes a new V2 checkpoint holding exactly the intact tensors, with
BundleWriter (bytes copied as stored, checksums re-verified on the way).
"""
from __future__ import annotations

import glob
import os
import re
import stat
import struct
from dataclasses import dataclass, field

from .bundle import dtypes, naming, strings
from .bundle.entry import Entry, Header, parse_proto
from .bundle.paths import LFS_POINTER, Located, resolve
from .bundle.slices import (Slice, SliceKeyError, decode_key as decode_slice_key, encode_key as slice_key,
                            key_label, tiling_problem)
from .errors import CheckpointNotFoundError, CkptioError, CorruptCheckpointError, WrongFileError
from .io import FileSource, MemorySource, Source
from .sstable.block import Block
from .sstable.coding import crc32c, decode_varint, unmask
from .sstable.format import FOOTER_SIZE, MAGIC_BYTES, TRAILER_SIZE, BlockHandle, Footer, read_block

CHUNK = 8 << 20
SCAN_LIMIT = 16 << 20  # bytes of a table searched for intact blocks when its footer/index is lost
FIRST_BLOCK_LIMIT = 1 << 20  # how far a file that is not a table is searched for a first block
FOREIGN_FRACTION = 0.5  # a shard failing at least this share of its checksums is "from elsewhere"


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing wrong (or odd but harmless, for notes), in a word and a sentence."""

    kind: str
    message: str
    path: str | None = None
    key: str | None = None
    offset: int | None = None

    def __str__(self) -> str:
        return f"{self.kind}: {CkptioError(self.message, path=self.path, key=self.key, offset=self.offset)}"

    def as_dict(self) -> dict:
        return {"kind": self.kind, "message": self.message, "path": self.path, "key": self.key,
                "offset": self.offset}


@dataclass(frozen=True, slots=True)
class _Piece:
    """Stored bytes of one tensor or of one slice of it (label names the slice)."""

    label: str
    shard: int
    entry: Entry


@dataclass
class Diagnosis:
    """What diagnose() found. healthy means every checked byte is as written (as verify says), so
    TensorFlow reads every tensor."""

    path: str
    format: str | None = None
    prefix: str | None = None
    num_shards: int | None = None
    big_endian: bool = False
    problems: list[Finding] = field(default_factory=list)
    notes: list[Finding] = field(default_factory=list)
    intact: list[str] = field(default_factory=list)
    damaged: dict[str, str] = field(default_factory=dict)
    # For salvage: V2 entries and pieces, or V1 decoded arrays.
    _entries: dict[str, Entry] = field(default_factory=dict, repr=False)
    _pieces: dict[str, list[tuple[bytes, _Piece]]] = field(default_factory=dict, repr=False)
    _shard_paths: dict[int, str] = field(default_factory=dict, repr=False)
    _arrays: dict[str, object] = field(default_factory=dict, repr=False)
    _located: object = field(default=None, repr=False)

    @property
    def healthy(self) -> bool:
        return not self.problems and not self.damaged

    def problem(self, kind: str, message: str, *, path=None, key=None, offset=None) -> None:
        self.problems.append(Finding(kind, message, _str(path), key, offset))

    def note(self, kind: str, message: str, *, path=None, key=None, offset=None) -> None:
        self.notes.append(Finding(kind, message, _str(path), key, offset))

    def damage(self, name: str, reason: str) -> None:
        self.damaged.setdefault(name, reason)

    def as_dict(self) -> dict:
        return {"path": self.path, "format": self.format, "prefix": self.prefix, "num_shards": self.num_shards,
                "healthy": self.healthy, "problems": [p.as_dict() for p in self.problems],
                "notes": [n.as_dict() for n in self.notes], "intact": list(self.intact),
                "damaged": dict(self.damaged)}


def _str(path) -> str | None:
    return None if path is None else os.fspath(path)


# -- entry point ----------------------------------------------------------------------------------


def diagnose(path) -> Diagnosis:
    """Examine the checkpoint at path (any form ckptio.open accepts) and report everything wrong."""
    d = Diagnosis(path=os.fspath(path))
    try:
        located = resolve(path)
    except WrongFileError as exc:
        if _starts_like_table(os.fspath(path)):
            located = Located("v1", os.fspath(path), (os.fspath(path),))  # a V1 file cut short
        else:
            kind = "lfs-pointer" if "Git LFS" in exc.message else "wrong-file"
            d.problem(kind, exc.message, path=exc.path)
            return d
    except CheckpointNotFoundError as exc:
        _explain_not_found(d, os.fspath(path), exc)
        return d
    except CkptioError as exc:
        d.problem("unreadable", exc.message, path=exc.path)
        return d
    d._located = located
    d.format, d.prefix = located.format, located.prefix
    if located.format == "v2":
        _diagnose_v2(d, located.prefix)
    else:
        _diagnose_v1(d, list(located.files), located.prefix)
    names = set(d._entries) | set(d._arrays) | set(d.damaged)
    d.intact = sorted((n for n in names if n not in d.damaged), key=naming.encode_key)
    d.damaged = dict(sorted(d.damaged.items(), key=lambda kv: naming.encode_key(kv[0])))
    return d


def _starts_like_table(path: str) -> bool:
    """Whether a file that is not a table begins with an intact table block (a V1 file cut short)."""
    if not os.path.isfile(path):
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(FIRST_BLOCK_LIMIT)
    except OSError:
        return False
    return bool(_scan_blocks(head, max_blocks=1))


def _explain_not_found(d: Diagnosis, path: str, exc: CheckpointNotFoundError) -> None:
    split = naming.split_data_path(path)
    prefix = split[0] if split else path
    shards = sorted(glob.glob(glob.escape(prefix) + ".data-?????-of-?????"))
    if shards and not os.path.exists(naming.index_path(prefix)):
        d.format, d.prefix = "v2", prefix
        d.problem("missing-index", f"the .index file is missing, but {len(shards)} data file(s) exist "
                  f"({os.path.basename(shards[0])}...); tensor names, shapes and offsets live only in the "
                  "index, so nothing can be read without it", path=naming.index_path(prefix))
        return
    d.problem("not-found", exc.message, path=exc.path)


_NOT_REGULAR = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory"))


def _not_regular(path: str) -> str | None:
    """Why path is not a regular file (a FIFO would block an open, /dev/zero never end), or None.

    Asked before any file is opened; a path that cannot be stat'ed is left to the open to report.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode):
        return None
    kind = next((what for test, what in _NOT_REGULAR if test(mode)), "not a file")
    return f"this is {kind}, not a regular file"


def _lfs(path: str) -> bool:
    if _not_regular(path):
        return False
    try:
        with open(path, "rb") as f:
            return f.read(len(LFS_POINTER)) == LFS_POINTER
    except OSError:
        return False


def _open_file(d: Diagnosis, path: str) -> FileSource | None:
    """The file as a Source (read in bounded pieces, never whole), or None with the problem noted."""
    why = _not_regular(path)
    if why:
        d.problem("not-a-file", why, path=path)
        return None
    try:
        return FileSource(path)
    except CkptioError as exc:
        d.problem("unreadable", exc.message, path=path)
        return None


class _Head(Source):
    """The first `size` bytes of another source: a table with bytes after its footer."""

    def __init__(self, src: Source, size: int):
        super().__init__()
        self._src, self.name, self.size = src, src.name, size

    def _pread(self, offset: int, length: int) -> bytes:
        return self._src.read(offset, length)


# -- the table (V2 .index and V1 files) ----------------------------------------------------------


@dataclass
class _TableScan:
    items: list[tuple[bytes, bytes]] = field(default_factory=list)
    lost: list[tuple[bytes | None, bytes | None]] = field(default_factory=list)  # key ranges in lost blocks
    lost_keys: list[bytes] = field(default_factory=list)  # keys read from blocks whose checksum failed
    complete: bool = True  # False when blocks may be missing without a known key range


def _walk_table(d: Diagnosis, file: Source, path: str, what: str) -> _TableScan:
    """Every entry of every readable block, reporting each unreadable part once.

    The file is read block by block through its Source (sizes checked by read_block), and
    searched at most SCAN_LIMIT bytes from either end: memory never follows the file's size.
    """
    scan = _TableScan()
    size = file.size
    end = size
    magic_ok = file.read(size - 8, 8) == MAGIC_BYTES if size >= FOOTER_SIZE else False
    if not magic_ok:
        tail_at = max(0, size - SCAN_LIMIT)
        at = file.read(tail_at, size - tail_at).rfind(MAGIC_BYTES)
        at = at + tail_at if at >= 0 else -1
        if size >= FOOTER_SIZE and at >= FOOTER_SIZE - 8:
            d.problem("trailing-bytes", f"{size - at - 8} bytes follow the {what}'s footer (TensorFlow reads the "
                      f"footer from the end of the file and fails); the table itself ends at offset {at + 8}",
                      path=path, offset=at + 8)
            end = at + 8
        elif size >= FOOTER_SIZE and sum(a == b for a, b in zip(file.read(size - 8, 8), MAGIC_BYTES)) >= 5:
            d.problem("bad-magic", f"the table magic number at the end of the {what} is damaged "
                      "(TensorFlow: 'not an sstable (bad magic number)'); reading on regardless",
                      path=path, offset=size - 8)
        else:
            return _recover_by_scan(d, file, size, path, what, why="truncated" if size else "empty")
    footer_at = end - FOOTER_SIZE
    try:
        footer = Footer.decode(file.read(footer_at, FOOTER_SIZE - 8) + MAGIC_BYTES, path=path, offset=footer_at)
    except CkptioError as exc:
        d.problem("bad-footer", f"the {what}'s footer is damaged ({exc.message})", path=path, offset=footer_at)
        return _recover_by_scan(d, file, footer_at, path, what, why="footer")
    src = file if end == size else _Head(file, end)
    index_handle = footer.index
    try:
        index = Block(read_block(src, index_handle, what="index block"), path=path, offset=index_handle.offset)
        handles = _index_handles(index, footer, path)
    except CkptioError as exc:
        # The index block's own checksum failed: its handles may still be right, and every data
        # block they lead to is checked by its own checksum.
        handles = None
        try:
            index = Block(read_block(src, index_handle, what="index block", verify=False), path=path,
                          offset=index_handle.offset)
            handles = _index_handles(index, footer, path)
        except CkptioError:
            pass
        d.problem("bad-index-block", f"the {what}'s index block is damaged ({exc.message})"
                  + ("; its block handles still look usable" if handles else ""), path=path,
                  offset=index_handle.offset)
        if not handles:
            return _recover_by_scan(d, file, footer.metaindex.offset if footer.metaindex.offset < footer_at
                                    else footer_at, path, what, why="index")
    try:
        list(Block(read_block(src, footer.metaindex, what="metaindex block"), path=path,
                   offset=footer.metaindex.offset).entries())
    except CkptioError as exc:
        # As verify reports it: TF never reads this block, but its bytes changed after they were written.
        d.problem("bad-metaindex", f"the metaindex block is damaged ({exc.message}); TensorFlow never reads it, "
                  "so the tensors are unaffected, but the file is not as it was written (salvage writes a "
                  "clean copy)", path=path, offset=footer.metaindex.offset)
    previous = None
    for i, (separator, handle) in enumerate(handles):
        try:
            block = Block(read_block(src, handle, what=f"data block {i}"), path=path, offset=handle.offset)
            scan.items.extend(block.entries())
        except CkptioError as exc:
            scan.lost.append((previous, separator))
            try:  # the keys are still worth naming (never their values: nothing vouches for them)
                block = Block(read_block(src, handle, verify=False), path=path, offset=handle.offset)
                scan.lost_keys.extend(k for k, _ in block.entries() if k and (previous is None or k > previous)
                                      and k <= separator)
            except CkptioError:
                pass
            d.problem("corrupt-block", f"data block {i} (bytes [{handle.offset}, {handle.offset + handle.size + 5})) "
                      f"is unreadable ({exc.message}); the entries stored in it "
                      f"({_range_text(previous, separator)}) are lost", path=path, offset=handle.offset)
        previous = separator
    return scan


def _index_handles(index: Block, footer: Footer, path: str) -> list[tuple[bytes, BlockHandle]]:
    out, data_end = [], 0
    for key, value in index.entries():
        handle, _ = BlockHandle.decode(value, 0, len(value))
        if handle.offset < data_end or handle.offset + handle.size + TRAILER_SIZE > footer.index.offset:
            raise CorruptCheckpointError(f"index entry {len(out)} points outside the data blocks", path=path)
        if out and key <= out[-1][0]:
            raise CorruptCheckpointError("index block keys are not in order", path=path)
        data_end = handle.offset + handle.size + TRAILER_SIZE
        out.append((key, handle))
    return out


def _range_text(after: bytes | None, upto: bytes | None) -> str:
    def show(k):
        return repr(naming.decode_key(k)) if k else "the start"
    if after is None and upto is None:
        return "unknown keys"
    if after is None:
        return f"keys up to {show(upto)}"
    if upto is None:
        return f"keys after {show(after)}"
    return f"keys after {show(after)} up to {show(upto)}"


def _recover_by_scan(d: Diagnosis, file: Source, size: int, path: str, what: str, why: str) -> _TableScan:
    """Without a usable footer/index, find the data blocks one by one in the first `size` bytes."""
    scan = _TableScan(complete=False)
    blocks = []
    for offset, contents in _scan_blocks(file.read(0, min(size, SCAN_LIMIT))):
        try:
            items = list(Block(contents, path=path, offset=offset).entries())
        except CkptioError:
            break
        if not items:
            break  # the metaindex: the index block follows, not data
        blocks.append(items)
    found = f"{len(blocks)} intact data block(s) recovered by scanning" if blocks else "no intact data block found"
    truncated = "truncated-index" if what == "index" else "truncated-file"
    if why == "empty":
        d.problem(truncated, f"the {what} is empty (0 bytes)", path=path)
    elif why == "truncated":
        if blocks:
            d.problem(truncated, f"the {what} is cut short: it has {size} bytes and does not end with a table "
                      f"footer; {found}", path=path)
        else:
            d.problem("bad-magic", f"the {what} does not end with the table magic number and holds no readable "
                      "block: it is truncated beyond repair or not a checkpoint table", path=path)
    else:
        d.problem("unusable-index", f"the {what}'s {'footer' if why == 'footer' else 'index block'} cannot be used; "
                  f"{found}", path=path)
    for items in blocks:
        scan.items.extend(items)
    return scan


def _scan_blocks(data: bytes, max_blocks: int | None = None) -> list[tuple[int, bytes]]:
    """Blocks back to back from offset 0, each recognised by its restart array and trailer checksum."""
    found, start, limit = [], 0, min(len(data), SCAN_LIMIT)
    src = MemorySource(bytes(data[:limit]), name="<scan>")
    while start + 8 + TRAILER_SIZE <= limit and (max_blocks is None or len(found) < max_blocks):
        end = _block_end(data, start, limit)
        if end is None:
            break
        try:
            contents = read_block(src, BlockHandle(start, end - start))
        except CkptioError:
            break
        found.append((start, contents))
        start = end + TRAILER_SIZE
    return found


_TYPE_BYTE = re.compile(rb"[\x00\x01]")


def _block_end(data: bytes, start: int, limit: int) -> int | None:
    """End of the block's contents starting at start: where a restart array and a valid trailer meet."""
    for m in _TYPE_BYTE.finditer(data, start + 8, limit - TRAILER_SIZE + 1):
        e = m.start()
        count = struct.unpack_from("<I", data, e - 4)[0]
        if 1 <= count and start + 4 + 4 * count <= e and struct.unpack_from("<I", data, e - 4 - 4 * count)[0] == 0:
            stored = unmask(struct.unpack_from("<I", data, e + 1)[0])
            if crc32c(data[e:e + 1], crc32c(data[start:e])) == stored:
                return e
    return None


# -- V2 ------------------------------------------------------------------------------------------


def _diagnose_v2(d: Diagnosis, prefix: str) -> None:
    index_path = naming.index_path(prefix)
    if _lfs(index_path):
        d.problem("lfs-pointer", "this .index is a Git LFS pointer, not the file itself; run 'git lfs pull' "
                  "to fetch it", path=index_path)
        for p in sorted(glob.glob(glob.escape(prefix) + ".data-?????-of-?????")):
            if _lfs(p):
                d.problem("lfs-pointer", "this data shard is a Git LFS pointer too", path=p)
        return
    index = _open_file(d, index_path)
    if index is None:
        return
    try:
        scan = _walk_table(d, index, index_path, "index")
    except CkptioError as exc:  # an I/O error, or the file shrank, while it was read piece by piece
        d.problem("unreadable", exc.message, path=exc.path or index_path, offset=exc.offset)
        return
    finally:
        index.close()
    header = _v2_header(d, scan, prefix, index_path)
    d.num_shards, d.big_endian = header.num_shards, header.big_endian
    entries, slices = _v2_entries(d, scan, index_path)
    _v2_lost_names(d, scan, entries, slices, prefix, index_path, header)
    pieces = _v2_pieces(d, entries, slices, index_path)
    _v2_data(d, prefix, header, pieces)
    d._entries = entries
    d._pieces = pieces
    _v2_graph(d, entries, prefix, header, scan)


def _v2_header(d: Diagnosis, scan: _TableScan, prefix: str, index_path: str) -> Header:
    if scan.items and scan.items[0][0] == b"":
        try:
            return Header.parse(scan.items[0][1], path=index_path)
        except CkptioError as exc:
            d.problem("bad-header", f"the bundle header is damaged ({exc.message})", path=index_path, key="")
    elif (scan.items or scan.complete) and not any(after is None for after, _ in scan.lost):
        d.problem("bad-header", "the bundle header (the entry with key \"\") is missing; TensorFlow would misread "
                  "the first tensor as the header", path=index_path)
    counts = sorted({naming.split_data_path(p)[2]
                     for p in glob.glob(glob.escape(prefix) + ".data-?????-of-?????")})
    n = counts[0] if len(counts) == 1 and counts[0] > 0 else 1
    d.note("shard-count-inferred", f"assuming {n} data shard(s) from the data files present", path=index_path)
    return Header(num_shards=n)


def _v2_entries(d: Diagnosis, scan: _TableScan, index_path: str) -> tuple[dict[str, Entry], dict[bytes, Entry]]:
    entries: dict[str, Entry] = {}
    slices: dict[bytes, Entry] = {}
    values: dict[bytes, bytes] = {}
    last = None
    out_of_order = 0
    for key, value in scan.items:
        if key == b"":
            continue
        name = naming.decode_key(key) if key[:1] != b"\x00" else key_label(key)
        if last is not None and key <= last and key not in values:
            out_of_order += 1
            if out_of_order == 1:
                d.problem("keys-out-of-order", f"index keys are not in sorted order ({name!r} comes after "
                          f"{naming.decode_key(last)!r}); TensorFlow's lookups would miss tensors", path=index_path)
        last = key if last is None or key > last else last
        if key in values:
            if values[key] != value:
                d.problem("duplicate-key", "stored twice with different entries", path=index_path, key=name)
                d.damage(naming.decode_key(key) if key[:1] != b"\x00" else name, "stored twice with different entries")
            else:
                d.problem("duplicate-key", "stored twice (identical entries)", path=index_path, key=name)
            continue
        values[key] = value
        try:
            entry = Entry.parse(value, path=index_path, key=name)
        except CkptioError as exc:
            d.problem("bad-entry", exc.message, path=index_path, key=name)
            if key[:1] == b"\x00":
                base = _slice_base(key)
                if base is not None:
                    d.damage(base, f"the index entry of slice {name} is unparsable")
            else:
                d.damage(name, f"its index entry is unparsable ({exc.message})")
            continue
        if key[:1] == b"\x00":
            slices[key] = entry
        else:
            entries[name] = entry
    return entries, slices



def _slice_base(key: bytes) -> str | None:
    try:
        return naming.decode_key(decode_slice_key(key)[0])
    except SliceKeyError:
        return None


def _v2_lost_names(d, scan, entries, slices, prefix, index_path, header) -> None:
    """Name tensors whose index entries were in lost blocks, from the object graph when it survived."""
    for key in scan.lost_keys:
        name = _slice_base(key) if key[:1] == b"\x00" else naming.decode_key(key)
        if name is not None:
            d.damage(name, "its index entry was in a damaged block")
    if not scan.lost and scan.complete:
        return
    data = _read_graph(entries, prefix, header)
    if data is None:
        return
    from ._proto.trackable_object_graph_pb2 import TrackableObjectGraph

    graph = TrackableObjectGraph()
    if not parse_proto(graph, data):
        return
    keys = {a.checkpoint_key for node in graph.nodes for a in node.attributes if a.checkpoint_key}
    for key in sorted(keys - set(entries)):
        raw = naming.encode_key(key)
        where = next((r for r in scan.lost if (r[0] is None or raw > r[0]) and (r[1] is None or raw <= r[1])), None)
        if where is not None or not scan.complete:
            d.damage(key, "its index entry was in a lost block (named by the object graph)")


def _read_graph(entries: dict[str, Entry], prefix: str, header: Header):
    """The parsed TrackableObjectGraph proto if its tensor is present and checks out, else None."""
    entry = entries.get(naming.OBJECT_GRAPH_KEY)
    if entry is None or entry.dtype != dtypes.STRING or entry.num_elements != 1 or entry.slices:
        return None
    path = naming.data_path(prefix, entry.shard_id, header.num_shards)
    if _not_regular(path):
        return None
    try:
        src = FileSource(path)
        try:
            raw = src.read(entry.offset, entry.size)
        finally:
            src.close()
        elements, crc = strings.decode(raw, 1, big_endian=header.big_endian)
    except CkptioError:
        return None
    if crc != unmask(entry.crc32c):
        return None
    return elements[0]


def _v2_graph(d: Diagnosis, entries, prefix: str, header: Header, scan: _TableScan) -> None:
    """The object graph against the tensors, as verify checks it (TF2 checkpoints only)."""
    if naming.OBJECT_GRAPH_KEY in d.damaged:
        return
    data = _read_graph(entries, prefix, header)
    if data is None:
        return
    try:
        from .objgraph import ObjectGraph, graph_problems
    except ImportError:
        return
    try:
        graph = ObjectGraph.parse(data, path=naming.index_path(prefix))
    except CkptioError as exc:
        d.problem("object-graph", exc.message, path=naming.index_path(prefix), key=naming.OBJECT_GRAPH_KEY)
        return
    if d.damaged or scan.lost or not scan.complete:
        lost = len(set(d.damaged) - {naming.OBJECT_GRAPH_KEY})
        d.note("object-graph", f"the object graph still names the {lost} lost tensor(s): TensorFlow restores "
               "the rest of a salvaged copy but fails on the objects they belong to", path=naming.index_path(prefix),
               key=naming.OBJECT_GRAPH_KEY)
        return
    for message in graph_problems(graph, set(entries) - {naming.OBJECT_GRAPH_KEY}):
        d.problem("object-graph", message, path=naming.index_path(prefix), key=naming.OBJECT_GRAPH_KEY)


def _v2_pieces(d: Diagnosis, entries: dict[str, Entry], slices: dict[bytes, Entry],
               index_path: str) -> dict[str, list[tuple[bytes, _Piece]]]:
    """Each named tensor's stored pieces (one, or one per slice), with structural checks done."""
    pieces: dict[str, list[tuple[bytes, _Piece]]] = {}
    referenced = set()
    for name, entry in entries.items():
        if not entry.slices:
            pieces[name] = [(naming.encode_key(name), _Piece(name, entry.shard_id, entry))]
            continue
        problem = tiling_problem(entry.shape, entry.slices)
        if problem:
            d.problem("bad-slices", problem, path=index_path, key=name)
            d.damage(name, problem)
        parts = []
        for s in entry.slices:
            key = slice_key(name, s)
            referenced.add(key)
            piece = slices.get(key)
            label = f"{name}[{s.spec()}]"
            if piece is None:
                d.problem("missing-slice", f"slice {s.spec()} is listed but its entry is missing", path=index_path,
                          key=name)
                d.damage(name, f"the entry of slice {s.spec()} is missing")
                continue
            why = entry.piece_problem(s, piece)
            if why:
                d.problem("bad-slices", why, path=index_path, key=name)
                d.damage(name, why)
                continue
            parts.append((key, _Piece(label, piece.shard_id, piece)))
        pieces[name] = parts
    for key in slices:
        if key not in referenced:
            d.problem("stray-slice", "slice entry that no tensor lists (TensorFlow would show it as an odd "
                      "variable)", path=index_path, key=key_label(key))
    return pieces


def _v2_data(d: Diagnosis, prefix: str, header: Header, pieces) -> None:
    """Check every shard and every piece's bytes; classify shard-level damage once per shard."""
    n = header.num_shards
    present = sorted(glob.glob(glob.escape(prefix) + ".data-?????-of-?????"))
    other_counts = sorted({naming.split_data_path(p)[2] for p in present} - {n})
    if other_counts:
        d.problem("shard-count-mismatch", f"data files for a {other_counts[0]}-shard save are present "
                  f"({os.path.basename(next(p for p in present if naming.split_data_path(p)[2] == other_counts[0]))}) "
                  f"but the index says {n} shard(s): the index and data files come from different saves",
                  path=naming.index_path(prefix))
    by_shard: dict[int, list[tuple[str, _Piece]]] = {}
    for name, parts in pieces.items():
        for _, piece in parts:
            by_shard.setdefault(piece.shard, []).append((name, piece))
    results: dict[str, str | None] = {}  # piece label -> failure reason
    for shard in sorted(by_shard):
        items = sorted(by_shard[shard], key=lambda it: it[1].entry.offset)
        if not 0 <= shard < n:
            for name, piece in items:
                results[piece.label] = f"its entry names shard {shard} but the header says {n} shard(s)"
            d.problem("bad-shard-id", f"{len(items)} entries name shard {shard}, but the header says {n} shard(s)",
                      path=naming.index_path(prefix))
            continue
        path = naming.data_path(prefix, shard, n)
        d._shard_paths[shard] = path
        results.update(_check_shard(d, path, header, items))
    for shard in range(n):
        if shard not in by_shard:
            path = naming.data_path(prefix, shard, n)
            d._shard_paths[shard] = path
            if not os.path.exists(path):
                d.note("missing-empty-shard", "data shard is missing, but no tensor is stored in it", path=path)
    for name, parts in pieces.items():
        for _, piece in parts:
            why = results.get(piece.label)
            if why:
                d.damage(name, why if piece.label == name else f"slice {piece.label[len(name):]}: {why}")
                break


def _check_shard(d: Diagnosis, path: str, header: Header, items) -> dict[str, str | None]:
    results: dict[str, str | None] = {}
    base = os.path.basename(path)
    if not os.path.exists(path):
        d.problem("missing-shard", f"data shard {base} is missing; {len(items)} tensor(s) are stored there",
                  path=path)
        return {piece.label: f"its data shard {base} is missing" for _, piece in items}
    why = _not_regular(path)
    if why:
        d.problem("not-a-file", why, path=path)
        return {piece.label: f"its data shard {base} is not a regular file" for _, piece in items}
    if _lfs(path):
        d.problem("lfs-pointer", "this data shard is a Git LFS pointer, not the file itself; run 'git lfs pull' "
                  "to fetch it", path=path)
        return {piece.label: f"its data shard {base} is a Git LFS pointer" for _, piece in items}
    try:
        src = FileSource(path)
    except CkptioError as exc:
        d.problem("unreadable", exc.message, path=path)
        return {piece.label: f"its data shard {base} cannot be read" for _, piece in items}
    try:
        size = src.size
        need = max(piece.entry.offset + piece.entry.size for _, piece in items)
        beyond, checked, failed = 0, 0, []
        for _, piece in items:
            status, why = _check_piece(src, piece.entry, header.big_endian)
            if status == "beyond":
                beyond += 1
                why = f"its bytes lie past the end of {base} ({size} bytes, truncated)"
            elif status == "bytes":
                checked += 1
                if why:
                    failed.append(piece.label)
            results[piece.label] = why
    finally:
        src.close()
    foreign = len(failed) >= 2 and len(failed) >= FOREIGN_FRACTION * checked or \
        (len(failed) == 1 and checked == 1 and size != need)
    wild = size > 2 * need + 4096 or size < need // 2
    if foreign or (wild and failed):
        d.problem("foreign-shard", f"{len(failed)} of {checked} tensors in {base} do not match their index entries"
                  + (f" and the file is {size} bytes where the index expects {need}" if size != need else "")
                  + ": this data file probably belongs to a different checkpoint (or a different save)", path=path)
        elsewhere = f"{base} does not hold its bytes (the shard seems to come from another checkpoint)"
        for label, why in results.items():
            if why and (label in failed or "past the end" in why):
                results[label] = elsewhere
        return results
    if size < need:
        d.problem("truncated-shard", f"data shard {base} is truncated: it has {size} bytes but the index needs "
                  f"{need}; {beyond} tensor(s) lie (partly) beyond its end", path=path, offset=size)
    elif size > need:
        d.note("trailing-bytes", f"{size - need} bytes at the end of {base} belong to no tensor", path=path,
               offset=need)
    for _, piece in items:
        why = results.get(piece.label)
        if why and "past the end" not in why:
            d.problem("corrupt-tensor", why, path=path, key=piece.label, offset=piece.entry.offset)
    return results


def _check_piece(src, entry: Entry, big_endian: bool) -> tuple[str, str | None]:
    """(status, reason): status "entry" (the entry itself is unusable), "beyond" (bytes past the end
    of the shard) or "bytes" (they were read; reason None if they check out)."""
    problem = entry.data_problem()
    if problem:
        return "entry", problem
    if entry.dtype == dtypes.VARIANT and big_endian:
        return "entry", "variant tensors in big-endian bundles cannot be read (TensorFlow: Unimplemented)"
    if entry.offset + entry.size > src.size:
        if entry.dtype == dtypes.STRING and entry.offset < src.size:
            # The lengths and their checksum come first: what is there tells whether these are
            # the right bytes cut short, or some other file's bytes.
            why = _string_prefix_problem(src.read(entry.offset, src.size - entry.offset), entry, big_endian)
            if why:
                return "bytes", why
        return "beyond", None
    try:
        if entry.dtype == dtypes.STRING:
            if entry.num_elements == 0 and entry.size == 0:
                crc = 0
            else:
                data = src.read(entry.offset, entry.size)
                crc = strings.decode(data, entry.num_elements, big_endian=big_endian)[1]
        elif entry.dtype == dtypes.VARIANT:
            crc = strings.variant_crc(src.read(entry.offset, entry.size), entry.num_elements)
        else:
            crc, pos, end = 0, entry.offset, entry.offset + entry.size
            while pos < end:
                chunk = src.read(pos, min(CHUNK, end - pos))
                crc = crc32c(chunk, crc)
                pos += len(chunk)
    except CkptioError as exc:
        return "bytes", exc.message
    if crc != unmask(entry.crc32c):
        return "bytes", f"checksum does not match: stored {unmask(entry.crc32c):#010x}, computed {crc:#010x}"
    return "bytes", None


def _string_prefix_problem(head: bytes, entry: Entry, big_endian: bool) -> str | None:
    """Why the first bytes of a cut-short string tensor cannot be its start, or None if they can."""
    pos, total, crc = 0, 0, 0
    order = "big" if big_endian else "little"
    for _ in range(entry.num_elements):
        try:
            length, pos = decode_varint(head, pos, len(head))
        except CkptioError:
            return None if len(head) - pos < 10 else "bad string length varint"
        total += length
        if pos + 4 + total > entry.size:
            return f"its string lengths add up to more than its {entry.size} bytes"
        crc = crc32c(length.to_bytes(4 if length <= 0xFFFFFFFF else 8, order), crc)
    if pos + 4 > len(head):
        return None
    if pos + 4 + total != entry.size:
        return f"its string lengths add up to {total} bytes, not the {entry.size - pos - 4} its size leaves"
    if unmask(int.from_bytes(head[pos:pos + 4], order)) != crc:
        return "the length checksum of the string tensor does not match"
    return None


# -- V1 ------------------------------------------------------------------------------------------


def _diagnose_v1(d: Diagnosis, files: list[str], prefix: str) -> None:
    from ._proto import saved_tensor_slice_pb2 as pb
    from .bundle.v1 import tensor_proto_to_array

    m = re.match(r"^(?P<base>.+)-(?P<shard>\d{5})-of-(?P<count>\d{5})$", files[0]) if files else None
    d.num_shards = len(files)
    if m:
        count = int(m["count"])
        d.num_shards = count
        for i in range(count):
            p = f"{m['base']}-{i:05d}-of-{count:05d}"
            if p not in files:
                d.problem("missing-shard", f"V1 file {os.path.basename(p)} of {count} is missing; the tensors "
                          "(or slices) it held are lost", path=p)
    metas: dict[str, tuple[int, tuple, list]] = {}  # name -> (dtype, shape, [(slice, file)])
    values: dict[bytes, tuple[str, bytes]] = {}
    for path in files:
        if _lfs(path):
            d.problem("lfs-pointer", "this V1 file is a Git LFS pointer, not the file itself; run 'git lfs pull'",
                      path=path)
            continue
        table = _open_file(d, path)
        if table is None:
            continue
        try:
            scan = _walk_table(d, table, path, "V1 file")
        except CkptioError as exc:  # an I/O error, or the file shrank, while it was read piece by piece
            d.problem("unreadable", exc.message, path=exc.path or path, offset=exc.offset)
            continue
        finally:
            table.close()
        if not scan.items or scan.items[0][0] != b"":
            if (scan.items or scan.complete) and not any(after is None for after, _ in scan.lost):
                d.problem("bad-header", "the V1 metadata entry (key \"\") is missing or lost; the tensors this "
                          "file describes cannot be named", path=path)
        else:
            sts = pb.SavedTensorSlices()
            if not parse_proto(sts, scan.items[0][1]):
                d.problem("bad-header", "the V1 metadata entry is not a SavedTensorSlices", path=path, key="")
            else:
                for meta in sts.meta.tensor:
                    shape = tuple(dim.size for dim in meta.shape.dim)
                    slices = [Slice(tuple((e.start, e.length if e.HasField("length") else None)
                                          for e in s.extent)) for s in meta.slice]
                    old = metas.get(meta.name)
                    if old is not None and (old[0] != meta.type or old[1] != shape):
                        d.problem("bad-header", "tensor declared with different dtype or shape in two files",
                                  path=path, key=meta.name)
                        d.damage(meta.name, "declared with different dtypes or shapes in two files")
                        continue
                    entry = metas.setdefault(meta.name, (meta.type, shape, []))
                    entry[2].extend((s, path) for s in slices)
        for key, value in scan.items[1:] if scan.items and scan.items[0][0] == b"" else scan.items:
            values[key] = (path, value)
        for key in scan.lost_keys:
            name = _slice_base(key)
            if name is not None:
                d.damage(name, "its data was in a damaged block")
    for name, (dtype, shape, slices) in metas.items():
        if name in d.damaged:
            continue
        entry = Entry(dtype, shape, slices=tuple(s for s, _ in slices))
        problem = entry.problem() or tiling_problem(shape, entry.slices)
        if not problem and not slices:
            problem = "the tensor lists no stored slice (its values are missing)"
        if problem:
            d.problem("bad-slices" if "slice" in problem else "bad-entry", problem, path=prefix, key=name)
            d.damage(name, problem)
            continue
        parts = []
        for s, path in slices:
            key = slice_key(name, s if shape else Slice(()))
            found = values.get(key)
            if found is None:
                d.damage(name, f"slice {s.spec() or '(scalar)'} is listed but its data is lost")
                break
            sts = pb.SavedTensorSlices()
            if not parse_proto(sts, found[1]) or sts.data.name != name:
                d.problem("bad-entry", f"the data of slice {s.spec() or '(scalar)'} is unparsable", path=found[0],
                          key=name)
                d.damage(name, f"the data of slice {s.spec() or '(scalar)'} is unparsable")
                break
            try:
                parts.append((s, tensor_proto_to_array(sts.data.data, dtype, s.shape(shape), path=found[0],
                                                       key=name)))
            except CkptioError as exc:
                d.problem("corrupt-tensor", exc.message, path=found[0], key=name)
                d.damage(name, exc.message)
                break
        else:
            d._arrays[name] = _assemble(entry, parts)
            d._entries[name] = entry  # its dtype: numpy's cannot tell qint8 from int8


def _assemble(entry: Entry, parts):
    """The full tensor from pieces already checked to tile it exactly."""
    import numpy as np

    if len(parts) == 1 and parts[0][0].is_full(entry.shape):
        return parts[0][1].reshape(entry.shape)
    info = dtypes.lookup(entry.dtype)
    out = np.empty(entry.shape, dtype=object if entry.dtype == dtypes.STRING else info.numpy())
    for s, arr in parts:
        out[tuple(slice(a, b) for a, b in s.bounds(entry.shape))] = arr
    return out


# -- salvage -------------------------------------------------------------------------------------


def salvage(diagnosis: Diagnosis, out, *, force: bool = False) -> list[str]:
    """Write the intact tensors into a new V2 checkpoint at prefix out; return their names."""
    import numpy as np

    from .bundle.decode import from_bytes
    from .bundle.writer import BundleWriter
    from .errors import PlanError

    d = diagnosis
    if not d.intact:
        raise PlanError("no intact tensor to salvage", path=d.path)
    inputs = [d._located] if d._located is not None else []
    sources: dict[int, FileSource] = {}
    written = []
    try:
        with BundleWriter(os.fspath(out), force=force, inputs=inputs) as writer:
            for name in d.intact:
                if d.format == "v1":
                    writer.add_array(name, d._arrays[name], dtype=d._entries[name].dtype)
                    written.append(name)
                    continue
                entry = d._entries[name]
                parts = d._pieces[name]
                if entry.slices:
                    writer.add_entry(name, Entry(entry.dtype, entry.shape, slices=entry.slices))
                for key, piece in parts:
                    src = sources.get(piece.shard)
                    if src is None:
                        src = sources[piece.shard] = FileSource(d._shard_paths[piece.shard])
                    e = piece.entry
                    if d.big_endian:
                        info = dtypes.lookup(e.dtype)
                        raw = src.read(e.offset, e.size)
                        if e.dtype == dtypes.STRING:
                            elements, _ = strings.decode(raw, e.num_elements, big_endian=True)
                            arr = np.empty(len(elements), dtype=object)
                            arr[:] = elements
                            arr = arr.reshape(e.shape)
                        else:
                            arr = from_bytes(raw, info, e.shape, big_endian=True)
                        writer.add_array(key, arr, dtype=e.dtype)  # numpy's dtype loses qint8 etc.
                    else:
                        numeric = e.dtype not in (dtypes.STRING, dtypes.VARIANT)
                        writer.copy(key, e, src, verify=numeric, name=piece.label)
                written.append(name)
            writer.finish()
    finally:
        for src in sources.values():
            src.close()
    return written


__all__ = ["diagnose", "salvage", "Diagnosis", "Finding"]
