"""Byte sources: one read(offset, length) interface over local files and memory (output side: output.py)."""

from __future__ import annotations

import os
import stat

from .errors import CheckpointNotFoundError, ReadError
from .store.base import Source


def copy_source(source: Source, write, *, chunk: int, progress=None) -> None:
    """Pass every byte of source to write(), chunk bytes at a time, in order; progress(n) after each."""
    pos = 0
    while pos < source.size:
        data = source.read(pos, min(chunk, source.size - pos))
        write(data)
        pos += len(data)
        if progress:
            progress(len(data))


def odd_file_kind(mode: int) -> str | None:
    """What a file is when it is neither a regular file nor a directory ("a FIFO" ...), else None."""
    for test, kind in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return kind
    return None if stat.S_ISREG(mode) or stat.S_ISDIR(mode) else "a special file"


class FileSource(Source):
    """A local regular file read with positional reads (os.pread), safe across threads."""

    def __init__(self, path) -> None:
        super().__init__()
        self.name = os.fspath(path)
        self._fd = -1
        try:
            # O_NONBLOCK: opening a FIFO would otherwise wait forever for a writer. It is
            # cleared below once we know this is a regular file.
            fd = os.open(self.name, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            raise CheckpointNotFoundError("no such file", path=self.name) from None
        except OSError as exc:
            raise ReadError(f"cannot open: {exc.strerror or exc}", path=self.name) from None
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise ReadError("is a directory, not a file", path=self.name)
            kind = odd_file_kind(st.st_mode)
            if kind:  # a FIFO blocks, /dev/zero never ends: only regular files have a size to trust
                raise ReadError(f"is {kind}, not a regular file", path=self.name)
            os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self.size = st.st_size

    def _pread(self, offset: int, length: int) -> bytes:
        chunks, done = [], 0
        while done < length:
            try:
                piece = os.pread(self._fd, min(length - done, 1 << 30), offset + done)
            except OSError as exc:
                raise ReadError(f"cannot read: {exc.strerror or exc}", path=self.name, offset=offset + done) from None
            if not piece:
                break
            chunks.append(piece)
            done += len(piece)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def readinto(self, offset: int, buf: memoryview) -> int:
        """Fill buf from offset (fewer bytes only at end of file); counts bytes read."""
        done = 0
        while done < len(buf):
            try:
                n = os.preadv(self._fd, [buf[done:]], offset + done)
            except OSError as exc:
                raise ReadError(f"cannot read: {exc.strerror or exc}", path=self.name, offset=offset + done) from None
            if n == 0:
                break
            done += n
        with self._lock:
            self.bytes_read += done
        return done

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class MemorySource(Source):
    """Bytes already in memory (tests, archive members, remote footers)."""

    def __init__(self, data: bytes, name: str = "<memory>") -> None:
        super().__init__()
        self._data = memoryview(data)
        self.name = name
        self.size = len(data)

    def _pread(self, offset: int, length: int) -> bytes:
        return bytes(self._data[offset : offset + length])


# The output side moved to output.py; its names stay importable from here.
from .output import (  # noqa: E402, F401
    CLAIM_TRIES,
    AtomicFiles,
    OutputClaim,
    interrupts_deferred,
    make_dirs,
    preallocate,
    remove_stale_temps,
    staging_dir,
    take_late_interrupt,
    write_all,
)
