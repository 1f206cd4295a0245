"""Output to an fsspec filesystem: files committed only when complete, in the order they were created.

Where the filesystem renames cheaply (local, memory, sftp, hdfs ...) each file goes to a temp name
beside its final one and commit() renames them into place in creation order. Object stores (s3, gs,
http ...) "rename" by copying, so there files are written under their final names in creation
order and the last one (a bundle's .index) is the commit: one PUT is atomic on those stores.
"""

from __future__ import annotations

import os

from ..errors import CkptioError, OutputExistsError, UnsupportedError, WriteError
from .base import Output, Sink, Source, Store, copy_source
from .fs import HTTP, protocols, renames_cheaply


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
        self.closed = False

    def write(self, data) -> None:
        try:
            self._f.write(data)
        except Exception as exc:
            raise WriteError(f"cannot write: {exc}", path=self.name, offset=self.n) from None
        self.n += len(data)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self._f.close()
        except Exception as exc:
            raise WriteError(f"cannot write: {exc}", path=self.name) from None
        self._files.check_size(self.name, self.n)

    def close_quietly(self) -> None:
        if not self.closed:
            self.closed = True
            _close_quietly(self._f)


class RemoteFiles(Output):
    """Files written to a filesystem and committed in the order they were written.

    With temp names (where renames are cheap), each file goes to a hidden temp name beside
    its final one, and commit() renames them into place in order. Without, files are written
    under their final names and the caller writes the commit file (the .index) last.
    """

    def __init__(self, fs, *, store: Store, use_temp: bool | None = None):
        super().__init__()
        self.fs = fs
        self.store = store  # the RemoteStore over fs: existence checks, remembered sizes
        self.use_temp = renames_cheaply(fs) if use_temp is None else use_temp
        self._token = f"{os.getpid()}-{os.urandom(4).hex()}"
        self._pending: list[tuple[str, str, str]] = []  # (written path, final path, final url)
        self._sinks: list[RemoteSink] = []

    def _target(self, url: str) -> tuple[str, str]:
        final = self.fs._strip_protocol(url)
        if not self.use_temp:
            return final, final
        directory, slash, base = final.rpartition("/")
        return f"{directory}{slash}.{base}.ckptio-tmp-{self._token}", final

    def create(self, path: str) -> RemoteSink:
        sink = RemoteSink(self, path)
        self._sinks.append(sink)
        return sink

    def replace(self, paths) -> None:
        """Files written under their final names are visible at once: what they replace goes now (a
        replaced index first, so no reader finds it over half-written data)."""
        if self.use_temp:
            super().replace(paths)
            return
        for url in paths:
            self._remove(url)

    def open(self, url: str):
        """A writable binary file for url (its temp name when renaming)."""
        if protocols(self.fs) & HTTP:  # fsspec's http filesystem cannot write, and says nothing useful
            raise UnsupportedError(
                "http(s):// is read-only; write to a local path or a writable URL (s3://, gs:// ...)", path=url
            )
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
            copy_source(source, sink.write, progress)
        except CkptioError:
            sink.close_quietly()
            raise
        except Exception as exc:
            sink.close_quietly()
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

    def _remove(self, url: str) -> None:
        try:
            if self.store.is_file(url):
                self.fs.rm_file(self.fs._strip_protocol(url))
        except CkptioError:
            raise
        except Exception as exc:
            raise WriteError(f"cannot remove: {exc}", path=url) from None
        self.store.forget(url)

    def commit(self, *, remove_first=(), fsync: bool = False, no_replace=()) -> None:
        """Rename temp files into place in order (after removing remove_first urls); without temp names
        the files are in place already. fsync is the filesystem's business here."""
        try:
            for sink in self._sinks:  # a sink its writer left open is complete now
                sink.close()
        except BaseException:
            self.abort()
            raise
        try:
            if self.use_temp:
                for url in no_replace:
                    self.store.forget(url)
                    if self.store.is_file(url):
                        raise OutputExistsError(
                            "another writer committed a checkpoint here first; this one was not written", path=url
                        )
                for url in self.replacing(remove_first):
                    self._remove(url)
                for target, final, _ in self._pending:
                    self.fs.mv(target, final)
        except OutputExistsError:
            self.abort()
            raise
        except Exception as exc:
            self.abort()
            raise WriteError(
                f"cannot commit output: {exc}", path=self._pending[-1][2] if self._pending else None
            ) from None
        for _, _, url in self._pending:
            self.store.forget(url)
        self._pending, self._sinks = [], []

    def abort(self) -> None:
        """Remove what was written and not committed (temp files, or final-named files)."""
        sinks, self._sinks = self._sinks, []
        for sink in sinks:
            sink.close_quietly()
        for target, _, url in self._pending:
            try:
                self.fs.rm_file(target)
            except Exception:
                pass
            self.store.forget(url)
        self._pending = []


__all__ = ["RemoteFiles", "RemoteSink"]
