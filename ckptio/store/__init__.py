"""Where bytes live, apart from what they mean: local files, .tar.zst archives, fsspec URLs, memory.

for_path() is the one place a path string is routed to a store:

    model.ckpt, dir/            the local store (OS paths)
    file:///x/model.ckpt        the same, written as a URL
    x.tar.zst, gs://b/x.tzst    an ArchiveStore over the archive file, wherever it is
    gs://b/run/model.ckpt       a remote store (fsspec), its paths the URLs themselves
"""

from __future__ import annotations

from .base import Output, Range, Sink, Source, Store

ARCHIVE_SUFFIXES = (".tar.zst", ".tzst")


def is_url(text: str) -> bool:
    """A path for a remote store (gs://, s3://, http(s)://, any fsspec protocol); file:// is local."""
    return "://" in text and not text.startswith("file://")


def is_archive(text: str) -> bool:
    return text.endswith(ARCHIVE_SUFFIXES)


def local_path(text: str) -> str:
    return text[len("file://") :] if text.startswith("file://") else text


def for_path(text: str, **options) -> tuple[Store | None, str]:
    """(store, path in it) for what a user passed; options are fsspec storage options for URLs.

    An archive is the store itself (its path ''). The store is None for a URL while no remote
    store is installed (ckptio/store/remote.py): ckptio.remote opens those.
    """
    store: Store
    if is_url(text):
        try:
            from .remote import RemoteStore  # type: ignore[import-not-found]
        except ImportError:
            return None, text
        store, path = RemoteStore.for_url(text, **options)
    else:
        if options:
            raise TypeError(f"unexpected options for a local path: {', '.join(options)}")
        from .local import LocalStore

        store, path = LocalStore(), local_path(text)
    if is_archive(path):
        from .archive import ArchiveStore

        source = store.open(path)
        try:
            return ArchiveStore(source, path), ""
        except BaseException:
            source.close()
            raise
    return store, path


def for_output(text: str, *, name: str = "model.ckpt", **options) -> tuple[Store, str]:
    """(store, prefix in it) to write a checkpoint that a user named: a local prefix, a URL (one ending
    in '/' is a directory: the checkpoint is called name there), or an archive (name inside it),
    written through the store's output."""
    store: Store
    if is_url(text):
        from .remote import RemoteStore  # type: ignore[import-not-found]

        store, path = RemoteStore.for_url(text, **options)
        if path.endswith("/") and not is_archive(path):
            path += name
    else:
        if options:
            raise TypeError(f"unexpected options for a local path: {', '.join(options)}")
        from .local import LocalStore

        store, path = LocalStore(), local_path(text)
    if is_archive(path):
        from .archive_output import PackingStore

        packing = PackingStore(store, path)
        return packing, packing.join(path, name)
    return store, path


class OpenerStore(Store):
    """A store that only opens files, through a callable path -> Source (the older open_source= keyword)."""

    def __init__(self, open_source, *, random_access: bool = True) -> None:
        self._open = open_source
        self.random_access = random_access

    def open(self, path: str) -> Source:
        return self._open(path)


__all__ = [
    "Output",
    "Range",
    "Sink",
    "Source",
    "Store",
    "OpenerStore",
    "for_path",
    "for_output",
    "is_url",
    "is_archive",
]
