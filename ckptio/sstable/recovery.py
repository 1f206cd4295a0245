"""Read what survives of a damaged table: every intact block, each unreadable part reported once.

walk() follows the footer and the index block as far as they can be trusted; when the footer or
the index block is lost, recover() finds data blocks by scanning the bytes instead. A block is
recognised without its handle by what ends it:

    contents (entries, fixed32 restart[0..n-1] with restart[0] == 0, fixed32 n >= 1)
    trailer  (u8 compression type 0 or 1, fixed32 masked crc32c(contents + type byte))

Bytes and keys only: what the keys name is the caller's business (show_key words them).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import CkptioError
from ..store.base import Source
from .block import Block
from .coding import crc32c, unmask
from .format import FOOTER_SIZE, MAGIC_BYTES, TRAILER_SIZE, BlockHandle, Footer, read_block
from .table import check_metaindex, index_handles

SCAN_LIMIT = 16 << 20  # bytes of a table searched for intact blocks when its footer/index is lost


@dataclass(frozen=True, slots=True)
class Damage:
    """One unreadable part of a table, in a word and a sentence (kind "truncated" for a cut file)."""

    kind: str
    message: str
    offset: int | None = None


@dataclass(slots=True)
class TableScan:
    """The entries of every readable block, and what was lost."""

    items: list[tuple[bytes, bytes]] = field(default_factory=list)
    lost: list[tuple[bytes | None, bytes | None]] = field(default_factory=list)  # key ranges in lost blocks
    lost_keys: list[bytes] = field(default_factory=list)  # keys read from blocks whose checksum failed
    complete: bool = True  # False when blocks may be missing without a known key range
    damage: list[Damage] = field(default_factory=list)

    def add(self, kind: str, message: str, offset: int | None = None) -> None:
        self.damage.append(Damage(kind, message, offset))


class _Bytes(Source):
    """Bytes in memory, so the table layer's read_block checks a found block as it checks any."""

    def __init__(self, data: bytes):
        super().__init__()
        self._data, self.name, self.size = data, "<scan>", len(data)

    def _pread(self, offset: int, length: int) -> bytes:
        return self._data[offset : offset + length]


class _Head(Source):
    """The first `size` bytes of another source: a table with bytes after its footer."""

    def __init__(self, src: Source, size: int):
        super().__init__()
        self._src, self.name, self.size = src, src.name, size

    def _pread(self, offset: int, length: int) -> bytes:
        return self._src.read(offset, length)


def walk(
    file: Source, what: str, *, show_key: Callable[[bytes], str] = repr, damage: list[Damage] | None = None
) -> TableScan:
    """Every entry of every readable block of the table in file (`what` names it in messages).

    The file is read block by block through its Source (sizes checked by read_block), and
    searched at most SCAN_LIMIT bytes from either end: memory never follows the file's size.
    Damage is appended to `damage` as it is found, so a caller still has it when a read fails.
    """
    scan = TableScan(damage=[] if damage is None else damage)
    size = file.size
    end = size
    magic_ok = file.read(size - 8, 8) == MAGIC_BYTES if size >= FOOTER_SIZE else False
    if not magic_ok:
        tail_at = max(0, size - SCAN_LIMIT)
        at = file.read(tail_at, size - tail_at).rfind(MAGIC_BYTES)
        at = at + tail_at if at >= 0 else -1
        if size >= FOOTER_SIZE and at >= FOOTER_SIZE - 8:
            scan.add(
                "trailing-bytes",
                f"{size - at - 8} bytes follow the {what}'s footer (TensorFlow reads the "
                f"footer from the end of the file and fails); the table itself ends at offset {at + 8}",
                offset=at + 8,
            )
            end = at + 8
        elif size >= FOOTER_SIZE and sum(a == b for a, b in zip(file.read(size - 8, 8), MAGIC_BYTES)) >= 5:
            scan.add(
                "bad-magic",
                f"the table magic number at the end of the {what} is damaged "
                "(TensorFlow: 'not an sstable (bad magic number)'); reading on regardless",
                offset=size - 8,
            )
        else:
            return recover(file, size, what, why="truncated" if size else "empty", scan=scan)
    footer_at = end - FOOTER_SIZE
    try:
        footer = Footer.decode(file.read(footer_at, FOOTER_SIZE - 8) + MAGIC_BYTES, path=file.name, offset=footer_at)
    except CkptioError as exc:
        scan.add("bad-footer", f"the {what}'s footer is damaged ({exc.message})", offset=footer_at)
        return recover(file, footer_at, what, why="footer", scan=scan)
    src = file if end == size else _Head(file, end)
    handles = _handles(src, footer, what, scan)
    if handles is None:
        return recover(file, min(footer_at, footer.metaindex.offset), what, why="index", scan=scan)
    try:
        check_metaindex(src, footer)
    except CkptioError as exc:
        # As verify reports it: TF never reads this block, but its bytes changed after they were written.
        scan.add(
            "bad-metaindex",
            f"the metaindex block is damaged ({exc.message}); TensorFlow never reads it, "
            "so the tensors are unaffected, but the file is not as it was written (salvage writes a "
            "clean copy)",
            offset=footer.metaindex.offset,
        )
    _read_data_blocks(src, handles, scan, show_key)
    return scan


