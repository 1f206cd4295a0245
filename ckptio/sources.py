"""Where a checkpoint lives when it is not plain local files: .tar.zst archives and remote URLs.

ckptio.open() sends every path store.for_path() does not map to plain local files here
(a URL, an archive, file://), and files named as another weight format:

    file:///x/model.ckpt            a local path written as a URL
    /x/model.tar.zst                an archive (an ArchiveStore: streams, never unpacks)
    gs://b/model.tar.zst            an archive in remote storage, streamed by range reads
    gs://b/run/model.ckpt           a remote checkpoint (remote.open_remote: byte-range reads)

rewrite_special() is the matching write side: a .tar.zst destination is packed, a URL
destination is uploaded, each committed only when complete. Paths named as another weight
format (.safetensors, .npz, .weights.h5, .keras) go to ckptio/formats both ways.
"""

from __future__ import annotations

import os

from .checkpoint import Checkpoint
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


def _local(text: str) -> str:
    return local_path(text)


def open_special(path, **kwargs) -> Checkpoint:
    """Open an archive or a URL; kwargs are fsspec storage options for remote paths."""
    from .formats import kind_of, open_format

    text = os.fspath(path)
    if kind_of(text):  # .safetensors, .npz, Keras files (ckptio/formats)
        return open_format(text, **kwargs)
    if not is_url(text) and not _is_archive(text):
        return Checkpoint(local_path(text), **kwargs)  # file:// (kwargs: Checkpoint's own)
    store, inner = for_path(text, **kwargs)
    if store is None:  # no remote store yet (ckptio/store/remote.py): ckptio.remote reads the URL
        if _is_archive(text):
            from .archive import open_archive
            from .remote import RemoteSource

            return open_archive(text, source=RemoteSource.from_url(text, **kwargs))
        from .remote import open_remote

        return open_remote(text, **kwargs)
    return open_on(store, inner)


def open_on(store, path: str) -> Checkpoint:
    """The checkpoint at path in store (an archive store: the checkpoint it holds)."""
    from .store.archive import ArchiveStore

    if isinstance(store, ArchiveStore):
        from .archive.reader import archive_checkpoint

        return archive_checkpoint(store)
    from .bundle.locate import locate

    return Checkpoint(path, store=store, located=locate(store, path))


def rewrite_special(src, dst, steps=(), *, level: int | None = None, threads: int = -1, **options):
    """rewrite() to a .tar.zst archive (packed) or a remote prefix (uploaded); returns the Report.

    options are rewrite()'s (num_shards, max_shard_size, force, dry_run, progress, verify).
    level/threads are the zstd settings for archives.
    """
    from .formats import kind_of, write_format
    from .rewrite import rewrite

    text = os.fspath(dst)
    if kind_of(text):  # written as .safetensors, .npz or .keras (ckptio/formats)
        return write_format(src, text, steps, **options)
    if options.get("dry_run"):
        return rewrite(src, text, steps, **options)
    options.pop("state_file", None)
    make_latest = options.pop("make_latest", False)  # a remote directory's state file; none beside an archive
    if is_archive(text):
        from .archive import DEFAULT_LEVEL, rewrite_packed

        report, _ = rewrite_packed(
            src, _local(text), steps, level=DEFAULT_LEVEL if level is None else level, threads=threads, **options
        )
        return report
    if is_remote(text):
        from .remote import rewrite_to_remote

        return rewrite_to_remote(src, text, steps, make_latest=make_latest, **options)
    return rewrite(src, _local(text), steps, make_latest=make_latest, **options)


__all__ = ["open_special", "rewrite_special", "is_special", "is_archive", "is_remote"]
