"""The files a checkpoint should be: what is there instead, and each table walked as far as it reads."""

from __future__ import annotations

import glob
import os
import stat

from ..bundle import naming
from ..bundle.reader import is_lfs_pointer
from ..errors import CheckpointNotFoundError, CkptioError
from ..io import FileSource, Source, odd_file_kind
from ..sstable import recovery
from .report import Diagnosis

FIRST_BLOCK_LIMIT = 1 << 20  # how far a file that is not a table is searched for a first block


def starts_like_table(path: str) -> bool:
    """Whether a file that is not a table begins with an intact table block (a V1 file cut short)."""
    if not os.path.isfile(path):
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(FIRST_BLOCK_LIMIT)
    except OSError:
        return False
    return bool(recovery.scan_blocks(head, max_blocks=1))


def explain_not_found(d: Diagnosis, path: str, exc: CheckpointNotFoundError) -> None:
    split = naming.split_data_path(path)
    prefix = split[0] if split else path
    shards = sorted(glob.glob(glob.escape(prefix) + ".data-?????-of-?????"))
    if shards and not os.path.exists(naming.index_path(prefix)):
        d.format, d.prefix = "v2", prefix
        d.problem(
            "missing-index",
            f"the .index file is missing, but {len(shards)} data file(s) exist "
            f"({os.path.basename(shards[0])}...); tensor names, shapes and offsets live only in the "
            "index, so nothing can be read without it",
            path=naming.index_path(prefix),
        )
        return
    d.problem("not-found", exc.message, path=exc.path)


def not_regular(path: str) -> str | None:
    """Why path is not a regular file (a FIFO would block an open, /dev/zero never end), or None.

    Asked before any file is opened; a path that cannot be stat'ed is left to the open to report.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode):
        return None
    kind = "a directory" if stat.S_ISDIR(mode) else odd_file_kind(mode)
    return f"this is {kind}, not a regular file"


def lfs(path: str) -> bool:
    """Whether path is a Git LFS pointer rather than the file itself."""
    if not_regular(path):
        return False
    try:
        src = FileSource(path)
    except CkptioError:
        return False
    try:
        return is_lfs_pointer(src)
    finally:
        src.close()


def open_file(d: Diagnosis, path: str) -> FileSource | None:
    """The file as a Source (read in bounded pieces, never whole), or None with the problem noted."""
    why = not_regular(path)
    if why:
        d.problem("not-a-file", why, path=path)
        return None
    try:
        return FileSource(path)
    except CkptioError as exc:
        d.problem("unreadable", exc.message, path=path)
        return None


def walk_table(d: Diagnosis, file: Source, path: str, what: str) -> recovery.TableScan:
    """Every entry of every readable block of a table, each unreadable part reported once."""
    found: list[recovery.Damage] = []
    truncated = "truncated-index" if what == "index" else "truncated-file"
    try:
        return recovery.walk(file, what, show_key=lambda k: repr(naming.decode_key(k)), damage=found)
    finally:  # what was found before a read failed is reported too
        for damage in found:
            kind = truncated if damage.kind == "truncated" else damage.kind
            d.problem(kind, damage.message, path=path, offset=damage.offset)


def read_table(d: Diagnosis, path: str, what: str) -> recovery.TableScan | None:
    """Open and walk the table at path; None (with the problem noted) when it cannot be read at all."""
    table = open_file(d, path)
    if table is None:
        return None
    try:
        return walk_table(d, table, path, what)
    except CkptioError as exc:  # an I/O error, or the file shrank, while it was read piece by piece
        d.problem("unreadable", exc.message, path=exc.path or path, offset=exc.offset)
        return None
    finally:
        table.close()
