"""Read a table: footer and index block on open, data blocks on demand."""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from operator import lt as _lt

from ..errors import CorruptCheckpointError
from .block import Block
from .coding import VarintError
from .format import FOOTER_SIZE, TRAILER_SIZE, BlockHandle, Footer, read_block


class Table:
    """An open table over a Source. Keys and values are bytes."""

    def __init__(self, source, *, verify: bool = True):
        self.source = source
        self.verify = verify
        path = source.name
        if source.size < FOOTER_SIZE:
            raise CorruptCheckpointError(
                f"file is {source.size} bytes, too short for a table footer (48 bytes)", path=path
            )
        footer_at = source.size - FOOTER_SIZE
        self.footer = Footer.decode(source.read(footer_at, FOOTER_SIZE), path=path, offset=footer_at)
        index = Block(
            read_block(source, self.footer.index, what="index block", verify=verify),
            path=path,
            offset=self.footer.index.offset,
        )
        self.index: list[tuple[bytes, BlockHandle]] = index_handles(index, self.footer, path=path)
        self._separators = [key for key, _ in self.index]

    def check_metaindex(self) -> None:
        """Read and decode the metaindex block, checksum checked; raise if it is damaged.

        Opening never reads it: TensorFlow does not either (FORMAT §2.6), so a table whose
        metaindex alone is damaged still loads there. Only a full check (verify) calls this.
        """
        check_metaindex(self.source, self.footer)

    def block(self, i: int) -> Block:
        """Read and decode data block i."""
        handle = self.index[i][1]
        return Block(
            read_block(self.source, handle, what=f"data block {i}", verify=self.verify),
            path=self.source.name,
            offset=handle.offset,
        )

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        """Every (key, value) in key order, checking that order holds across blocks."""
        last = None
        for i in range(len(self.index)):
            separator = self.index[i][0]
            block = self.block(i)
            # A whole block at a time, its order checked in C; a block that fails any check is
            # walked entry by entry instead, which yields what precedes the fault and words it.
            keys: list[bytes] | None
            try:
                keys, values = block.items()
            except CorruptCheckpointError:
                keys, values = None, []
            if keys is not None and (
                not keys or (last is None or keys[0] > last) and keys[-1] <= separator and all(map(_lt, keys, keys[1:]))
            ):
                if keys:
                    last = keys[-1]
                    yield from zip(keys, values)
                continue
            for key, value in block.entries():
                if last is not None and key <= last:
                    what = "duplicate key" if key == last else "keys out of order"
                    raise CorruptCheckpointError(f"{what} in data block {i}", path=self.source.name, key=key)
                if key > separator:
                    raise CorruptCheckpointError(
                        f"key is beyond its index separator in data block {i}", path=self.source.name, key=key
                    )
                last = key
                yield key, value

    def first(self) -> tuple[bytes, bytes] | None:
        """The first entry, reading only the first data block."""
        for i in range(len(self.index)):
            for item in self.block(i).entries():
                return item
        return None

    def get(self, key: bytes) -> bytes | None:
        """Point lookup: binary search the index, then one data block."""
        i = bisect.bisect_left(self._separators, key)
        if i == len(self.index):
            return None
        for found, value in self.block(i).seek(key):
            return value if found == key else None
        return None


def check_metaindex(source, footer: Footer) -> None:
    """Read and decode the metaindex block at footer.metaindex, checksum checked; raise if damaged."""
    handle = footer.metaindex
    contents = read_block(source, handle, what="metaindex block")
    list(Block(contents, path=source.name, offset=handle.offset).entries())


def index_handles(index: Block, footer: Footer, *, path=None) -> list[tuple[bytes, BlockHandle]]:
    """The (separator, handle) pairs of an index block, checked to be in order and in bounds."""
    handles: list[tuple[bytes, BlockHandle]] = []
    data_end = 0
    for key, value in index.entries():
        try:
            handle, _ = BlockHandle.decode(value, 0, len(value))
        except VarintError:
            raise CorruptCheckpointError(
                "bad block handle in index block", path=path, offset=footer.index.offset
            ) from None
        if handles and key <= handles[-1][0]:
            raise CorruptCheckpointError("index block keys are not in order", path=path, offset=footer.index.offset)
        # Data blocks lie back to back in key order before the metaindex and index. Holding
        # the handles to that keeps a scan linear in the file size (no block read twice).
        if handle.offset < data_end or handle.offset + handle.size + TRAILER_SIZE > footer.index.offset:
            raise CorruptCheckpointError(
                f"index entry {len(handles)} points at bytes [{handle.offset}, "
                f"{handle.offset + handle.size + TRAILER_SIZE}), overlapping another block or the index",
                path=path,
                offset=footer.index.offset,
            )
        data_end = handle.offset + handle.size + TRAILER_SIZE
        handles.append((key, handle))
    return handles
