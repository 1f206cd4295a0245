"""fsspec filesystems for the remote store: opening one for a URL, its protocols, and remote errors as typed ones."""

from __future__ import annotations

from ..errors import ReadError, UnsupportedError

CHUNK = 8 << 20
INDEX_PREFETCH = 16 << 20  # a metadata file up to this size is fetched whole, in one request
OBJECT_STORES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oss", "r2", "b2", "http", "https"})
HTTP = frozenset({"http", "https"})


def filesystem(url: str, **storage_options):
    """(fsspec filesystem, path within it) for a URL; UnsupportedError without fsspec or its backend."""
    try:
        import fsspec
    except ImportError:
        raise UnsupportedError("remote paths need fsspec: pip install 'ckptio[remote]'", path=url) from None
    try:
        return fsspec.core.url_to_fs(url, **storage_options)
    except ImportError as exc:
        raise UnsupportedError(f"this URL needs a package that is not installed ({exc})", path=url) from None
    except ValueError as exc:
        raise UnsupportedError(f"cannot open this URL ({exc})", path=url) from None


def protocols(fs) -> set[str]:
    p = fs.protocol
    return {p} if isinstance(p, str) else set(p)


def renames_cheaply(fs) -> bool:
    """False for object stores, where a rename is a server-side copy."""
    return not (protocols(fs) & OBJECT_STORES)


def io_error(exc: BaseException, what: str, url: str, offset: int | None = None) -> ReadError:
    """A remote failure as ckptio's ReadError (an OSError too), naming the URL (and offset)."""
    return ReadError(f"{what}: {type(exc).__name__}: {exc or 'no detail'}", path=url, offset=offset)
