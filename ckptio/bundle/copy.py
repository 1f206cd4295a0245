"""Checked byte copies: a range of a source appended to an output file, its crc32c checked on the way.

Big ranges are copied by the kernel (the sink's copy_from: copy_file_range) in segments while one checker thread
re-reads each segment from the page cache and extends its crc32c; small ones are read,
checked and written in one go. Ranges announced with read_ahead() are requested from the disk
ahead of their copies (readahead.py). Nothing here knows about bundle entries or indexes.
"""

from __future__ import annotations

import threading

from ..errors import ChecksumError, TruncatedError, WriteError
from ..sstable.coding import crc32c, unmask
from ..store.base import Sink, Source
from . import readahead

CHUNK = 8 << 20
SEGMENT = 64 << 20  # copy_file_range unit; its crc32c is checked on the checker thread meanwhile
BACKLOG = 16  # segments queued for the checker at most
# Below this a range is read, checked and written in one go: a kernel copy plus a hand-off to
# the checker thread costs more than moving the bytes (and 100,000 tiny entries would queue).
KERNEL_COPY_MIN = 256 << 10


class ShardFile:
    """One output file being appended to (one writer thread at a time): a store's Sink and how far it got.

    ShardFile(fd, path), the older form, wraps a local descriptor the caller keeps (and closes).
    """

    def __init__(self, sink: Sink | int, path: str | None = None):
        if isinstance(sink, int):
            from ..store.local import LocalSink

            sink = LocalSink(path or f"<fd {sink}>", path or "", sink, owned=False)
        self.sink = sink
        self.path, self.offset = sink.name, 0
        self.reserved = 0  # bytes set aside past the start (see BundleWriter.reserve)
        self.lock = threading.Lock()
        self.ahead: dict[int, readahead.ReadAhead] = {}  # id(source) -> its ranges read ahead for this file
        self._buf: memoryview | None = None

    @property
    def fd(self) -> int:
        """The sink's descriptor (-1: none, or closed)."""
        fd = self.sink.fileno()
        return -1 if fd is None else fd

    def write(self, data) -> None:
        self.sink.write(data)
        self.offset += len(data) if type(data) is bytes else memoryview(data).nbytes

    def seek(self, offset: int) -> None:
        """Write next at offset; only where the sink is seekable (Sink.seekable: a local file, not an upload)."""
        if offset != self.offset:
            self.sink.seek(offset)
            self.offset = offset

    def buffer(self, size: int) -> memoryview:
        """A reused buffer of at least min(size, CHUNK) bytes."""
        # Sized to what is copied through it: a strip that moves only small tensors through
        # Python (the big ones go through the kernel) need not allocate and fault in 8 MiB.
        want = min(CHUNK, 1 << max(size - 1, 1).bit_length())
        if self._buf is None or len(self._buf) < want:
            self._buf = memoryview(bytearray(want))
        return self._buf


