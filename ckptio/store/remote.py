"""Files behind an fsspec URL (gs://, s3://, http(s)://, memory:// ...): ranged reads with read-ahead,
listing where the filesystem can, and atomic output.

Needs the optional extra `ckptio[remote]` (fsspec; http(s) also needs aiohttp). Every read is one
byte-range request (`fs.cat_file(path, start, end)`); ranges announced with will_need are fetched
ahead, coalesced and many at a time (store/readahead.py). Output is committed only when complete:
where the filesystem renames cheaply (local, memory, sftp, hdfs ...) each file goes to a temp name
renamed into place in creation order; object stores (s3, gs, http ...) "rename" by copying, so
there files are written under their final names in creation order and the last one (a bundle's
.index) is the commit: one PUT is atomic on those stores.
"""

from __future__ import annotations

import builtins
import threading

from ..errors import (
    CheckpointNotFoundError,
    CkptioError,
    OutputExistsError,
    Remedy,
    TruncatedError,
    UnsupportedError,
    WriteError,
)
from .base import Range, Source, Store
from .fs import CHUNK, HTTP, INDEX_PREFETCH, OBJECT_STORES, filesystem, io_error, protocols, renames_cheaply  # noqa: F401
from .readahead import Readahead
from .remote_output import RemoteFiles, _close_quietly


class RemoteSource(Source):
    """A remote file read by byte ranges; `requests` counts the requests, `bytes_read` the bytes fetched.

    prefetch=True fetches the whole file in one request up front and serves reads from that copy
    (a small .index, read block by block, some blocks twice). will_need(ranges) fetches those
    ranges ahead, coalesced and in parallel; reads of them are served from what was fetched.
    """

    def __init__(self, fs, path: str, *, name: str | None = None, size: int | None = None, prefetch: bool = False):
        super().__init__()
        self.fs, self.path = fs, path
        self.name = name or path
        self.requests = 0
        if size is None:
            size = RemoteStore(fs).size(path)
            if size is None:
                raise CheckpointNotFoundError("no such file", path=self.name)
        self.size = size
        self._data: memoryview | None = None
        self._ahead: Readahead | None = None
        self._fetching = threading.Lock()
        self._whole = False  # fetch the whole file at the first read (announced whole)
        if prefetch:
            self._fetch_whole()

    def _fetch_whole(self) -> None:
        data = self._fetch(0, self.size)
        if len(data) != self.size:
            raise TruncatedError(f"read {len(data)} of {self.size} bytes", path=self.name, offset=0)
        self._data = memoryview(data)

    @classmethod
    def from_url(cls, url: str, **storage_options) -> RemoteSource:
        fs, path = filesystem(url, **storage_options)
        return cls(fs, path, name=url)

    def read(self, offset: int, length: int, *, key=None) -> bytes:
        """Exactly `length` bytes at `offset` (fetched bytes are counted when fetched, not here)."""
        if offset < 0 or length < 0 or offset + length > self.size:
            raise TruncatedError(
                f"needs bytes [{offset}, {offset + length}) but the file has {self.size}",
                path=self.name,
                key=key,
                offset=offset,
            )
        if self._whole and self._data is None:
            with self._fetching:
                if self._data is None:
                    self._fetch_whole()
        if self._data is not None:
            return bytes(self._data[offset : offset + length])
        data = self._ahead.take(offset, length) if self._ahead is not None else None
        if data is None:
            data = self._fetch(offset, length)
        if len(data) != length:
            raise TruncatedError(f"read {len(data)} of {length} bytes", path=self.name, key=key, offset=offset)
        return data

    def readinto(self, offset: int, buf: memoryview) -> int:
        n = min(len(buf), max(0, self.size - offset))
        if n and not (self._ahead is not None and offset >= 0 and self._ahead.take_into(offset, buf[:n])):
            buf[:n] = self.read(offset, n)
        return n

    def will_need(self, ranges) -> None:
        """Fetch these ranges ahead; a file of up to INDEX_PREFETCH announced whole (a table's reader
        reading it all, in its own order, some blocks twice) is fetched in one request and kept."""
        if self._data is not None or self._whole:
            return
        ranges = list(ranges)
        if self.size <= INDEX_PREFETCH and ranges == [(0, self.size)]:
            self._whole = True
            return
        with self._lock:
            if self._ahead is None:
                self._ahead = Readahead(self._fetch, self.name)
        self._ahead.plan(ranges)

    def read_ranges(self, ranges, *, key=None):
        ranges = list(ranges)
        self.will_need(ranges)
        for offset, length in ranges:
            yield self.read(offset, length, key=key)

    def close(self) -> None:
        if self._ahead is not None:
            self._ahead.close()
        self._data = None

    def _pread(self, offset: int, length: int) -> bytes:
        return self.read(offset, length)

    def _fetch(self, offset: int, length: int) -> bytes:
        """One request for [offset, offset+length), counted; typed errors naming the URL and offset."""
        if length == 0:
            return b""
        try:
            data = self.fs.cat_file(self.path, start=offset, end=offset + length)
        except FileNotFoundError:
            raise CheckpointNotFoundError("file is gone", path=self.name) from None
        except CkptioError:
            raise
        except Exception as exc:
            raise io_error(exc, f"cannot read bytes [{offset}, {offset + length})", self.name, offset) from None
        if len(data) > length and len(data) == self.size:
            data = data[offset : offset + length]  # the server ignored the Range header and sent everything
        with self._lock:
            self.requests += 1
            self.bytes_read += len(data)
        return bytes(data)


