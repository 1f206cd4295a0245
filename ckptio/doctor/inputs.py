"""Where the diagnosed files live: any Store (store/), chosen by store.for_path like every command's.

Doctor reads only through the Store interface: sizes, listings and Sources. A store answers for a
missing file with None (never an exception), so a missing shard is a finding, not a failure.
What doctor asks beyond reading is here, over that interface:

    not_regular(store, path)   why a path must not be opened (a directory, a FIFO, a device ...)
    locate_input(store, path)  the checkpoint a path names: bundle/locate.locate, or for an archive
                               the one it holds (archive/reader.py; its .index or V1 tables held in
                               memory, capped there)
    data_files(store, prefix)  the V2 data shards present beside a prefix, any shard count
"""

from __future__ import annotations

import re

from ..bundle.locate import Located, locate
from ..errors import UnsupportedError
from ..store import for_path, local_path
from ..store.base import Store

Files = Store  # the name doctor's modules use for the store they read


def open_input(path: str) -> tuple[Store, str]:
    """(store, path in it) for what the user passed: local files, an archive, or a URL."""
    store, inner = for_path(path)
    if store is None:  # for_path's answer while no remote store is installed
        raise UnsupportedError("remote paths need ckptio's remote store", path=path)
    return store, inner


def locate_input(store: Store, path: str) -> Located:
    """The checkpoint path names in store; an archive store: the checkpoint the archive holds."""
    from ..store.archive import ArchiveStore

    if isinstance(store, ArchiveStore):
        from ..archive.reader import locate_archive

        return locate_archive(store)
    return locate(store, path)


def not_regular(store: Store, path: str) -> str | None:
    """Why path is not a regular file (a FIFO would block an open, /dev/zero never end), or None."""
    if store.size(path) is not None:
        return None
    kind = store.file_kind(path) or ("a directory" if store.is_dir(path) else None)
    return f"this is {kind}, not a regular file" if kind else None


def data_files(store: Store, prefix: str) -> list[str]:
    """The paths of prefix's V2 data shards present in its directory (any shard count), sorted."""
    base = re.escape(store.basename(prefix))
    pattern = re.compile(base + r"\.data-\d{5}-of-\d{5}")
    directory = store.dirname(prefix)
    return [store.join(directory, n) for n in store.list(directory) if pattern.fullmatch(n)]


__all__ = ["Files", "open_input", "locate_input", "not_regular", "local_path", "data_files"]
