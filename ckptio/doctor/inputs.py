"""Where the diagnosed files live: a Store (store/base.py) over local files, an fsspec URL or a .tar.zst.

Doctor reads only through these: sizes, listings and Sources. Each store answers for a missing
file with None (never an exception), so a missing shard is a finding, not a failure.

    local     os.stat / os.listdir / FileSource (non-regular files are reported, never opened)
    fsspec    any URL (http(s)://, memory://, gs:// ...): info / ls / RemoteSource by byte ranges;
              an .index or V1 table up to INDEX_PREFETCH bytes is fetched whole, in one request
    archive   a .tar.zst (local or at a URL): members found by scanning forward; the .index (or the
              V1 tables) held in memory, capped; data shards are forward-only MemberSources

open_input() picks one from the path's form; it stands in for the store layer's locate() until
every command resolves paths through it.
"""

from __future__ import annotations

import os
import re
import stat

from ..archive.tar import REGULAR
from ..bundle import naming
from ..bundle.paths import Located, resolve
from ..errors import CheckpointNotFoundError, CkptioError, ReadError, UnsupportedError, WrongFileError
from ..io import FileSource, MemorySource, odd_file_kind
from ..store.base import Source, Store

INDEX_PREFETCH = 16 << 20  # a remote .index or V1 table up to this size is fetched in one request
MAX_HELD = 512 << 20  # cap on archive members held in memory (an .index, or all V1 tables together)


class Files(Store):
    """A Store plus what doctor asks of one beyond reading: existence, odd files, finding the checkpoint."""

    def exists(self, path: str) -> bool:
        """Whether anything (a file, a directory, a special file) is at path."""
        return self.size(path) is not None

    def not_regular(self, path: str) -> str | None:
        """Why path must not be opened (a FIFO, a device ...), or None."""
        return None

    def locate(self, path: str) -> Located:
        """The checkpoint path names; CheckpointNotFoundError or WrongFileError as resolve raises them."""
        raise NotImplementedError


class LocalFiles(Files):
    """Local files by their OS paths."""

    name = "local"

    def size(self, path: str) -> int | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return st.st_size if stat.S_ISREG(st.st_mode) else None

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def not_regular(self, path: str) -> str | None:
        """Why path is not a regular file (a FIFO would block an open, /dev/zero never end), or None."""
        try:
            mode = os.stat(path).st_mode
        except OSError:
            return None
        if stat.S_ISREG(mode):
            return None
        return f"this is {'a directory' if stat.S_ISDIR(mode) else odd_file_kind(mode)}, not a regular file"

    def open(self, path: str) -> Source:
        return FileSource(path)

    def is_dir(self, path: str) -> bool:
        return os.path.isdir(path)

    def list(self, directory: str) -> list[str]:
        try:
            return sorted(os.listdir(directory or "."))
        except OSError:
            return []

    def join(self, directory: str, name: str) -> str:
        return os.path.join(directory, name)

    def dirname(self, path: str) -> str:
        return os.path.dirname(path)

    def basename(self, path: str) -> str:
        return os.path.basename(path)

    def locate(self, path: str) -> Located:
        return resolve(path)


class FsspecFiles(Files):
    """Files at fsspec URLs, read by byte ranges."""

    def __init__(self, url: str, **storage_options):
        from ..remote import filesystem

        self.name = url
        self.fs, _ = filesystem(url, **storage_options)
        self._info: dict[str, dict | None] = {}

    def _stat(self, url: str) -> dict | None:
        if url not in self._info:
            try:
                self._info[url] = self.fs.info(self.fs._strip_protocol(url))
            except FileNotFoundError:
                self._info[url] = None
            except Exception as exc:  # noqa: BLE001 - any backend failure is this file unreadable
                raise ReadError(f"cannot stat: {type(exc).__name__}: {exc}", path=url) from None
        return self._info[url]

    def size(self, path: str) -> int | None:
        info = self._stat(path)
        if info is None or info.get("type") == "directory" or info.get("size") is None:
            return None
        return int(info["size"])

    def exists(self, path: str) -> bool:
        return self._stat(path) is not None

    def open(self, path: str) -> Source:
        from ..remote import RemoteSource

        size = self.size(path)
        if size is None:
            raise CheckpointNotFoundError("no such file", path=path)
        metadata = path.endswith(".index") or naming.split_data_path(path) is None
        return RemoteSource(
            self.fs,
            self.fs._strip_protocol(path),
            name=path,
            size=size,
            prefetch=metadata and size <= INDEX_PREFETCH,
        )

    def is_dir(self, path: str) -> bool:
        info = self._stat(path)
        return info is not None and info.get("type") == "directory"

    def list(self, directory: str) -> list[str]:
        try:  # listing is not available everywhere (plain http servers without an index page)
            found = self.fs.ls(self.fs._strip_protocol(directory), detail=False)
        except Exception:  # noqa: BLE001
            return []
        return sorted({str(p).rstrip("/").rsplit("/", 1)[-1] for p in found})

    def locate(self, path: str) -> Located:
        from ..remote import resolve_remote

        return resolve_remote(path, self.fs)