class Copier:
    """Copies byte ranges into output files, checking each one's crc32c; one checker thread for all.

    copy() may run on several threads at once, one per output file. A mismatch found by the
    checker surfaces in a later copy() or at the latest in wait(); cancel() drops the queued
    checks. Both stop the checker thread (the next copy starts another).
    """

    def __init__(self) -> None:
        self._zero_copy: bool | None = None  # copy_file_range usable here? None until tried
        self._checker: Checker | None = None
        self._lock = threading.Lock()
        self._ahead: list[tuple[ShardFile, int]] = []  # read-aheads running, stopped by wait() and cancel()

    def read_ahead(self, out: ShardFile, src: Source, ranges: list[tuple[int, int]]) -> bool:
        """Request ranges of src from the disk, in order and a bounded window ahead, as they are copied
        into out next; False where src is no local file (the caller may then hint the source itself)."""
        if src.fileno() is None:
            return False
        old = out.ahead.pop(id(src), None)
        if old is not None:
            old.close()
        # The copy reads only what is requested: the kernel's own readahead would also pull in
        # the tensors a strip drops (a weight's Adam slots sit right after it).
        src.random_reads()
        ahead = readahead.start(src, ranges)
        if ahead is not None:
            out.ahead[id(src)] = ahead  # the read-ahead holds src: the id stays its own meanwhile
            with self._lock:
                self._ahead.append((out, id(src)))
        return True

    def copy(self, src: Source, offset: int, size: int, out: ShardFile, *, crc: int | None = None, key=None) -> None:
        """Append src[offset:offset+size] to out; crc: the masked crc32c the bytes must have (None: unchecked).

        REQUIRES: the caller holds out (no other copy or write into it meanwhile).
        """
        if offset + size > src.size:
            raise TruncatedError(
                f"bytes [{offset}, {offset + size}) lie past the end of the {src.size}-byte shard",
                path=src.name,
                key=key,
                offset=offset,
            )
        ahead = out.ahead.get(id(src)) if out.ahead else None
        if not (
            size >= KERNEL_COPY_MIN
            and self._zero_copy is not False
            and self._copy_in_kernel(src, offset, size, out, crc, key, ahead is None)
        ):
            running = _copy_checked(src, out, offset, size, key)
            if crc is not None:
                _compare(running, crc, src, key, offset)
        if ahead is not None:
            ahead.advance(offset, size)

    def wait(self) -> None:
        """Wait for every queued check, stop the checker and read-ahead threads; raise the first failure."""
        error = self._stop_reading_ahead()
        if self._checker is not None:
            checker, self._checker = self._checker, None
            checker.close()
            if checker.error is not None:
                raise checker.error
        if error is not None:
            raise error

    def cancel(self) -> None:
        """Drop the queued checks, stop the checker and read-ahead threads (on abort)."""
        self._stop_reading_ahead()
        if self._checker is not None:
            checker, self._checker = self._checker, None
            checker.close(cancel=True)

    def _stop_reading_ahead(self) -> BaseException | None:
        """Stop every read-ahead thread; return the first one's error."""
        with self._lock:
            running, self._ahead = self._ahead, []
        first = None
        for out, key in running:
            ahead = out.ahead.pop(key, None)
            if ahead is None:
                continue
            try:
                ahead.close()
            except BaseException as exc:
                first = first or exc
        return first

    def _copy_in_kernel(
        self, src: Source, offset: int, size: int, out: ShardFile, crc: int | None, key, advise: bool = True
    ) -> bool:
        """copy_file_range in segments, each one's crc32c checked on a second thread meanwhile.

        The kernel copies without bringing the bytes into Python; the checker reads them once
        more from the page cache, on the other core, so checking costs little wall time.
        advise: have this range read now (no read-ahead thread was told of it).
        """
        if src.fileno() is None or out.sink.fileno() is None:  # no kernel copy between these two
            return False
        pos, end = offset, offset + size
        running = [0]
        ahead = _read_exactly(src, pos, size) if advise else None
        try:
            while pos < end:
                n = min(SEGMENT, end - pos)
                if not _copy_range(src, out, pos, n):
                    if pos != offset:  # the kernel stopped accepting mid-range: never seen, but be safe
                        raise WriteError("copy_file_range stopped working mid-copy", path=out.path, offset=out.offset)
                    self._zero_copy = False
                    return False
                self._zero_copy = True
                if ahead is not None:
                    ahead.advance(pos, n)
                if crc is not None:
                    self._check(_crc_segment, src, pos, n, running, key, (crc, offset) if pos + n == end else None)
                pos += n
        finally:
            if ahead is not None:
                ahead.close()
        return True

    def _check(self, fn, *args) -> None:
        """Queue a check on the checker thread; raise the first failure found so far."""
        # Locked, so that two shard threads cannot each start a checker (splitting a range's segments).
        with self._lock:
            if self._checker is None:
                self._checker = Checker(BACKLOG)
        self._checker.submit(fn, *args)


