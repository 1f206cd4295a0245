"""The combined tensors of a merge, computed chunk by chunk on a few threads and handed back in order.

Every combined piece is cut into runs of CHUNK_ELEMENTS elements. A run is a task: read that run
of bytes from every input (positioned reads into the task's own buffers) and combine them
(merge_math.Combiner). Tasks run on a small thread pool, in plan order and across pieces, at most
`slots` at a time: each slot owns its buffers, so memory is a few MiB per slot whatever the size
of the checkpoints. The caller takes the results in order; the crc32c of every input's bytes is
computed there, run after run (the runs of one piece in order, so no crc arithmetic is needed),
and checked at the end of each piece, before anything is renamed into place. Reads, crc32c and
numpy release the GIL, so the tasks and the caller's crc and writes use every core.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor

from . import merge_math as mm
from .bundle import dtypes
from .bundle.decode import from_bytes
from .errors import CorruptCheckpointError, TruncatedError
from .sstable.coding import crc32c

# Bytes of every input asked of the kernel ahead of the runs being read (posix_fadvise WILLNEED):
# from a cold page cache the disk then reads the inputs while the runs before are combined.
READ_AHEAD = 8 << 20
# Pieces up to this many bytes are combined on the calling thread when asked for: for a small
# tensor, handing it to another thread costs more than combining it.
INLINE = 64 << 10


_WILLNEED = getattr(os, "POSIX_FADV_WILLNEED", None)


def default_threads() -> int:
    """Compute threads by default: one per core this process may run on (at most 4)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))


def streamable(ckpts) -> bool:
    """Whether every input is a V2 bundle whose shards allow positioned reads from several threads."""
    for ckpt in ckpts:
        if ckpt.format != "v2":
            return False
        reader = ckpt._reader
        for shard in range(reader.header.num_shards):
            if not hasattr(reader.shard(shard), "readinto"):  # local files (FileSource) only
                return False
    return True


class _Slot:
    """One task's buffers: a run of every input's bytes, and the combiner's float64 scratch."""

    __slots__ = ("inputs", "scratch")

    def __init__(self, n_inputs: int):
        self.inputs = [bytearray() for _ in range(n_inputs)]
        self.scratch: dict = {}

    def views(self, size: int) -> list[memoryview]:
        for i, b in enumerate(self.inputs):
            if len(b) < size:
                self.inputs[i] = bytearray(size)
        return [memoryview(b)[:size] for b in self.inputs]


class _Source:
    """One operand's stored bytes of one piece: where they are and their running crc32c."""

    __slots__ = ("reader", "name", "entry", "src", "crc")

    def __init__(self, reader, name: str, entry):
        reader.check_entry(name, entry)  # bounds and dtype, before any read
        self.reader, self.name, self.entry = reader, name, entry
        self.src = reader.shard(entry.shard_id)
        self.crc = 0

    def advise(self, start: int, n: int) -> None:
        """Ask the kernel to start reading bytes [start, start + n) of this entry (if there are any)."""
        n = min(n, self.entry.size - start)
        fd = self.src.fileno() if n > 0 else None
        if fd is not None and _WILLNEED is not None:
            try:
                os.posix_fadvise(fd, self.entry.offset + start, n, _WILLNEED)
            except OSError:
                pass  # only a hint

    def check(self) -> None:
        try:
            self.reader._check_crc(self.name, self.entry, self.crc)
        except CorruptCheckpointError:
            self.reader._blame_lfs(self.entry)
            raise


