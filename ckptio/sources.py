"""The router that opens every path form: ckptio.open() is open() here.

Plain local paths open as a Checkpoint; the rest, which store.for_path() does not map to plain
local files (a URL, an archive, file://) and files named as another weight format, go to their
reader (open_special):

    file:///x/model.ckpt            a local path written as a URL
    /x/model.tar.zst                an archive (an ArchiveStore: streams, never unpacks)
    gs://b/model.tar.zst            an archive in remote storage, streamed by range reads
    gs://b/run/model.ckpt           a remote checkpoint (store/remote.py: byte-range reads)

This module sits above the readers (archive/, remote.py, formats/) and below the operations
that take any path (rewrite.py routes the write side: a .tar.zst destination is packed, a URL
destination uploaded, another weight format exported).
"""

from __future__ import annotations

import os

from .checkpoint import Checkpoint
from .errors import UnsupportedError
from .store import for_path, is_url, local_path
from .store import is_archive as _is_archive


def is_archive(path) -> bool:
    return _is_archive(os.fspath(path))


def is_remote(path) -> bool:
    return is_url(os.fspath(path))


def is_special(path) -> bool:
    """True when ckptio.open / rewrite must route the path here (not plain local files)."""
    from .formats import kind_of

    text = os.fspath(path)
    return local_path(text) != text or is_url(text) or _is_archive(text) or kind_of(text) is not None


def open(path, **kwargs) -> Checkpoint:  # noqa: A001 - mirrors builtins.open on purpose
    """Open a checkpoint lazily: prefix, .index/.data path, directory, SavedModel, V1 file,
    a .tar.zst archive, a remote URL (gs://, s3://, http(s)://, any fsspec protocol), or a
    .safetensors (.safetensors.index.json), .npz, .weights.h5 or .keras file."""
    if not isinstance(path, Checkpoint) and is_special(path):
        return open_special(os.fspath(path), **kwargs)
    return Checkpoint(path, **kwargs)


def open_special(path, **kwargs) -> Checkpoint:
    """Open an archive or a URL; kwargs are fsspec storage options for remote paths."""
    from .formats import kind_of, open_format

    text = os.fspath(path)
    if kind_of(text):  # .safetensors, .npz, Keras files (ckptio/formats)
        return open_format(text, **kwargs)
    if not is_url(text) and not _is_archive(text):
        return Checkpoint(local_path(text), **kwargs)  # file:// (kwargs: Checkpoint's own)
    store, inner = for_path(text, **kwargs)
    if store is None:  # for_path's answer while no remote store is installed
        raise UnsupportedError("remote paths need fsspec: pip install 'ckptio[remote]'", path=text)
    return open_on(store, inner)


def open_on(store, path: str) -> Checkpoint:
    """The checkpoint at path in store (an archive store: the checkpoint it holds)."""
    from .store.archive import ArchiveStore

    if isinstance(store, ArchiveStore):
        from .archive.reader import archive_checkpoint

        return archive_checkpoint(store)
    from .bundle.locate import locate

    return Checkpoint(path, store=store, located=locate(store, path))


__all__ = ["open", "open_special", "is_special", "is_archive", "is_remote"]
