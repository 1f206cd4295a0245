"""Read-ahead for files where every request costs a round trip (remote stores).

A reader announces the ranges it will read next, in order (Source.will_need). They become
requests: neighbouring ranges closer than GAP are coalesced, no request is larger than
MAX_REQUEST, and bytes already fetched or on their way are not asked for again. Requests run on
one shared pool of WORKERS threads, many at a time, in announced order, while the bytes fetched
and not yet read stay within a per-file WINDOW and a process-wide BUDGET; a request's bytes are
dropped once every announced byte in it has been read. A read of a range not yet requested
fetches it at once on the reader's thread, outside the budget, so readers waiting on each
other's files can never deadlock (memory then exceeds the budget by at most one request per
reading thread).
"""

from __future__ import annotations

import os
import threading
import weakref
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from ..errors import TruncatedError

GAP = 256 << 10  # fetching this many unwanted bytes costs less than one more request
# With WORKERS requests in flight, each pays the round trip once: 8 MiB requests halve how often
# (vs 4 MiB) and a window of WORKERS of them keeps all in flight on a one-file checkpoint.
MAX_REQUEST = 8 << 20
WINDOW = 128 << 20  # per file: fetched-or-in-flight bytes not yet read
BUDGET = 256 << 20  # the same, over every file in the process
WORKERS = 16

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def pool() -> ThreadPoolExecutor:
    """The shared fetch pool (started on first use)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="ckptio-fetch")
        return _pool


def _after_fork_in_child() -> None:
    # A forked child inherits the pool without its threads: work submitted there would never run.
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()
    BUDGET_SHARED.used, BUDGET_SHARED._waiting = 0, []


class Budget:
    """Bytes that read-ahead may hold at once; files refused room are woken when some is given back."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()
        self._waiting: list[weakref.ref] = []

    def take(self, n: int, waiter: Readahead) -> bool:
        """Take n bytes (always granted when nothing is taken, so one huge request still runs)."""
        with self._lock:
            if self.used == 0 or self.used + n <= self.limit:
                self.used += n
                return True
            if not any(w() is waiter for w in self._waiting):
                self._waiting.append(weakref.ref(waiter))
            return False

    def give(self, n: int, first: Readahead | None = None) -> None:
        """Give n bytes back; `first` (the file being read) may take them before those waiting."""
        if n <= 0:
            return
        with self._lock:
            self.used -= n
            waiting, self._waiting = self._waiting, []
        if first is not None:
            first.pump()
        for ref in waiting:  # outside every lock: a waiter's pump takes its own
            waiter = ref()
            if waiter is not None:
                waiter.pump()


BUDGET_SHARED = Budget(BUDGET)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


@dataclass(slots=True)
class Chunk:
    """One request: bytes [start, end), `wanted` announced bytes in it not yet read."""

    start: int
    end: int
    wanted: int
    future: Future | None = None
    charged: int = 0  # bytes taken from the budget and the window for it