def _handles(src: Source, footer: Footer, what: str, scan: TableScan) -> list[tuple[bytes, BlockHandle]] | None:
    """The index block's handles, or None when they cannot be used (the damage noted)."""
    path, handle = src.name, footer.index
    try:
        index = Block(read_block(src, handle, what="index block"), path=path, offset=handle.offset)
        return index_handles(index, footer, path=path)
    except CkptioError as exc:
        # The index block's own checksum failed: its handles may still be right, and every data
        # block they lead to is checked by its own checksum.
        handles = None
        try:
            index = Block(read_block(src, handle, what="index block", verify=False), path=path, offset=handle.offset)
            handles = index_handles(index, footer, path=path)
        except CkptioError:
            pass
        scan.add(
            "bad-index-block",
            f"the {what}'s index block is damaged ({exc.message})"
            + ("; its block handles still look usable" if handles else ""),
            offset=handle.offset,
        )
        return handles or None


def _read_data_blocks(src: Source, handles, scan: TableScan, show_key) -> None:
    """Every data block's entries; a block that fails its checks is lost with its key range."""
    path, previous = src.name, None
    for i, (separator, handle) in enumerate(handles):
        try:
            block = Block(read_block(src, handle, what=f"data block {i}"), path=path, offset=handle.offset)
            scan.items.extend(block.entries())
        except CkptioError as exc:
            scan.lost.append((previous, separator))
            try:  # the keys are still worth naming (never their values: nothing vouches for them)
                block = Block(read_block(src, handle, verify=False), path=path, offset=handle.offset)
                scan.lost_keys.extend(
                    k for k, _ in block.entries() if k and (previous is None or k > previous) and k <= separator
                )
            except CkptioError:
                pass
            scan.add(
                "corrupt-block",
                f"data block {i} (bytes [{handle.offset}, {handle.offset + handle.size + 5})) "
                f"is unreadable ({exc.message}); the entries stored in it "
                f"({_range_text(previous, separator, show_key)}) are lost",
                offset=handle.offset,
            )
        previous = separator


def _range_text(after: bytes | None, upto: bytes | None, show_key) -> str:
    def show(k):
        return show_key(k) if k else "the start"

    if after is None and upto is None:
        return "unknown keys"
    if after is None:
        return f"keys up to {show(upto)}"
    if upto is None:
        return f"keys after {show(after)}"
    return f"keys after {show(after)} up to {show(upto)}"


def recover(file: Source, size: int, what: str, why: str, *, scan: TableScan | None = None) -> TableScan:
    """Without a usable footer/index, find the data blocks one by one in the first `size` bytes.

    why is "empty", "truncated" (no footer at the end), "footer" or "index" (that part is damaged).
    """
    damage = scan.damage if scan is not None else []
    scan = TableScan(complete=False, damage=damage)
    blocks = []
    for offset, contents in scan_blocks(file.read(0, min(size, SCAN_LIMIT))):
        try:
            items = list(Block(contents, path=file.name, offset=offset).entries())
        except CkptioError:
            break
        if not items:
            break  # the metaindex: the index block follows, not data
        blocks.append(items)
    found = f"{len(blocks)} intact data block(s) recovered by scanning" if blocks else "no intact data block found"
    if why == "empty":
        scan.add("truncated", f"the {what} is empty (0 bytes)")
    elif why == "truncated":
        if blocks:
            scan.add(
                "truncated",
                f"the {what} is cut short: it has {size} bytes and does not end with a table footer; {found}",
            )
        else:
            scan.add(
                "bad-magic",
                f"the {what} does not end with the table magic number and holds no readable "
                "block: it is truncated beyond repair or not a checkpoint table",
            )
    else:
        scan.add(
            "unusable-index", f"the {what}'s {'footer' if why == 'footer' else 'index block'} cannot be used; {found}"
        )
    for items in blocks:
        scan.items.extend(items)
    return scan


def scan_blocks(data: bytes, max_blocks: int | None = None) -> list[tuple[int, bytes]]:
    """Blocks back to back from offset 0, each recognised by its restart array and trailer checksum."""
    found: list[tuple[int, bytes]] = []
    start, limit = 0, min(len(data), SCAN_LIMIT)
    src = _Bytes(bytes(data[:limit]))
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
            if crc32c(data[e : e + 1], crc32c(data[start:e])) == stored:
                return e
    return None