class ArchiveFiles(Files):
    """The members of a .tar.zst, named `ARCHIVE/member`; read forward (a backward read costs a pass)."""

    random_access = False

    def __init__(self, path: str, **storage_options):
        from ..archive.stream import ArchiveStream
        from ..sources import is_remote

        self.name = path
        if is_remote(path):
            from ..remote import RemoteSource

            src: Source = RemoteSource.from_url(path, **storage_options)
        else:
            src = FileSource(local_path(path))
        try:
            self.stream = ArchiveStream(src, path)
        except BaseException:
            src.close()
            raise
        self._held: dict[str, bytes] = {}
        self._broken: CkptioError | None = None  # the stream's failure, once a scan met it

    def _member_name(self, path: str) -> str | None:
        head = self.name + "/"
        return path[len(head) :] if path.startswith(head) else None

    def _member(self, path: str):
        name = self._member_name(path)
        if name is None:
            return None
        if self._broken is not None:  # past a cut or corrupt point every later member is out of reach
            member = next((m for m in self.stream.members if m.kind == REGULAR and m.name == name), None)
            if member is None:
                raise self._broken
            return member
        try:
            return self.stream.find(name)
        except CkptioError as exc:
            self._broken = exc
            raise

    def size(self, path: str) -> int | None:
        m = self._member(path)
        return None if m is None else m.size

    def open(self, path: str) -> Source:
        from ..archive.stream import MemberSource

        name = self._member_name(path)
        if name in self._held:
            return MemorySource(self._held[name], name=path)
        m = self._member(path)
        if m is None:
            raise CheckpointNotFoundError("no such member in the archive", path=path)
        return MemberSource(self.stream, m)

    def hold(self, member) -> None:
        """Read a member into memory (the .index, V1 tables: read out of order), within MAX_HELD."""
        if sum(map(len, self._held.values())) + member.size > MAX_HELD:
            raise UnsupportedError(
                f"doctor holds an archive's index and V1 tables in memory, at most {MAX_HELD} bytes; "
                "unpack the archive first",
                path=f"{self.name}/{member.name}",
            )
        self._held[member.name] = self.stream.read_at(
            member.data_offset, member.size, name=f"{self.name}/{member.name}"
        )

    def is_dir(self, path: str) -> bool:
        return path.rstrip("/") == self.name

    def list(self, directory: str) -> list[str]:
        """Names in a directory of the archive; scans every member header (a pass to the end)."""
        head = directory.rstrip("/") + "/"
        if self._broken is None:
            try:
                for _ in self.stream:
                    pass
            except CkptioError as exc:
                self._broken = exc
                raise
        names = [f"{self.name}/{m.name}" for m in self.stream.members if m.kind == REGULAR]
        return sorted({n[len(head) :] for n in names if n.startswith(head) and "/" not in n[len(head) :]})

    def locate(self, path: str) -> Located:
        """The checkpoint in the archive: its first .index member, else its V1 table members."""
        while True:
            m = self.stream.scan()
            if m is None:
                break
            if m.kind == REGULAR and m.name.endswith(".index") and len(m.name) > len(".index"):
                self.hold(m)
                return Located("v2", f"{self.name}/{m.name[: -len('.index')]}")
        data = [m for m in self.stream.members if m.kind == REGULAR and naming.split_data_path(m.name)]
        if data:  # named so that doctor can say what is there instead
            raise CheckpointNotFoundError(
                "archive holds data shards but no .index member", path=f"{self.name}/{data[0].name}"
            )
        tables = [
            m
            for m in self.stream.members
            if m.kind == REGULAR and os.path.basename(m.name) != "checkpoint" and not m.name.endswith(".meta")
        ]
        if not tables:
            raise CheckpointNotFoundError("archive holds no checkpoint (no .index member, no V1 file)", path=self.name)
        shards = [s for s in (naming.V1_SHARD_RE.match(m.name) for m in tables) if s]
        if len(shards) == len(tables) and len({(s["base"], s["count"]) for s in shards}) == 1:
            for m in tables:
                self.hold(m)
            base = shards[0]["base"]
            return Located("v1", f"{self.name}/{base}", tuple(f"{self.name}/{m.name}" for m in tables))
        if len(tables) == 1:
            self.hold(tables[0])
            return Located("v1", f"{self.name}/{tables[0].name}", (f"{self.name}/{tables[0].name}",))
        names = ", ".join(m.name for m in tables[:5])
        raise WrongFileError(f"archive holds {len(tables)} files and no .index: {names}", path=self.name)

    def close(self) -> None:
        self.stream.close()


def open_input(path: str) -> Files:
    """The store holding path: an archive, an fsspec URL, or local files."""
    from ..sources import is_archive, is_remote

    if is_archive(path):
        return ArchiveFiles(path)
    if is_remote(path):
        return FsspecFiles(path)
    return LocalFiles()


def local_path(path: str) -> str:
    """A file:// URL as the local path it names."""
    return path[len("file://") :] if path.startswith("file://") else path


def data_files(store: Files, prefix: str) -> list[str]:
    """The paths of prefix's V2 data shards present in its directory (any shard count), sorted."""
    base = re.escape(store.basename(prefix))
    pattern = re.compile(base + r"\.data-\d{5}-of-\d{5}")
    directory = store.dirname(prefix)
    return [store.join(directory, n) for n in store.list(directory) if pattern.fullmatch(n)]


__all__ = ["Files", "open_input", "local_path", "data_files", "LocalFiles", "FsspecFiles", "ArchiveFiles"]