class Readahead:
    """Announced ranges of one file, fetched ahead with fetch(offset, length) and served by take()."""

    def __init__(
        self,
        fetch: Callable[[int, int], bytes],
        name: str,
        *,
        gap: int = GAP,
        max_request: int = MAX_REQUEST,
        window: int = WINDOW,
        budget: Budget | None = None,
        executor: ThreadPoolExecutor | None = None,
    ):
        self._fetch, self.name = fetch, name
        self.gap, self.max_request, self.window = gap, max_request, window
        self.budget = budget if budget is not None else BUDGET_SHARED
        self._executor = executor
        self._lock = threading.Lock()
        self._starts: list[int] = []  # live chunks, sorted by start; they never overlap
        self._live: list[Chunk] = []
        self._queue: deque[Chunk] = deque()  # announced, not yet requested, in announced order
        self.charged = 0  # bytes this file holds of the budget
        self._closed = False

    # -- announcing ------------------------------------------------------------------------------

    def plan(self, ranges: Iterable[tuple[int, int]]) -> None:
        """Add ranges to fetch ahead, in the order they will be read."""
        with self._lock:
            if self._closed:
                return
            last = None  # the chunk this announcement made last, which the next range may extend
            for offset, length in ranges:
                pos, end = offset, offset + length
                while pos < end:
                    i = bisect_right(self._starts, pos) - 1
                    if i >= 0 and self._live[i].end > pos:  # already requested (or announced)
                        covering = self._live[i]
                        hi = min(end, covering.end)
                        covering.wanted += hi - pos
                        pos = hi
                        continue
                    hi = min(end, self._starts[i + 1] if i + 1 < len(self._starts) else end)
                    if (
                        last is not None
                        and i >= 0
                        and self._live[i] is last
                        and last.future is None
                        and pos - last.end <= self.gap
                        and last.start + self.max_request > pos
                    ):  # coalesce with the chunk just made, up to the request cap
                        grown = min(hi, last.start + self.max_request)
                        last.wanted += grown - pos
                        last.end = pos = grown
                        continue
                    piece = min(hi, pos + self.max_request)
                    last = Chunk(pos, piece, piece - pos)
                    self._starts.insert(i + 1, pos)
                    self._live.insert(i + 1, last)
                    self._queue.append(last)
                    pos = piece
        self.pump()

    def pump(self) -> None:
        """Request queued chunks in order while the window and the budget have room."""
        with self._lock:
            while self._queue and not self._closed:
                chunk = self._queue[0]
                if chunk.future is not None:  # a reader fetched it already
                    self._queue.popleft()
                    continue
                n = chunk.end - chunk.start
                if self.charged and self.charged + n > self.window:
                    break
                if not self.budget.take(n, self):
                    break
                chunk.charged = n
                self.charged += n
                chunk.future = (self._executor or pool()).submit(self._fetch, chunk.start, n)
                self._queue.popleft()

    # -- reading ---------------------------------------------------------------------------------

    def take(self, offset: int, length: int) -> bytes | None:
        """The bytes [offset, offset+length) from announced chunks (waiting for them), or None
        when the range is not wholly announced (the caller fetches it itself)."""
        got = self._gather(offset, length)
        if got is None:
            return None
        chunks, parts = got
        out = bytes(parts[0]) if len(parts) == 1 else b"".join(parts)
        self._consumed(chunks, offset, offset + length)
        return out

    def take_into(self, offset: int, buf: memoryview) -> bool:
        """Fill buf with the bytes at offset as take() would, without an intermediate copy; False
        when they are not wholly announced."""
        got = self._gather(offset, len(buf))
        if got is None:
            return False
        chunks, parts = got
        pos = 0
        for part in parts:
            buf[pos : pos + len(part)] = part
            pos += len(part)
        self._consumed(chunks, offset, offset + len(buf))
        return True

    def _gather(self, offset: int, length: int) -> tuple[list[Chunk], list[memoryview]] | None:
        """The chunks holding [offset, offset+length) and their slices of it, once fetched."""
        if length <= 0:
            return None
        end = offset + length
        mine: list[tuple[Chunk, Future]] = []
        with self._lock:
            chunks = self._covering(offset, end)
            if chunks is None:
                return None
            futures: list[Future] = []
            for chunk in chunks:
                if chunk.future is None:  # not requested yet: fetch it now, on this thread
                    chunk.future = Future()
                    mine.append((chunk, chunk.future))
                futures.append(chunk.future)
        for chunk, future in mine:
            try:
                future.set_result(self._fetch(chunk.start, chunk.end - chunk.start))
            except BaseException as exc:
                future.set_exception(exc)
        parts = []
        try:
            for chunk, future in zip(chunks, futures):
                data = future.result()
                lo, hi = max(offset, chunk.start), min(end, chunk.end)
                if len(data) < hi - chunk.start:
                    raise TruncatedError(
                        f"read {len(data)} of {chunk.end - chunk.start} bytes", path=self.name, offset=chunk.start
                    )
                parts.append(memoryview(data)[lo - chunk.start : hi - chunk.start])
        except BaseException:
            freed = 0
            with self._lock:
                for chunk, future in zip(chunks, futures):  # a failed request is forgotten: a later read asks again
                    if future.done() and future.exception() is not None:
                        freed += self._drop(chunk)
            self.budget.give(freed)
            raise
        return chunks, parts

    def _consumed(self, chunks: list[Chunk], offset: int, end: int) -> None:
        """Count [offset, end) as read; drop the chunks with nothing left to read."""
        freed = 0
        with self._lock:
            for chunk in chunks:
                chunk.wanted -= min(end, chunk.end) - max(offset, chunk.start)
                if chunk.wanted <= 0:
                    freed += self._drop(chunk)
        if freed:
            self.budget.give(freed, first=self)

    def close(self) -> None:
        """Forget everything announced; requests on their way finish unread."""
        with self._lock:
            self._closed = True
            freed = 0
            for chunk in list(self._live):
                if chunk.future is not None:
                    chunk.future.cancel()
                freed += self._drop(chunk)
            self._queue.clear()
        self.budget.give(freed)

    def _covering(self, offset: int, end: int) -> list[Chunk] | None:
        """The live chunks that together hold [offset, end), or None. REQUIRES: the lock."""
        i = bisect_right(self._starts, offset) - 1
        out, pos = [], offset
        while pos < end:
            if i < 0 or i >= len(self._live) or self._live[i].start > pos or self._live[i].end <= pos:
                return None
            out.append(self._live[i])
            pos = self._live[i].end
            i += 1
        return out

    def _drop(self, chunk: Chunk) -> int:
        """Forget a chunk; return the budget bytes it held. REQUIRES: the lock."""
        i = bisect_right(self._starts, chunk.start) - 1
        if i >= 0 and self._live[i] is chunk:
            del self._starts[i], self._live[i]
        freed, chunk.charged = chunk.charged, 0
        self.charged -= freed
        return freed


__all__ = ["Budget", "Readahead", "GAP", "MAX_REQUEST", "WINDOW", "BUDGET", "WORKERS"]
