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

import itertools
import os
import threading
from collections.abc import Iterable

from ..errors import CkptioError, ReadError
from ..store.base import Source

WINDOW = 64 << 20  # bytes requested ahead of the copy at most (page cache, not process memory)
GAP = 64 << 10  # ranges this close are requested as one (the gap's bytes are read too)
UNIT = 128 << 10  # bytes per request where the device's limit is unknown (Linux's smallest default)
MAX_UNIT = 8 << 20  # and at most this, so that the window moves on in steps well under its size
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
    `gap` bytes after that one's end (or inside it); empty ranges dropped. Order is kept (no sorting:
    it is the read order)."""
    out: list[tuple[int, int]] = []
    start, end = 0, None  # end None: no range yet (start is then unused)
    for offset, length in ranges:
        if length <= 0:
            continue
        if end is not None and (end <= offset <= end + gap or start <= offset < end):  # a small gap, or overlap
            if offset + length > end:
                end = offset + length
            continue
        if end is not None:
            out.append((start, end - start))
        start, end = offset, offset + length
    if end is not None:
        out.append((start, end - start))
    return out


class ReadAhead:
    """Requests `ranges` of src in order, at most `window` bytes ahead of what advance() reported copied.

    REQUIRES: advance(offset, size) is called as each range has been read (a range read some other
    way is passed over when a later one is reported). close() stops the thread; a read error (pread
    mode only: an fadvise is a hint, and the copy itself reports what it cannot read) is raised by
    advance() or close().
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
        if advise:
            assert fd is not None, "advise needs a file descriptor"
        if unit is None:
            unit = request_unit(fd) if fd is not None and advise else 1 << 20
        self.window, self.unit = window, min(unit, window)
        self.fd = fd
        self.error: BaseException | None = None
        self.requested = 0  # bytes asked for so far (gaps included), for tests and benchmarks
        self._plan = coalesce(ranges, gap)
        # The window is measured in "request space": the coalesced ranges laid back to back.
        self._starts = [0, *itertools.accumulate(n for _, n in self._plan)]
        self.total = self._starts[-1]
        self._at = 0  # the coalesced range the copy is in
        self._done = 0  # request-space bytes the copy has passed
        self._wanted = self.total + 1  # _done the thread waits for (above total: it is not waiting)
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
        # Called once per tensor (100,000 times for a checkpoint of tiny ones): a few comparisons, and
        # the lock only when the thread waits for this much.
        if self.error is not None:
            raise self.error
        j = self._at
        start, length = self._plan[j] if j < len(self._plan) else (0, 0)
        if not start <= offset < start + length:
            found = self._find(offset)
            if found is None:
                return
            self._at = j = found
            start, length = self._plan[j]
        done = self._starts[j] + min(offset + size, start + length) - start
        if done > self._done:
            self._done = done  # published before _wanted is read; the thread sets _wanted, then reads _done
            if done >= self._wanted:
                with self._cond:
                    self._cond.notify()

    def _find(self, offset: int) -> int | None:
        """The first coalesced range after the current one that holds offset, else None (not announced)."""
        for j in range(self._at + 1, len(self._plan)):
            start, length = self._plan[j]
            if start <= offset < start + length:
                return j
        return None

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

    def _run(self) -> None:
        buf = None if self.advise else memoryview(bytearray(self.unit))
        issued = 0  # request-space bytes asked for
        for offset, length in self._plan:
            pos, end = offset, offset + length
            while pos < end:
                n = min(self.unit, end - pos)
                if issued + n - self._done > self.window:
                    with self._cond:
                        self._wanted = issued + n - self.window
                        while not self._stop and self._done < self._wanted:
                            self._cond.wait(0.5)  # the timeout only guards against a missed notify
                        self._wanted = self.total + 1
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
            assert self.fd is not None  # __init__ checked: advise needs a descriptor
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
