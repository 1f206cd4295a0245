"""The combined tensors of a merge, computed chunk by chunk on a few threads and handed back in order.

Every combined piece is cut into runs of CHUNK_ELEMENTS elements. A run is a task: read that run
from every input in cache-sized blocks (positioned reads into the task's own buffers), take each
block's crc32c and combine it (merge_math.Combiner) while it is still in cache. Tasks run on a small
thread pool, in plan order and across pieces, at most `slots` at a time: each slot owns its
buffers, so memory is a few MiB per slot whatever the size of the checkpoints. The caller takes the
results in order, writes each run at once, and joins the runs' crc32c (crc32c_combine) into each
input's crc32c of the piece, checked at the end of each piece, before anything is renamed into
place. Reads, crc32c and numpy release the GIL, so the tasks and the caller's writes use every core.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numpy as np

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
# Elements of every input read and combined at a time within a run: 512 KiB of float32 per input and
# 1 MiB of float64 sums. Each block costs a GIL hand-off per read, crc32c and ufunc, so bigger blocks
# pay less: a warm 3 x 1 GiB merge took 1.25 s at 64K elements, 1.07 s at 128K, 1.03 s at 256K and
# 1.08 s at 512K (2-core VM). 256K held 84 MiB at peak (128K: 63 MiB), and blocks grow with the inputs.
BLOCK_ELEMENTS = 1 << 17


_WILLNEED = getattr(os, "POSIX_FADV_WILLNEED", None)


def default_threads() -> int:
    """Compute threads by default: one per core this process may run on (at most 4)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))


def streamable(ckpts) -> bool:
    """Whether every input keeps checksummed byte ranges (a V2 bundle) in shards that allow positioned
    reads from several threads."""
    for ckpt in ckpts:
        reader = ckpt.reader
        if not reader.checksums:  # the streams combine and check each piece's crc32c
            return False
        for shard in range(reader.num_shards):
            if not hasattr(reader.shard(shard), "readinto"):  # local files (FileSource) only
                return False
    return True


class _Slot:
    """One task's buffers: a block of every input's bytes, the run's output, the combiner's scratch."""

    __slots__ = ("block", "out", "scratch")

    def __init__(self, n_inputs: int):
        self.block = np.empty((n_inputs, 0), np.uint8)
        self.out = np.empty(0, np.uint8)
        self.scratch: dict = {}

    def blocks(self, size: int) -> np.ndarray:
        """(inputs, >= size) bytes: a block of every input in a row of its own (reused)."""
        if self.block.shape[1] < size:
            self.block = np.empty((self.block.shape[0], size), np.uint8)
        return self.block

    def output(self, size: int) -> np.ndarray:
        if self.out.size < size:
            self.out = np.empty(size, np.uint8)
        return self.out[:size]


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
                crcs, out = _task(piece, j, operands, self._inline, self._combiner)
                for source, crc in zip(operands, crcs):
                    source.crc = crc32c_combine(source.crc, crc, len(out))
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
            crcs, out = future.result()
            for source, crc in zip(operands, crcs):
                source.crc = crc32c_combine(source.crc, crc, len(out))
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
            per = mm.CHUNK_ELEMENTS * dtypes.require(piece.out_dtype).itemsize
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
    per = mm.CHUNK_ELEMENTS * dtypes.require(piece.out_dtype).itemsize
    return max(1, -(-piece.size // per))


def _task(piece, j: int, operands, slot: _Slot, make_combiner):
    """Combine run j of a piece: (each operand's crc32c of its bytes of the run, the output bytes).

    The run is read and combined block by block (BLOCK_ELEMENTS), into buffers reused from block
    to block, so the bytes just read, their float64 sums and the crc32c stay in the core's cache
    instead of passing through memory again; the output of the whole run is written at once.
    """
    info = dtypes.require(piece.out_dtype)
    size = info.itemsize
    per = mm.CHUNK_ELEMENTS * size
    start = j * per
    n = max(0, min(per, operands[0].entry.size - start))
    block = max(1, min(BLOCK_ELEMENTS, mm.CHUNK_ELEMENTS)) * size
    buffers = slot.blocks(min(block, n))
    out = slot.output(n)
    combine = make_combiner(piece, slot.scratch)
    # Views of the stored bytes as they are (little-endian, whole bytes); else decoded per block.
    native = not (operands[0].reader.header.big_endian and size > 1) and not mm.info_is_sub_byte(info)
    dt = mm.storage(info)
    crcs = [0] * len(operands)
    with np.errstate(all="ignore"):  # inf and NaN follow IEEE rules, as in TensorFlow; no warnings
        for at in range(0, n, block):
            m = min(block, n - at)
            rows = buffers[:, :m]
            for i, source in enumerate(operands):
                offset = source.entry.offset + start + at
                got = source.src.readinto(offset, memoryview(rows[i]))
                if got != m:
                    raise TruncatedError(
                        f"shard ends after {got} of {m} bytes", path=source.src.name, key=source.name, offset=offset
                    )
                crcs[i] = crc32c(rows[i], crcs[i])
            if native:
                xs = [row.view(dt) for row in rows]
            else:
                big = operands[0].reader.header.big_endian
                xs = [from_bytes(row, info, (m // size,), big_endian=big) for row in rows]
            combine.apply(xs, out[at : at + m].view(dt))
    return crcs, out.data  # an empty tensor: no bytes, and crc32c 0 of each operand's nothing


_CRC32C = 0x82F63B78  # the CRC-32C polynomial, bit-reversed


def _multmodp(a: int, b: int) -> int:
    """a * b modulo the CRC-32C polynomial (bit-reversed: x^0 is the top bit), as zlib's multmodp."""
    m, p = 1 << 31, 0
    while True:
        if a & m:
            p ^= b
            if not a & (m - 1):
                return p
        m >>= 1
        b = (b >> 1) ^ _CRC32C if b & 1 else b >> 1


_X2N = [1 << 30]  # x^(2^k) modulo the polynomial, k = 0 .. 31
for _ in range(31):
    _X2N.append(_multmodp(_X2N[-1], _X2N[-1]))


@lru_cache(maxsize=64)
def _shift(nbytes: int) -> int:
    """x^(8 nbytes) modulo the polynomial: what appending nbytes does to a crc."""
    p, k = 1 << 31, 3
    while nbytes:
        if nbytes & 1:
            p = _multmodp(_X2N[k & 31], p)
        nbytes >>= 1
        k += 1
    return p


def crc32c_combine(crc1: int, crc2: int, nbytes2: int) -> int:
    """The crc32c of A + B from crc32c(A), crc32c(B) and len(B) (zlib's crc32_combine, for CRC-32C)."""
    if nbytes2 == 0:
        return crc1
    return _multmodp(_shift(nbytes2), crc1) ^ crc2