class Checker:
    """One thread running queued checks in order (a range's segments stay in sequence).

    submit() raises the first failure found so far, so a long copy stops soon after a mismatch,
    and blocks while `backlog` checks are queued, so the checker never falls far behind.
    """

    def __init__(self, backlog: int):
        import queue

        self.error: BaseException | None = None
        self._cancelled = False
        self._jobs: queue.SimpleQueue[tuple | None] = queue.SimpleQueue()
        self._slots = threading.BoundedSemaphore(backlog)
        self._thread = threading.Thread(target=self._run, name="ckptio-crc", daemon=True)
        self._thread.start()

    def submit(self, fn, *args) -> None:
        if self.error is not None:
            raise self.error
        self._slots.acquire()
        self._jobs.put((fn, args))

    def close(self, cancel: bool = False) -> None:
        """Run (or, with cancel, drop) what is queued, then stop the thread."""
        self._cancelled = cancel
        self._jobs.put(None)
        self._thread.join()

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, args = job
            try:
                if self.error is None and not self._cancelled:
                    fn(*args)
            except BaseException as exc:  # kept for the copying threads to raise
                self.error = exc
            finally:
                self._slots.release()


def _crc_segment(src: Source, offset: int, size: int, running: list, key, last: tuple | None) -> None:
    """Extend running[0] with the crc32c of src[offset:offset+size]; after a range's last segment
    (last: its expected masked crc and start), compare."""
    buf = _thread_buffer()
    pos, end, crc = offset, offset + size, running[0]
    while pos < end:
        n = min(len(buf), end - pos)
        got = src.readinto(pos, buf[:n])
        if got != n:
            raise TruncatedError(f"shard ends after {got} of {n} bytes", path=src.name, key=key, offset=pos)
        crc = crc32c(buf[:n], crc)
        pos += n
    running[0] = crc
    if last is not None:
        expected, start = last
        _compare(crc, expected, src, key, start)


_local = threading.local()


def _thread_buffer() -> memoryview:
    if not hasattr(_local, "buf"):
        _local.buf = memoryview(bytearray(CHUNK))
    return _local.buf


def _compare(crc: int, expected: int, src: Source, key, offset: int) -> None:
    """Raise unless crc (unmasked, computed) is the masked expected one."""
    if crc != unmask(expected):
        raise ChecksumError(
            f"checksum does not match: stored {unmask(expected):#010x}, computed {crc:#010x}",
            path=src.name,
            key=key,
            offset=offset,
        )


def _copy_checked(src: Source, out: ShardFile, offset: int, size: int, key) -> int:
    """Copy through a reused buffer, computing the crc32c; return the unmasked crc."""
    buf = out.buffer(size)
    running, pos, end = 0, offset, offset + size
    readinto = getattr(src, "readinto", None)
    while pos < end:
        n = min(len(buf), end - pos)
        data: bytes | memoryview
        if readinto is not None:
            got = readinto(pos, buf[:n])
            if got != n:
                raise TruncatedError(f"shard ends after {got} of {n} bytes", path=src.name, key=key, offset=pos)
            data = buf[:n]
        else:
            data = src.read(pos, n, key=key)
        running = crc32c(data, running)
        out.write(data)
        pos += n
    return running


def _read_exactly(src: Source, offset: int, size: int) -> readahead.ReadAhead | None:
    """Have the kernel read this range ahead, and none of its neighbours'; a range longer than one
    request is read ahead segment by segment by a thread, returned (advance it, close it)."""
    # Readahead guesses from sequential access and would also pull in the tensors a strip
    # drops (a weight's Adam slots sit right after it): from a cold cache that read twice the
    # bytes kept. Random mode stops the guessing; WILLNEED queues exactly this range at once,
    # but only its first request's worth (Linux drops the rest): what follows would be read
    # 64 KiB at a time by copy_file_range.
    fd = src.fileno()
    assert fd is not None  # _copy_in_kernel copies only sources with a descriptor
    src.random_reads()
    if size > readahead.request_unit(fd):
        segments = [(p, min(SEGMENT, offset + size - p)) for p in range(offset, offset + size, SEGMENT)]
        return readahead.ReadAhead(src, segments, window=2 * SEGMENT).start()
    src.will_need([(offset, size)])
    return None


def _copy_range(src: Source, out: ShardFile, offset: int, size: int) -> bool:
    """Kernel-side copy (the sink's copy_from, copy_file_range between local files); False if unavailable."""
    if not out.sink.copy_from(src, offset, size, kernel_only=True):
        return False
    out.offset += size
    return True