class Pipeline:
    """Combined pieces as ordered streams of output bytes, computed ahead on `threads` threads.

    pieces: the combined pieces in the order they will be asked for; sources(piece) gives each
    operand's (reader, name, entry) of a piece; combiner(piece, scratch) makes its Combiner.
    """

    def __init__(self, pieces, sources, combiner, n_inputs: int, threads: int, *, slots: int | None = None):
        self._todo = deque((p, j) for p in pieces if p.size > INLINE for j in range(_runs(p)))
        self._sources, self._combiner = sources, combiner
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="ckptio-merge")
        self._free = [_Slot(n_inputs) for _ in range(slots or threads + 2)]
        self._inline = _Slot(n_inputs)
        self._inflight: deque = deque()  # (piece, run, slot, future), in order
        self._operands: list[_Source] = []  # the operands of the piece whose runs are being scheduled
        self._pending: dict = {}  # id(piece) -> operands, from scheduling until its last run is taken

    def close(self) -> None:
        """Wait for the tasks in flight (their buffers stay alive until then) and stop the threads."""
        for *_, future in self._inflight:
            future.cancel()
        self._pool.shutdown(wait=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def chunks(self, piece):
        """The output bytes of one combined piece, run by run; each view is valid until the next."""
        self._fill()
        if piece.size <= INLINE:
            operands = _operands(piece, self._sources(piece))
            for j in range(_runs(piece)):
                data, out = _task(piece, j, operands, self._inline, self._combiner)
                for source, view in zip(operands, data):
                    source.crc = crc32c(view, source.crc)
                yield out
            for source in operands:
                source.check()
            return
        operands = None
        for j in range(_runs(piece)):
            if not self._inflight:
                raise RuntimeError("merge pipeline: pieces taken out of order")  # a bug, never data
            p, run, slot, future = self._inflight.popleft()
            if p is not piece or run != j:
                raise RuntimeError("merge pipeline: pieces taken out of order")
            operands = self._pending[id(piece)]
            data, out = future.result()
            for source, view in zip(operands, data):
                source.crc = crc32c(view, source.crc)
            try:
                yield out
            finally:
                self._free.append(slot)
            self._fill()
        if operands is not None:
            del self._pending[id(piece)]
            for source in operands:
                source.check()

    def _fill(self) -> None:
        """Start the next runs while slots are free."""
        while self._free and self._todo:
            piece, j = self._todo.popleft()
            if j == 0:
                self._operands = _operands(piece, self._sources(piece))
                self._pending[id(piece)] = self._operands
            per = mm.CHUNK_ELEMENTS * dtypes.lookup(piece.out_dtype).itemsize
            ahead = max(1, READ_AHEAD // per)  # runs
            for source in self._operands:  # the first READ_AHEAD bytes, then one run `ahead` runs on
                if j == 0:
                    source.advise(0, ahead * per)
                else:
                    source.advise((j + ahead - 1) * per, per)
            slot = self._free.pop()
            future = self._pool.submit(_task, piece, j, self._operands, slot, self._combiner)
            self._inflight.append((piece, j, slot, future))


def _operands(piece, sources) -> list[_Source]:
    """Each operand's bytes of a piece, checked to be readable and of one size."""
    operands = [_Source(*s) for s in sources]
    if len({s.entry.size for s in operands}) != 1:
        # Entries of equal dtype and shape always have equal sizes; this one is short.
        raise CorruptCheckpointError("inputs gave this tensor's elements in unequal runs", key=piece.name)
    return operands


def _runs(piece) -> int:
    """Tasks a piece is cut into (an empty tensor is one empty run)."""
    per = mm.CHUNK_ELEMENTS * dtypes.lookup(piece.out_dtype).itemsize
    return max(1, -(-piece.size // per))


def _task(piece, j: int, operands, slot: _Slot, make_combiner):
    """Read run j of every operand into the slot and combine it: (the input views, the output bytes)."""
    info = dtypes.lookup(piece.out_dtype)
    per = mm.CHUNK_ELEMENTS * info.itemsize
    start = j * per
    n = max(0, min(per, operands[0].entry.size - start))
    views = slot.views(n)
    for source, view in zip(operands, views):
        got = source.src.readinto(source.entry.offset + start, view) if n else 0
        if got != n:
            raise TruncatedError(
                f"shard ends after {got} of {n} bytes",
                path=source.src.name,
                key=source.name,
                offset=source.entry.offset + start,
            )
    big = operands[0].reader.header.big_endian
    xs = [from_bytes(v, info, (n // info.itemsize,), big_endian=big) for v in views]
    return views, make_combiner(piece, slot.scratch)(xs)
