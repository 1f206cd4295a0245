"""The local store: files of the OS filesystem, read by positional reads; written through AtomicFiles
(temp names, renamed in order), os.write, copy_file_range, fallocate, ftruncate and fsync."""

from __future__ import annotations

import builtins
import errno
import glob
import os
import stat
from collections.abc import Iterable

from ..errors import CheckpointNotFoundError, ReadError, TruncatedError, WriteError
from .base import Output, Range, Sink, Source, Store

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .atomic import AtomicFiles, OutputClaim

# Advised up front at most: the kernel starts reading this much at once; more could evict pages
# before they are used when the kept bytes exceed RAM (the copy path advises each range as it goes).
WILL_NEED_AHEAD = 256 << 20


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


def coalesce(ranges: Iterable[Range], gap: int) -> list[Range]:
    """Ranges sorted and merged where they overlap or lie less than gap bytes apart."""
    out: list[list[int]] = []
    for offset, length in sorted(r for r in ranges if r[1] > 0):
        if out and offset <= out[-1][0] + out[-1][1] + gap:
            out[-1][1] = max(out[-1][1], offset + length - out[-1][0])
        else:
            out.append([offset, length])
    return [(o, n) for o, n in out]


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
        self._count(done)
        return done

    def random_reads(self) -> None:
        """POSIX_FADV_RANDOM: the kernel's own readahead would also pull in the bytes skipped (a strip's
        dropped tensors: a weight's Adam slots sit right after it)."""
        try:
            os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_RANDOM)
        except (AttributeError, OSError):  # not Linux, or a file that takes no advice: only slower
            pass

    def will_need(self, ranges: Iterable[Range]) -> None:
        """Have the kernel start reading these ranges (up to WILL_NEED_AHEAD bytes); a hint, failures ignored."""
        # Touching ranges are merged, but never across a gap: those bytes are a strip's dropped tensors.
        advise = getattr(os, "posix_fadvise", None)
        if advise is None or self._fd < 0:
            return
        budget = WILL_NEED_AHEAD
        for offset, length in coalesce(ranges, 0):
            if budget <= 0:
                return
            try:
                advise(self._fd, offset, min(length, budget), os.POSIX_FADV_WILLNEED)
            except OSError:
                return
            budget -= length

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class LocalSink(Sink):
    """A file being appended to through its descriptor: os.write, copy_file_range, fallocate, ftruncate.

    Errors name the final path (what the user asked for), at the offset where writing failed.
    owned: close() closes the descriptor (a caller that opened it itself keeps it).
    """

    def __init__(self, name: str, temp: str, fd: int, *, owned: bool = True) -> None:
        self.name, self.temp, self._fd, self._owned = name, temp, fd, owned
        self.written = 0  # bytes appended through this sink

    def write(self, data) -> None:
        size = len(data) if type(data) is bytes else memoryview(data).nbytes
        done = 0
        view = None  # made only for a short write: most writes are whole at once (100,000 small tensors ...)
        while done < size:
            try:
                n = os.write(self._fd, data if view is None else view[done:])
            except OSError as exc:
                raise WriteError(f"cannot write: {exc.strerror or exc}", path=self.name, offset=self.written) from None
            done += n
            self.written += n
            if view is None and done < size:
                view = memoryview(data).cast("B")

    seekable = True

    def seek(self, offset: int) -> None:
        """lseek(2): the next write or kernel copy goes to offset (an export writes each tensor at its place)."""
        try:
            os.lseek(self._fd, offset, os.SEEK_SET)
        except OSError as exc:
            raise WriteError(f"cannot seek: {exc.strerror or exc}", path=self.name, offset=offset) from None

    def reserve(self, nbytes: int) -> bool:
        """fallocate(2) without changing the size: faster copies, and a full disk fails before copying."""
        from .atomic import preallocate

        try:
            return preallocate(self._fd, nbytes)
        except OSError as exc:
            raise WriteError(f"cannot reserve {nbytes} bytes for the output: {exc.strerror}", path=self.name) from None

    def truncate(self, size: int) -> None:
        try:
            os.ftruncate(self._fd, size)
        except OSError as exc:
            raise WriteError(f"cannot trim: {exc.strerror}", path=self.name, offset=size) from None

    def copy_from(self, source: Source, offset: int, size: int, *, kernel_only: bool = False) -> bool:
        """copy_file_range(2) when source is a local file too (the bytes stay in the kernel), else read+write."""
        src_fd = source.fileno()
        if src_fd is not None and hasattr(os, "copy_file_range") and self._kernel_copy(source, src_fd, offset, size):
            return True
        return super().copy_from(source, offset, size, kernel_only=kernel_only)

    def _kernel_copy(self, source: Source, src_fd: int, offset: int, size: int) -> bool:
        done = 0
        try:
            while done < size:
                n = os.copy_file_range(src_fd, self._fd, size - done, offset + done)
                if n == 0:
                    raise TruncatedError("shard ended early", path=source.name, offset=offset + done)
                done += n
        except OSError as exc:
            # Not between these two files (another filesystem, an old kernel ...): the caller copies.
            if done == 0 and exc.errno in _NO_KERNEL_COPY:
                return False
            raise WriteError(f"cannot copy: {exc.strerror}", path=self.name, offset=self.written + done) from None
        self.written += size
        return True

    def fsync(self) -> None:
        try:
            os.fsync(self._fd)
        except OSError as exc:
            raise WriteError(f"cannot sync: {exc.strerror}", path=self.name) from None

    def fileno(self) -> int | None:
        return self._fd if self._fd >= 0 else None

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            if self._owned:
                os.close(fd)


