"""Read-ahead for byte ranges about to be copied in a known order: one thread keeps a bounded window
of them requested from the disk ahead of the copy, so a cold read keeps the disk busy as `cp` does.

Local files are asked with posix_fadvise(WILLNEED), which queues the reads and returns: the pages
land in the page cache, where copy_file_range and the crc checker find them. Linux reads at most
max(read_ahead_kb, max_sectors_kb) of the device per call and drops the rest of the request, so each
call asks for no more than max_sectors_kb (request_unit). Where there is no fadvise the thread reads
the bytes itself (pread into one buffer). Neighbouring ranges closer than GAP are asked for as one:
a small gap costs less than a request.
"""

from __future__ import annotations

import bisect
import os
import threading
from collections.abc import Iterable

from ..errors import CkptioError, ReadError
from ..store.base import Source

WINDOW = 64 << 20  # bytes requested ahead of the copy at most (page cache, not process memory)
GAP = 64 << 10  # ranges this close are requested as one (the gap's bytes are read too)
UNIT = 128 << 10  # bytes per request where the device's limit is unknown (Linux's smallest default)
MAX_UNIT = 8 << 20
MIN_BYTES = 1 << 20  # less than this in all: no thread (it would cost more than it saves)


_units: dict[int, int] = {}  # st_dev -> request_unit


def request_unit(fd: int) -> int:
    """Bytes one WILLNEED on fd surely reads whole on Linux: its block device's max_sectors_kb (sysfs;
    the cap is the larger of that and the file's readahead window, which random mode may zero),
    within [UNIT, MAX_UNIT]; UNIT where the file is on no block device sysfs names."""
    try:
        dev = os.fstat(fd).st_dev
    except OSError:
        return UNIT
    if dev not in _units:
        unit = UNIT
        base = f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}"
        for queue in (base + "/queue", base + "/../queue"):  # a disk's own, or a partition's disk's
            try:
                with open(queue + "/max_sectors_kb") as f:
                    unit = int(f.read()) << 10
                break
            except (OSError, ValueError):
                continue
        _units[dev] = min(max(unit, UNIT), MAX_UNIT)
    return _units[dev]


def coalesce(ranges: Iterable[tuple[int, int]], gap: int = GAP) -> list[tuple[int, int]]:
    """(offset, length) ranges in the given order, each joined to the one before when it starts at most
    `gap` bytes after that one's end; empty ranges dropped. Order is kept (no sorting: it is the read order)."""
    out: list[list[int]] = []
    for offset, length in ranges:
        if length <= 0:
            continue
        if out:
            last = out[-1]
            end = last[0] + last[1]
            if end <= offset <= end + gap or last[0] <= offset < end:  # next after a small gap, or overlapping
                last[1] = max(end, offset + length) - last[0]
                continue
        out.append([offset, length])
    return [(o, n) for o, n in out]


class ReadAhead:
    """Requests `ranges` of src in order, at most `window` bytes ahead of what advance() reported copied.

    REQUIRES: advance(offset, size) is called as each range has been read (ranges not reported are
    passed over when a later one is). close() stops the thread; a read error (pread mode only: an
    fadvise is a hint, and the copy itself reports what it cannot read) is raised by advance() or close().
    """

    def __init__(
        self,
        src: Source,
        ranges: list[tuple[int, int]],
        *,
        window: int = WINDOW,
        gap: int = GAP,
        unit: int | None = None,
        advise: bool | None = None,
    ):
        self.src = src
        fd = src.fileno()
        if advise is None:
            advise = fd is not None and hasattr(os, "posix_fadvise")
        self.advise = advise
        if unit is None:
            unit = request_unit(fd) if advise else 1 << 20
        self.window, self.unit = window, min(unit, window)
        self.fd = fd
        self.error: BaseException | None = None
        self.requested = 0  # bytes asked for so far (gaps included), for tests and benchmarks
        self._plan = coalesce(ranges, gap)
        # Where each announced range ends in "request space" (the coalesced ranges back to back), so
        # that advance() can tell the thread how far the copy has come in the thread's own units.
        starts, total = [], 0
        for _, n in self._plan:
            starts.append(total)
            total += n
        self.total = total
        self._ranges: list[tuple[int, int]] = []
        self._ends: list[int] = []
        self._index: dict[int, list[int]] = {}  # offset -> positions in _ranges
        j = 0
        for offset, length in ranges:
            if length <= 0:
                continue
            while not (self._plan[j][0] <= offset < self._plan[j][0] + self._plan[j][1]):
                j += 1
            self._index.setdefault(offset, []).append(len(self._ranges))
            self._ranges.append((offset, length))
            self._ends.append(starts[j] + offset + length - self._plan[j][0])
        self._next = 0  # the first announced range not yet reported copied
        self._done = 0  # request-space bytes the copy has passed
        self._stop = False
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def start(self) -> ReadAhead:
        if self._plan and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="ckptio-readahead", daemon=True)
            self._thread.start()
        return self

    def advance(self, offset: int, size: int) -> None:
        """The range (offset, size) has been read: let the window move on past it."""
        if self.error is not None:
            raise self.error
        i = self._find(offset, size)
        if i is None:
            return
        self._next = i + 1
        done = self._ends[i]
        with self._cond:
            if done > self._done:
                self._done = done
                self._cond.notify()

    def close(self) -> None:
        """Stop the thread (what was requested stays requested); raise its read error, if any."""
        with self._cond:
            self._stop = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self.error is not None:
            raise self.error

    def _find(self, offset: int, size: int) -> int | None:
        """The position of the first announced (offset, size) at or after _next, else None."""
        if self._next < len(self._ranges) and self._ranges[self._next] == (offset, size):
            return self._next
        where = self._index.get(offset, ())
        k = bisect.bisect_left(where, self._next)
        for i in where[k:]:
            if self._ranges[i][1] == size:
                return i
        return None

    def _run(self) -> None:
        buf = None if self.advise else memoryview(bytearray(self.unit))
        issued = 0  # request-space bytes asked for
        for offset, length in self._plan:
            pos, end = offset, offset + length
            while pos < end:
                n = min(self.unit, end - pos)
                with self._cond:
                    while not self._stop and issued + n - self._done > self.window:
                        self._cond.wait()
                    if self._stop:
                        return
                try:
                    self._request(pos, n, buf)
                except CkptioError as exc:  # typed by the source already (file, offset): kept for advance()
                    self.error = exc
                    return
                except OSError as exc:
                    if not self.advise:
                        self.error = ReadError(
                            f"cannot read ahead: {exc.strerror or exc}", path=self.src.name, offset=pos
                        )
                    return  # a refused hint only costs speed; the copy reads (and reports) for itself
                except BaseException as exc:  # anything else still stops the copy, not just this thread
                    self.error = exc
                    return
                pos += n
                issued += n
                self.requested += n

    def _request(self, offset: int, size: int, buf) -> None:
        if self.advise:
            os.posix_fadvise(self.fd, offset, size, os.POSIX_FADV_WILLNEED)
            return
        got = self.src.readinto(offset, buf[:size])
        if got != size:
            raise ReadError(f"read ahead {got} of {size} bytes: the file ends early", path=self.src.name, offset=offset)


def start(src: Source, ranges: list[tuple[int, int]], **options) -> ReadAhead | None:
    """A started ReadAhead over ranges of src, or None when there is too little to read to be worth a thread."""
    if sum(n for _, n in ranges if n > 0) < MIN_BYTES:
        return None
    return ReadAhead(src, ranges, **options).start()
