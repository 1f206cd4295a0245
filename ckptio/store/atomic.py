"""The output side of storage: atomic output files, output claims (locks), sweeping temps left by killed
writers, holding Ctrl-C during a commit, and reserving disk space.

Every output appears atomically or not at all: temp names in the destination directory, data
first and the index last, rename into place; a second writer of the same output is refused.
"""

from __future__ import annotations

import errno
import os
import re
import sys
import threading
import time

from ..errors import OutputBusyError, OutputExistsError, WriteError


def make_dirs(directory: str) -> None:
    """Create an output directory (and parents), as a WriteError naming it on failure."""
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        raise WriteError(f"cannot create output directory: {exc.strerror or exc}", path=directory) from None


class AtomicFiles:
    """Temp files in the destination directory, renamed into place in order on commit.

    Files are committed in the order they were created; the caller creates data
    shards first and the index last, so a checkpoint is visible only when whole.
    """

    def __init__(self, directory) -> None:
        self.directory = os.fspath(directory) or "."
        self._pending: list[tuple[str, str]] = []  # (temp path, final path)
        self._token = f"{os.getpid()}-{os.urandom(4).hex()}"
        remove_stale_temps(self.directory)

    def create(self, final_path) -> tuple[str, int]:
        """Open a new temp file for final_path; return (temp path, fd)."""
        final_path = os.fspath(final_path)
        base = os.path.basename(final_path)
        tmp = os.path.join(os.path.dirname(final_path) or ".", f".{base}.ckptio-tmp-{self._token}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as exc:
            raise WriteError(f"cannot create temp file: {exc.strerror}", path=tmp) from None
        self._pending.append((tmp, final_path))
        return tmp, fd

    def commit(self, *, remove_first=(), fsync: bool = False, no_replace=()) -> None:
        """Rename every temp file into place, in creation order (fsync'ing them first if asked).

        Renaming the index last makes the output atomic for readers and across a killed process;
        fsync adds durability across power loss at the cost of waiting for the disk, which
        cp, tar and TensorFlow's own writer do not do either. Final paths in no_replace are never
        written over: one that appeared meanwhile (another writer) is an OutputExistsError.
        """
        try:
            for tmp, _ in self._pending if fsync else ():
                fd = os.open(tmp, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            # An index being replaced goes away first, so a crash below leaves no
            # checkpoint rather than an old index over new data.
            for path in remove_first:
                if os.path.exists(path):
                    os.unlink(path)
            for tmp, final in self._pending:
                if final in no_replace:
                    _rename_no_replace(tmp, final)
                else:
                    os.replace(tmp, final)
            if fsync:
                _fsync_dir(self.directory)
        except OutputExistsError:
            self.abort()
            raise
        except OSError as exc:
            self.abort()
            raise WriteError(f"cannot commit output: {exc.strerror or exc}", path=self.directory) from None
        self._pending = []

    def abort(self) -> None:
        """Remove every temp file not yet renamed."""
        for tmp, _ in self._pending:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        self._pending = []


def _rename_no_replace(tmp: str, final: str) -> None:
    """Move tmp to final unless final exists, atomically (a hard link fails when the name is taken)."""
    try:
        os.link(tmp, final)
    except FileExistsError:
        raise OutputExistsError(
            "another writer committed a checkpoint here first; this one was not written", path=final
        ) from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK, errno.ENOSYS):
            raise
        # No hard links on this filesystem: check, then rename (the output claim still serializes ckptio writers).
        if os.path.lexists(final):
            raise OutputExistsError(
                "another writer committed a checkpoint here first; this one was not written", path=final
            ) from None
        os.replace(tmp, final)
        return
    os.unlink(tmp)


def write_all(fd: int, data, path: str) -> None:
    """Write every byte of data to fd (a short write is retried); WriteError naming path."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except OSError as exc:
            raise WriteError(f"cannot write: {exc.strerror or exc}", path=path) from None


CLAIM_TRIES = 5  # attempts 20 ms apart before an output counts as held by another writer


class OutputClaim:
    """One writer's exclusive hold on an output, from its start until commit or abort.

    A lock file `.<name>.ckptio-lock` beside the output, held with flock(2): a second writer of
    the same output fails at once with OutputBusyError instead of mixing its files with ours.
    The kernel drops the lock when its process dies, so a killed writer never blocks anyone;
    its lock file is swept by the next writer in that directory (remove_stale_temps).
    """

    def __init__(self, final_path: str) -> None:
        directory, base = os.path.split(os.fspath(final_path))
        self.output = os.fspath(final_path)
        self.path = os.path.join(directory or ".", f".{base}.ckptio-lock")
        self.fd = -1
        try:
            import fcntl
        except ImportError:  # no flock here (Windows): the no-replace commit still refuses a second index
            return
        busy = 0
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
            except OSError as exc:
                raise WriteError(f"cannot create the output's lock file: {exc.strerror}", path=self.path) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                # A sweeper (remove_stale_temps) holds a lock file for microseconds; a writer for its whole run.
                busy += 1
                if busy < CLAIM_TRIES:
                    time.sleep(0.02)
                    continue
                raise OutputBusyError(
                    "another process is writing this output right now; try again when it has finished", path=self.output
                ) from None
            except OSError:  # a filesystem without locks: the no-replace commit is the only guard
                os.close(fd)
                return
            # Its previous holder may have removed the file between our open and flock: lock the one
            # that is there now, or two writers would each hold a lock on a different file.
            try:
                if os.path.samestat(os.fstat(fd), os.stat(self.path)):
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        self.fd = fd

    def release(self) -> None:
        """Remove the lock file, then drop the lock (in that order: see __init__)."""
        if self.fd >= 0:
            try:
                os.unlink(self.path)
            except OSError:
                pass
            os.close(self.fd)
            self.fd = -1


_TEMP_RE = re.compile(r"^\..+\.ckptio-tmp-(\d+)-[0-9a-f]{8}$")
_STAGING_RE = re.compile(r"^\.ckptio-pack-(\d+)-[0-9a-f]{8}$")
_LOCK_RE = re.compile(r"^\..+\.ckptio-lock$")


def staging_dir(directory: str) -> str:
    """Create a private staging directory in directory, named so a later writer can sweep it if we die."""
    path = os.path.join(directory or ".", f".ckptio-pack-{os.getpid()}-{os.urandom(4).hex()}")
    try:
        os.mkdir(path, 0o700)
    except OSError as exc:
        raise WriteError(f"cannot create a staging directory: {exc.strerror}", path=path) from None
    return path


def remove_stale_temps(directory: str) -> None:
    """Delete temp files, staging directories and lock files left by writers that were killed."""
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        path = os.path.join(directory, name)
        m = _TEMP_RE.match(name) or _STAGING_RE.match(name)
        if m and not _alive(int(m[1])):
            try:
                if os.path.isdir(path) and not os.path.islink(path):
                    import shutil

                    shutil.rmtree(path, ignore_errors=True)
                else:
                    os.unlink(path)
            except OSError:
                pass
        elif _LOCK_RE.match(name):
            _remove_unheld_lock(path)


def _remove_unheld_lock(path: str) -> None:
    """Remove a lock file nobody holds (its writer died); a held one is left alone."""
    try:
        import fcntl

        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except (ImportError, OSError):
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.unlink(path)  # a writer that opened it meanwhile sees it gone after its flock and retries
    except OSError:
        pass
    finally:
        os.close(fd)


_late_interrupts: list[int] = []  # Ctrl-C presses held back while an output was being committed


class interrupts_deferred:
    """Hold Ctrl-C while an output is committed: once renaming began, finishing it is the right outcome.

    An interrupt that arrives inside is recorded, not raised (the output ends complete and the run
    succeeds); batch loops call take_late_interrupt() to stop before their next output.
    Only the main thread receives signals, so elsewhere this does nothing.
    """

    def __enter__(self):
        import signal

        self._installed = False
        if threading.current_thread() is threading.main_thread():
            try:
                self._old = signal.signal(signal.SIGINT, lambda signum, frame: _late_interrupts.append(signum))
                self._installed = True
            except ValueError:  # not the main interpreter
                pass
        return self

    def __exit__(self, *exc) -> None:
        import signal

        if self._installed:
            signal.signal(signal.SIGINT, signal.SIG_DFL if self._old is None else self._old)


def take_late_interrupt() -> bool:
    """True (once) when a Ctrl-C was held back during a commit."""
    if _late_interrupts:
        _late_interrupts.clear()
        return True
    return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_FALLOC_FL_KEEP_SIZE = 1
_fallocate = None  # libc's fallocate once looked up; False where there is none


def _libc_fallocate():
    import ctypes

    try:
        fn = ctypes.CDLL(None, use_errno=True).fallocate
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    return fn


def preallocate(fd: int, length: int) -> bool:
    """Reserve length bytes of disk for fd without changing its size; False if unsupported.

    Copying into blocks reserved up front is 10-20% faster on ext4 than allocating them page by
    page, and a full disk fails here, before any copying. Linux fallocate(2) is called directly:
    glibc's posix_fallocate would emulate it on filesystems without it by writing every block.
    Raises OSError (ENOSPC, EDQUOT, EFBIG) when the space is not there.
    """
    global _fallocate
    if length <= 0 or not sys.platform.startswith("linux"):
        return False
    if _fallocate is None:
        _fallocate = _libc_fallocate()
    if not _fallocate:
        return False
    if _fallocate(fd, _FALLOC_FL_KEEP_SIZE, 0, length) == 0:
        return True
    import ctypes

    err = ctypes.get_errno()
    if err in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        raise OSError(err, os.strerror(err))
    return False  # EOPNOTSUPP, ENOSYS, EINVAL ...: the filesystem allocates as it goes
