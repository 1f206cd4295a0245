"""The in-memory store: a dict of '/'-separated paths to bytes, directories implied by the paths (tests)."""

from __future__ import annotations

import builtins
import fnmatch
import threading
from collections.abc import Iterable

from ..errors import CheckpointNotFoundError, OutputExistsError, ReadError
from .base import Output, Sink, Source, Store


class MemorySource(Source):
    """Bytes already in memory (tests, archive members, remote footers)."""

    def __init__(self, data: bytes, name: str = "<memory>") -> None:
        super().__init__()
        self._data = memoryview(data)
        self.name = name
        self.size = len(data)

    def _pread(self, offset: int, length: int) -> bytes:
        return bytes(self._data[offset : offset + length])


def _norm(path: str) -> str:
    """A path as a key: no empty or '.' parts, no trailing '/' ('' is the root)."""
    return "/".join(p for p in path.split("/") if p not in ("", "."))


class MemorySink(Sink):
    """A file of a MemoryOutput, held until commit."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.data = bytearray()

    def write(self, data) -> None:
        self.data += data


class MemoryOutput(Output):
    """Files made visible in their creation order on commit; abort drops them."""

    def __init__(self, store: MemoryStore) -> None:
        super().__init__()
        self._store = store
        self._pending: list[MemorySink] = []

    def create(self, path: str) -> MemorySink:
        sink = MemorySink(path)
        self._pending.append(sink)
        return sink

    def commit(self, *, remove_first: Iterable[str] = (), fsync: bool = False, no_replace: Iterable[str] = ()) -> None:
        with self._store._lock:
            for path in no_replace:
                if _norm(path) in self._store.files:
                    self._pending = []
                    raise OutputExistsError(
                        "another writer committed a checkpoint here first; this one was not written", path=path
                    )
            for path in self.replacing(remove_first):
                self._store.files.pop(_norm(path), None)
            for sink in self._pending:
                self._store.files[_norm(sink.name)] = bytes(sink.data)
        self._pending = []

    def abort(self) -> None:
        self._pending = []


class MemoryStore(Store):
    """Files held in a dict; `files` maps normalized paths to their bytes (tests fill it directly)."""

    def __init__(self, files: dict[str, bytes] | None = None, *, name: str = "memory") -> None:
        self.name = name
        self.files = {_norm(k): bytes(v) for k, v in (files or {}).items()}
        self._lock = threading.Lock()

    def open(self, path: str) -> MemorySource:
        data = self.files.get(_norm(path))
        if data is None:
            if self.is_dir(path):
                raise ReadError("is a directory, not a file", path=path)
            raise CheckpointNotFoundError("no such file", path=path)
        return MemorySource(data, name=path)

    def size(self, path: str) -> int | None:
        data = self.files.get(_norm(path))
        return None if data is None else len(data)

    def is_dir(self, path: str) -> bool:
        key = _norm(path)
        if not key:
            return True
        return any(k.startswith(key + "/") for k in self.files)

    def list(self, directory: str) -> list[str]:
        key = _norm(directory)
        start = key + "/" if key else ""
        return sorted({k[len(start) :].split("/", 1)[0] for k in self.files if k.startswith(start)})

    def glob(self, pattern: str) -> builtins.list[str] | None:
        if not any(c in pattern for c in "*?["):
            return None
        parts = _norm(pattern).split("/")
        found = [""]
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            found = [
                self.join(d, name)
                for d in found
                for name in self.list(d)
                if fnmatch.fnmatchcase(name, part) and (last or self.is_dir(self.join(d, name)))
            ]
        lead = "/" if pattern.startswith("/") else ""
        return sorted(lead + p for p in found)

    def output(self) -> MemoryOutput:
        return MemoryOutput(self)

    def write(self, path: str, data: bytes) -> None:
        """Put one file in place at once."""
        with self._lock:
            self.files[_norm(path)] = bytes(data)

    def remove(self, path: str) -> None:
        with self._lock:
            self.files.pop(_norm(path), None)

    def move(self, src: str, dst: str) -> None:
        with self._lock:
            if _norm(src) not in self.files:
                raise CheckpointNotFoundError("no such file", path=src)
            self.files[_norm(dst)] = self.files.pop(_norm(src))

    def remove_tree(self, directory: str) -> None:
        start = _norm(directory) + "/"
        with self._lock:
            for key in [k for k in self.files if k.startswith(start)]:
                del self.files[key]


__all__ = ["MemorySource", "MemoryStore", "MemoryOutput", "MemorySink"]