_NO_KERNEL_COPY = frozenset({errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP})


class LocalOutput(Output):
    """Temp files beside their final names (output.AtomicFiles: O_EXCL, stale temps of killed writers
    swept), renamed in creation order; claim() holds a lock file so a second writer is refused."""

    def __init__(self, directory: str | None = None) -> None:
        super().__init__()
        self.directory = directory
        self._files: AtomicFiles | None = None
        self._sinks: list[LocalSink] = []
        self._claim: OutputClaim | None = None

    def claim(self, path: str) -> None:
        """Create the output's directory and take its lock (output.OutputClaim)."""
        from .atomic import OutputClaim, make_dirs

        make_dirs(os.path.dirname(path) or ".")
        self._claim = OutputClaim(path)

    def release(self) -> None:
        if self._claim is not None:
            claim, self._claim = self._claim, None
            claim.release()

    def create(self, path: str) -> LocalSink:
        from .atomic import AtomicFiles, make_dirs

        make_dirs(os.path.dirname(path) or ".")  # an output may add directories (unpack's members)
        if self._files is None:  # stale temps are swept from the first file's directory
            self._files = AtomicFiles(self.directory or os.path.dirname(path) or ".")
        temp, fd = self._files.create(path)
        sink = LocalSink(path, temp, fd)
        self._sinks.append(sink)
        return sink

    def commit(self, *, remove_first: Iterable[str] = (), fsync: bool = False, no_replace: Iterable[str] = ()) -> None:
        self._close_sinks()
        if self._files is not None:
            self._files.commit(
                remove_first=tuple(self.replacing(remove_first)), fsync=fsync, no_replace=tuple(no_replace)
            )

    def abort(self) -> None:
        try:
            self._close_sinks()
        finally:
            if self._files is not None:
                self._files.abort()
            self.release()

    def _close_sinks(self) -> None:
        sinks, self._sinks = self._sinks, []
        for sink in sinks:
            sink.close()


class LocalStore(Store):
    """The OS filesystem; paths are OS paths (relative to the working directory or absolute)."""

    name = "<local>"

    def open(self, path: str) -> FileSource:
        return FileSource(path)

    def _stat(self, path: str):
        try:
            return os.stat(path)
        except (OSError, ValueError):  # ValueError: a NUL byte in the path
            return None

    def size(self, path: str) -> int | None:
        st = self._stat(path)
        return st.st_size if st is not None and stat.S_ISREG(st.st_mode) else None

    def is_dir(self, path: str) -> bool:
        return os.path.isdir(path)

    def list(self, directory: str) -> list[str]:
        try:
            return sorted(os.listdir(directory or "."))
        except OSError:
            return []

    def glob(self, pattern: str) -> builtins.list[str] | None:
        return sorted(glob.glob(pattern)) if glob.has_magic(pattern) else None

    def file_kind(self, path: str) -> str | None:
        st = self._stat(path)
        return None if st is None else odd_file_kind(st.st_mode)

    def isabs(self, path: str) -> bool:
        return os.path.isabs(path)

    def same_path(self, a: str, b: str) -> bool:
        try:
            return os.path.realpath(a) == os.path.realpath(b)
        except (OSError, ValueError):
            return False

    def output(self, directory: str | None = None) -> LocalOutput:
        return LocalOutput(directory)

    def remove(self, path: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise WriteError(f"cannot remove: {exc.strerror}", path=path) from None

    def move(self, src: str, dst: str) -> None:
        try:
            os.replace(src, dst)
        except OSError as exc:
            raise WriteError(f"cannot rename to {dst}: {exc.strerror or exc}", path=src) from None

    def remove_tree(self, directory: str) -> None:
        import shutil

        shutil.rmtree(directory, ignore_errors=True)

    def join(self, directory: str, name: str) -> str:
        return os.path.join(directory, name)

    def dirname(self, path: str) -> str:
        return os.path.dirname(path)

    def basename(self, path: str) -> str:
        return os.path.basename(path)


__all__ = ["FileSource", "LocalStore", "LocalOutput", "LocalSink", "odd_file_kind", "coalesce"]
