"""Output to an fsspec filesystem: files committed only when complete, in the order they were created.

Where the filesystem renames cheaply (local, memory, sftp, hdfs ...) each file goes to a temp name
beside its final one and commit() renames them into place in creation order. Object stores (s3, gs,
http ...) "rename" by copying, so there files are written under their final names in creation
order and the last one (a bundle's .index) is the commit: one PUT is atomic on those stores.
"""

from __future__ import annotations

import os

from ..errors import CkptioError, WriteError
from .base import Output, Sink, Source, Store
from .fs import CHUNK, protocols, renames_cheaply


def _close_quietly(f) -> None:
    try:
        f.close()
    except Exception:
        pass


class RemoteSink(Sink):
    """One file being written to a RemoteFiles output; close() checks the size that arrived."""

    def __init__(self, files: RemoteFiles, url: str):
        self.name = url
        self._files = files
        self._f = files.open(url)
        self.n = 0

    def write(self, data) -> None:
        try:
            self._f.write(data)
        except Exception as exc:
            raise WriteError(f"cannot write: {exc}", path=self.name, offset=self.n) from None
        self.n += len(data)

    def close(self) -> None:
        try:
            self._f.close()
        except Exception as exc:
            raise WriteError(f"cannot write: {exc}", path=self.name) from None
        self._files.check_size(self.name, self.n)


class RemoteFiles(Output):
    """Files written to a filesystem and committed in the order they were written.

    With temp names (where renames are cheap), each file goes to a hidden temp name beside
    its final one, and commit() renames them into place in order. Without, files are written
    under their final names and the caller writes the commit file (the .index) last.
    """

    def __init__(self, fs, *, store: Store, use_temp: bool | None = None):
        self.fs = fs
        self.store = store  # the RemoteStore over fs: existence checks, remembered sizes
        self.use_temp = renames_cheaply(fs) if use_temp is None else use_temp
        self._token = f"{os.getpid()}-{os.urandom(4).hex()}"
        self._pending: list[tuple[str, str, str]] = []  # (written path, final path, final url)

    def _target(self, url: str) -> tuple[str, str]:
        final = self.fs._strip_protocol(url)
        if not self.use_temp:
            return final, final
        directory, slash, base = final.rpartition("/")
        return f"{directory}{slash}.{base}.ckptio-tmp-{self._token}", final

    def create(self, path: str) -> RemoteSink:
        return RemoteSink(self, path)

    def open(self, url: str):
        """A writable binary file for url (its temp name when renaming)."""
        target, final = self._target(url)
        if protocols(self.fs) & {"file", "local"}:
            try:
                self.fs.makedirs(target.rpartition("/")[0] or ".", exist_ok=True)
            except OSError as exc:
                raise WriteError(f"cannot create directory: {exc.strerror or exc}", path=url) from None
        try:
            f = self.fs.open(target, "wb")
        except Exception as exc:
            raise WriteError(f"cannot create file: {exc}", path=url) from None
        self._pending.append((target, final, url))
        self.store.forget(url)
        return f

    def put(self, url: str, source: Source, progress=None) -> int:
        """Stream a Source's bytes to url in chunks; check the size written."""
        sink = self.create(url)
        try:
            pos = 0
            while pos < source.size:
                data = source.read(pos, min(CHUNK, source.size - pos))
                sink.write(data)
                pos += len(data)
                if progress:
                    progress(len(data))
        except CkptioError:
            _close_quietly(sink._f)
            raise
        except Exception as exc:
            _close_quietly(sink._f)
            raise WriteError(f"cannot write: {exc}", path=url) from None
        sink.close()
        return source.size

    def check_size(self, url: str, expected: int) -> None:
        target = [p for p in self._pending if p[2] == url][-1][0]
        try:
            size = self.fs.info(target).get("size")
        except Exception as exc:
            raise WriteError(f"cannot check what was written: {exc}", path=url) from None
        if size is not None and size != expected:
            raise WriteError(f"wrote {size} bytes, expected {expected}", path=url)

    def commit(self, *, remove_first=()) -> None:
        """Rename temp files into place in order (after removing remove_first urls)."""
        try:
            if self.use_temp:
                for url in remove_first:
                    if self.store.is_file(url):
                        self.fs.rm_file(self.fs._strip_protocol(url))
                for target, final, _ in self._pending:
                    self.fs.mv(target, final)
        except Exception as exc:
            self.abort()
            raise WriteError(
                f"cannot commit output: {exc}", path=self._pending[-1][2] if self._pending else None
            ) from None
        for _, _, url in self._pending:
            self.store.forget(url)
        self._pending = []

    def abort(self) -> None:
        """Remove what was written and not committed (temp files, or final-named files)."""
        for target, _, url in self._pending:
            try:
                self.fs.rm_file(target)
            except Exception:
                pass
            self.store.forget(url)
        self._pending = []


__all__ = ["RemoteFiles", "RemoteSink"]
