"""The files a checkpoint should be: what is there instead, and each table walked as far as it reads."""

from __future__ import annotations

from ..bundle import naming
from ..bundle.reader import is_lfs_pointer
from ..errors import CheckpointNotFoundError, CkptioError
from ..sstable import recovery
from ..store.base import Source
from .inputs import Files, data_files, not_regular
from .report import Diagnosis

FIRST_BLOCK_LIMIT = 1 << 20  # how far a file that is not a table is searched for a first block


def starts_like_table(store: Files, path: str) -> bool:
    """Whether a file that is not a table begins with an intact table block (a V1 file cut short)."""
    size = store.size(path)
    if size is None:  # missing, or not a regular file (never opened: a FIFO blocks)
        return False
    try:
        src = store.open(path)
        try:
            head = src.read(0, min(size, FIRST_BLOCK_LIMIT))
        finally:
            src.close()
    except CkptioError:
        return False
    return bool(recovery.scan_blocks(head, max_blocks=1))


def explain_not_found(d: Diagnosis, store: Files, path: str, exc: CheckpointNotFoundError) -> None:
    """Data shards without their .index (at path, or at the shard the error names), or not found."""
    for candidate in dict.fromkeys(p for p in (path, exc.path) if p):
        split = naming.split_data_path(candidate)
        prefix = split[0] if split else candidate
        shards = data_files(store, prefix)
        if shards and store.size(naming.index_path(prefix)) is None:
            _missing_index(d, store, prefix, shards)
            return
    d.problem("not-found", exc.message, path=exc.path)


def _missing_index(d: Diagnosis, store: Files, prefix: str, shards: list[str]) -> None:
    d.format, d.prefix = "v2", prefix
    d.problem(
        "missing-index",
        f"the .index file is missing, but {len(shards)} data file(s) exist "
        f"({store.basename(shards[0])}...); tensor names, shapes and offsets live only in the "
        "index, so nothing can be read without it",
        path=naming.index_path(prefix),
    )


def lfs(store: Files, path: str) -> bool:
    """Whether path is a Git LFS pointer rather than the file itself."""
    if store.size(path) is None:  # missing, or not a regular file
        return False
    try:
        src = store.open(path)
    except CkptioError:
        return False
    try:
        return is_lfs_pointer(src)
    finally:
        src.close()


def open_file(d: Diagnosis, store: Files, path: str) -> Source | None:
    """The file as a Source (read in bounded pieces, never whole), or None with the problem noted."""
    why = not_regular(store, path)
    if why:
        d.problem("not-a-file", why, path=path)
        return None
    try:
        return store.open(path)
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


def read_table(d: Diagnosis, store: Files, path: str, what: str) -> recovery.TableScan | None:
    """Open and walk the table at path; None (with the problem noted) when it cannot be read at all."""
    table = open_file(d, store, path)
    if table is None:
        return None
    try:
        table.will_need([(0, table.size)])  # walked whole, some blocks twice: a remote one is one request
        return walk_table(d, table, path, what)
    except CkptioError as exc:  # an I/O error, or the file shrank, while it was read piece by piece
        d.problem("unreadable", exc.message, path=exc.path or path, offset=exc.offset)
        return None
    finally:
        table.close()