class RemoteStore(Store):
    """An fsspec filesystem as a Store; paths are URLs (or paths within fs); sizes asked for are remembered."""

    def __init__(self, fs, *, name: str | None = None, use_temp: bool | None = None):
        self.fs = fs
        self.name = name or f"{sorted(protocols(fs))[0]}://"
        self.use_temp = use_temp  # output to temp names renamed into place; None: where renames are cheap
        self._info: dict[str, dict | None] = {}

    @classmethod
    def from_url(cls, url: str, **storage_options) -> RemoteStore:
        return cls(filesystem(url, **storage_options)[0])

    @classmethod
    def for_url(cls, url: str, **storage_options) -> tuple[RemoteStore, str]:
        """(store, path in it) for a URL: paths in a RemoteStore are the URLs themselves."""
        return cls(filesystem(url, **storage_options)[0]), url

    @property
    def http(self) -> bool:
        return bool(protocols(self.fs) & HTTP)

    def strip(self, url: str) -> str:
        return self.fs._strip_protocol(url)

    def dirname(self, path: str) -> str:
        """The URL one level up; a bucket or host root is its own (as os.path.dirname("/") is "/")."""
        scheme, sep, rest = path.partition("://")
        if not sep:
            return super().dirname(path)
        rest = rest.rstrip("/")
        return f"{scheme}://{rest.rpartition('/')[0]}" if "/" in rest else f"{scheme}://{rest}"

    def info(self, url: str) -> dict | None:
        """fsspec's info for url, or None when there is nothing there."""
        if url not in self._info:
            try:
                self._info[url] = self.fs.info(self.strip(url))
            except FileNotFoundError:
                self._info[url] = None
            except Exception as exc:
                raise io_error(exc, "cannot stat", url) from None
        return self._info[url]

    def will_open(self, paths) -> None:
        """Stat these files concurrently (one round trip, not one each) where fsspec's filesystem is
        async; their sizes are remembered for open(). A hint: a failure here is met again in open()."""
        todo = [p for p in dict.fromkeys(paths) if p not in self._info]
        if len(todo) < 2 or not getattr(self.fs, "async_impl", False):
            return
        import asyncio

        from fsspec.asyn import sync

        async def stat_all():
            return await asyncio.gather(*(self.fs._info(self.strip(p)) for p in todo), return_exceptions=True)

        try:
            found = sync(self.fs.loop, stat_all)
        except Exception:
            return
        for url, info in zip(todo, found):
            if isinstance(info, FileNotFoundError):
                self._info[url] = None
            elif isinstance(info, dict):
                self._info[url] = info

    def forget(self, url: str | None = None) -> None:
        """Drop remembered sizes (after writing)."""
        if url is None:
            self._info.clear()
        else:
            self._info.pop(url, None)

    def _listing_page(self, info: dict) -> bool:
        """Whether an http(s) answer is a directory's index page: its URL (after redirects) ends in '/'."""
        return self.http and str(info.get("url") or info.get("name") or "").endswith("/")

    def size(self, path: str) -> int | None:
        info = self.info(path)
        if info is None or info.get("type") == "directory" or self._listing_page(info):
            return None
        if info.get("size") is None:
            raise UnsupportedError("the server does not report this file's size", path=path)
        return int(info["size"])

    def is_file(self, path: str) -> bool:
        info = self.info(path)
        return info is not None and info.get("type") != "directory" and not self._listing_page(info)

    def is_dir(self, path: str) -> bool:
        if self.http:  # no listing over http; a directory answers with a page, at a URL ending in '/'
            info = self.info(path)
            return info is not None and self._listing_page(info)
        try:
            return bool(self.fs.isdir(self.strip(path)))
        except Exception:
            return False

    def list(self, directory: str) -> list[str]:
        """Names in a directory; over http(s) the links of its index page that name its entries
        (fsspec parses them; a server without index pages lists nothing)."""
        try:
            found = self.fs.ls(self.strip(directory), detail=False)
        except Exception:
            return []
        base = self.strip(directory).rstrip("/")
        if not self.http:
            return sorted({self.basename(p) for p in found if self.strip(p).rstrip("/") != base})
        names = set()  # a page links anywhere: keep only its links to this directory's own entries
        for link in found:
            parent, _, name = str(link).rstrip("/").rpartition("/")
            if parent == base and name and name not in (".", ".."):
                names.add(name)
        return sorted(names)

    def glob(self, pattern: str) -> builtins.list[str] | None:
        """URLs matching a shell pattern (wildcards in its last component), sorted; None over http(s),
        where '?' starts a query and a listing is only an index page's links."""
        if self.http:
            return None
        try:
            found = self.fs.glob(self.strip(pattern))
        except Exception:
            return None
        directory = self.dirname(pattern)
        return sorted(self.join(directory, self.basename(p)) for p in found)

    def isabs(self, path: str) -> bool:
        """A path stored in a state file names a file here by itself only as a whole URL."""
        return "://" in path

    def open(self, path: str, *, prefetch: bool = False) -> RemoteSource:
        """A RemoteSource; prefetch: fetch a file up to INDEX_PREFETCH whole in one request."""
        size = self.size(path)
        if size is None:
            raise CheckpointNotFoundError("no such file", path=path)
        return RemoteSource(
            self.fs, self.strip(path), name=path, size=size, prefetch=prefetch and size <= INDEX_PREFETCH
        )

    def output(self, *, use_temp: bool | None = None) -> RemoteFiles:
        return RemoteFiles(self.fs, use_temp=self.use_temp if use_temp is None else use_temp, store=self)

    def remove(self, path: str) -> None:
        try:
            if self.is_file(path):
                self.fs.rm_file(self.strip(path))
        except CkptioError:
            raise
        except Exception as exc:
            raise WriteError(f"cannot remove: {exc}", path=path) from None
        finally:
            self.forget(path)

    def move(self, src: str, dst: str) -> None:
        self.forget(src)
        self.forget(dst)
        try:
            self.fs.mv(self.strip(src), self.strip(dst))
        except Exception as exc:
            raise WriteError(f"cannot move to {dst}: {exc}", path=src) from None

    def remove_tree(self, directory: str) -> None:
        self.forget()
        try:
            self.fs.rm(self.strip(directory), recursive=True)
        except FileNotFoundError:
            pass
        except Exception as exc:
            raise WriteError(f"cannot remove: {exc}", path=directory) from None


class RemoteOutput:
    """One remote file written as a stream (archive.pack to a URL); commit() makes it visible."""

    def __init__(self, url: str, *, overwrite: bool = False, **storage_options):
        fs, _ = filesystem(url, **storage_options)
        self.url = url
        self.files = RemoteFiles(fs, store=RemoteStore(fs))
        if self.files.store.is_file(url) and not overwrite:  # reached through pack(force=...)
            raise OutputExistsError("the file already exists", path=url, remedy=Remedy("force", "replace it"))
        self._f = self.files.open(url)
        self.n = 0
        self.file = self

    def write(self, data) -> int:
        try:
            self._f.write(data)
        except Exception as exc:
            raise WriteError(f"cannot write: {exc}", path=self.url) from None
        self.n += len(data)
        return len(data)

    def flush(self) -> None:
        pass

    def commit(self) -> int:
        try:
            self._f.close()
        except Exception as exc:
            raise WriteError(f"cannot write: {exc}", path=self.url) from None
        self.files.check_size(self.url, self.n)
        self.files.commit()
        return self.n

    def abort(self) -> None:
        _close_quietly(self._f)
        self.files.abort()


__all__ = [
    "RemoteOutput",
    "RemoteSource",
    "RemoteStore",
    "filesystem",
    "renames_cheaply",
    "protocols",
    "Range",
]
