"""A .tar.zst archive as a store: one forward decompressing pass over the tar stream, members found by scanning."""

from __future__ import annotations

import threading

from ..errors import CheckpointNotFoundError, CorruptCheckpointError, TruncatedError, UnsupportedError, WrongFileError
from .base import Source, Store
from .memory import MemorySource
from .tar import BLOCK, DIRECTORY, MAX_META, NO_DATA_TYPES, OTHER, REGULAR, Member, clean_name, decode_header, parse_pax

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

ZSTD_MAGIC = bytes.fromhex("28b52ffd")
SKIP_CHUNK = 1 << 20  # bytes per discarded read while skipping forward
READ_CHUNK = 8 << 20  # most bytes asked of the decompressor at once: memory follows what it produces


class _SourceReader:
    """File-like read(n) over a Source for the zstd decompressor; read sizes start small and grow,
    so opening a big archive reads little more than the bytes it needs."""

    def __init__(self, source: Source, first: int = 64 << 10, most: int = 4 << 20):
        self.source, self.pos, self.next, self.most = source, 0, first, most

    def read(self, n: int = -1) -> bytes:
        left = self.source.size - self.pos
        if left <= 0:
            return b""
        n = min(left, self.next, n if n is not None and n >= 0 else left)
        data = self.source.read(self.pos, n)
        self.pos += len(data)
        self.next = min(self.next * 2, self.most)
        return data


class ArchiveStream:
    """One forward pass over the decompressed tar stream of an archive; thread-safe.

    Members are found by scanning headers in order and remembered across passes; reading at an
    earlier position than the current one starts a new pass (counted in `passes`).
    """

    def __init__(self, source: Source, label: str | None = None):
        import zstandard

        self._zstd = zstandard
        self.source = source
        self.label = label or source.name
        self.members: list[Member] = []
        self._by_name: dict[str, Member] = {}
        self._seen: set[str] = set()  # normalized names of every member but directories
        self.passes = 0
        self.decompressed = 0  # bytes decompressed over all passes
        self.ended = False  # end of archive reached by a scan
        self._scan_at = 0  # offset of the next header not scanned yet
        self._lock = threading.RLock()
        self._z: Any = None  # zstandard's stream reader, over _SourceReader (file-like enough)
        if source.size == 0:
            raise WrongFileError("not a zstandard-compressed archive (empty file)", path=self.label)
        self._start()

    @property
    def compressed_bytes_read(self) -> int:
        return self.source.bytes_read

    def _start(self) -> None:
        if self._z is not None:
            self._z.close()
        self._raw = _SourceReader(self.source)
        self._z = self._zstd.ZstdDecompressor().stream_reader(
            self._raw,  # type: ignore[arg-type]  # duck-typed: read/readinto/tell
            read_size=1 << 20,
            read_across_frames=True,
            closefd=False,
        )
        self._pos = 0
        self.passes += 1

    def _read(self, n: int) -> bytes:
        """Up to n bytes at the current position (fewer only at the end of the stream)."""
        chunks, got = [], 0
        while got < n:
            try:
                # Bounded asks: the decompressor allocates what is asked, and a member's declared
                # size is hostile input until the bytes are actually there.
                piece = self._z.read(min(n - got, READ_CHUNK))
            except self._zstd.ZstdError as exc:
                if self._pos + got == 0 and self._raw.pos <= 1 << 20 and not self._magic_ok():
                    raise WrongFileError(
                        "not a zstandard-compressed archive (bad magic number)", path=self.label
                    ) from None
                raise CorruptCheckpointError(
                    f"compressed data is corrupt after {self._pos + got} bytes of the tar stream ({exc})",
                    path=self.label,
                ) from None
            if not piece:
                break
            chunks.append(piece)
            got += len(piece)
        self._pos += got
        self.decompressed += got
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _magic_ok(self) -> bool:
        head = self.source.read(0, min(4, self.source.size))
        skippable = len(head) == 4 and head[0] & 0xF0 == 0x50 and head[1:] == b"\x2a\x4d\x18"
        return head == ZSTD_MAGIC or skippable

    def _seek(self, pos: int) -> None:
        if pos < self._pos:
            self._start()
        while self._pos < pos:
            n = min(SKIP_CHUNK, pos - self._pos)
            if len(self._read(n)) < n:
                raise TruncatedError("archive ends early", path=self.label, offset=self._pos)

    def read_at(self, pos: int, n: int, *, name=None) -> bytes:
        """Exactly n decompressed bytes at pos (a forward skip, or a new pass if pos is behind)."""
        with self._lock:
            self._seek(pos)
            data = self._read(n)
            if len(data) != n:
                raise TruncatedError("archive ends inside this member", path=name or self.label, offset=pos)
            return data

    def close(self) -> None:
        with self._lock:
            if self._z is not None:
                self._z.close()
                self._z = None
            self.source.close()

    # -- scanning members --

    def scan(self) -> Member | None:
        """The next member not yet seen, or None at the end of the archive."""
        with self._lock:
            if self.ended:
                return None
            overrides: dict[str, str] = {}
            pos = self._scan_at
            while True:
                self._seek(pos)
                block = self._read(BLOCK)
                if not block:
                    raise TruncatedError(
                        "archive is truncated (it ends before tar's end-of-archive marker)", path=self.label, offset=pos
                    )
                if block == bytes(BLOCK):  # zero blocks end the archive
                    self.ended = True
                    return None
                hdr = decode_header(block, path=self.label, offset=pos)
                data_at = pos + BLOCK
                padded = hdr.size + (-hdr.size % BLOCK)
                if hdr.typeflag in (b"x", b"g", b"L", b"K"):
                    if hdr.size > MAX_META:
                        raise CorruptCheckpointError(
                            f"tar metadata header of {hdr.size} bytes (cap {MAX_META})", path=self.label, offset=pos
                        )
                    data = self._read(hdr.size)
                    if len(data) != hdr.size:
                        raise TruncatedError("archive ends inside a tar header", path=self.label, offset=data_at)
                    if hdr.typeflag == b"x":
                        overrides.update(parse_pax(data, path=self.label, offset=data_at))
                    elif hdr.typeflag == b"L":
                        overrides["path"] = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
                    pos = data_at + padded
                    continue
                name = clean_name(overrides.get("path", hdr.name))
                size = hdr.size
                if "size" in overrides:
                    try:
                        size = int(overrides["size"])
                    except ValueError:
                        raise CorruptCheckpointError("bad pax size record", path=self.label, offset=pos) from None
                kind = REGULAR if hdr.typeflag in (b"0", b"\0", b"7") else DIRECTORY if hdr.typeflag == b"5" else OTHER
                if hdr.typeflag and hdr.typeflag in NO_DATA_TYPES:
                    size = 0
                if size < 0:
                    raise CorruptCheckpointError("negative member size", path=self.label, offset=pos)
                member = Member(name, size, kind, data_at, len(self.members), hdr.mtime)
                self._refuse_duplicate(member, pos)
                self._scan_at = data_at + size + (-size % BLOCK)
                self.members.append(member)
                if kind == REGULAR:
                    self._by_name.setdefault(name, member)
                return member

    def _refuse_duplicate(self, member: Member, pos: int) -> None:
        """A name stored twice: readers would take the first copy where `tar -x` keeps the last."""
        if member.kind == DIRECTORY:
            return
        key = "/".join(p for p in member.name.split("/") if p not in ("", "."))
        if key in self._seen:
            raise CorruptCheckpointError(
                f"archive holds member {member.name!r} twice (tar would extract the "
                "last copy, ckptio would read the first)",
                path=self.label,
                offset=pos,
            )
        self._seen.add(key)

    def check_rest(self) -> None:
        """Scan every member header to the end of the archive and drain the stream, so that a
        duplicate member or a bad zstd content checksum after the last member read is found."""
        for _ in self:
            pass
        self.drain()

    def drain(self) -> None:
        """Decompress to the end of the stream, so that the zstd content checksum is checked."""
        with self._lock:
            while self._read(SKIP_CHUNK):
                pass

    def find(self, name: str) -> Member | None:
        """The regular-file member called name, scanning forward as far as needed."""
        with self._lock:
            member = self._by_name.get(name)
            while member is None and not self.ended:
                m = self.scan()
                if m is not None and m.kind == REGULAR and m.name == name:
                    member = m
            return member

    def scanned(self, name: str) -> Member | None:
        """The regular-file member called name if a scan has passed it, without scanning further."""
        return self._by_name.get(name)

    def __iter__(self):
        """Every member, scanning to the end."""
        i = 0
        while True:
            with self._lock:
                if i >= len(self.members) and self.scan() is None:
                    return
                m = self.members[i]
            yield m
            i += 1


class MemberSource(Source):
    """A data member as a Source; forward reads are cheap, backward reads start a new pass."""

    sequential = True

    def __init__(self, stream: ArchiveStream, member: Member):
        super().__init__()
        self._stream, self.member = stream, member
        self.name = f"{stream.label}/{member.name}"
        self.size = member.size

    def _pread(self, offset: int, length: int) -> bytes:
        return self._stream.read_at(self.member.data_offset + offset, length, name=self.name)


class ArchiveStore(Store):
    """The members of one archive, read forward; a member's path is '<archive>/<member name>'.

    A size is found by scanning forward to the member (cheap when asked in member order, the
    order ckptio packs them: index first, then the shards); a missing one costs a scan to the end,
    and list() scans every header. `held` members (an index, V1 tables) were read into memory and
    are served from there. Past a point where the stream is cut or corrupt, members already
    scanned still answer and every other question raises that failure again, without a new pass.
    """

    random_access = False

    def __init__(self, source: Source, label: str | None = None) -> None:
        self.stream = ArchiveStream(source, label)
        self.name = self.stream.label
        self.held: dict[str, bytes] = {}
        self._broken: CorruptCheckpointError | None = None

    def member_name(self, path: str) -> str | None:
        """The member name of a path in this store, or None when the path is outside it."""
        prefix = self.name + "/"
        return path[len(prefix) :] if path.startswith(prefix) else None

    def path_of(self, member_name: str) -> str:
        return f"{self.name}/{member_name}"

    def hold(self, member: Member) -> bytes:
        """Read a member into memory (a forward read or a new pass) and serve it from there."""
        data = self.stream.read_at(member.data_offset, member.size, name=self.path_of(member.name))
        self.held[member.name] = data
        return data

    def _find(self, name: str) -> Member | None:
        if self._broken is not None:
            member = self.stream.scanned(name)
            if member is None:
                raise self._broken
            return member
        try:
            return self.stream.find(name)
        except CorruptCheckpointError as exc:  # cut short or corrupt: the same answer every time
            self._broken = exc
            raise

    def _scan_all(self) -> None:
        if self._broken is not None:
            return  # what was scanned is all there is
        try:
            for _ in self.stream:
                pass
        except CorruptCheckpointError as exc:
            self._broken = exc
            raise

    def open(self, path: str) -> Source:
        name = self.member_name(path)
        if name is not None and name in self.held:
            return MemorySource(self.held[name], name=path)
        member = self._find(name) if name is not None else None
        if member is None:
            raise CheckpointNotFoundError("no such member in the archive", path=path)
        return MemberSource(self.stream, member)

    def size(self, path: str) -> int | None:
        name = self.member_name(path)
        member = self._find(name) if name is not None else None
        return None if member is None else member.size

    def _names(self) -> list[str]:
        return [m.name for m in self.stream.members if m.kind == REGULAR]

    def is_dir(self, path: str) -> bool:
        """Whether path is the archive or a directory among the members scanned so far."""
        name = self.member_name(path + "/")
        return name is not None and (not name or any(n.startswith(name) for n in self._names()))

    def list(self, directory: str) -> list[str]:
        """Names in a directory of the archive; scans every member header (a pass to the end)."""
        inner = self.member_name(directory.rstrip("/") + "/")
        if inner is None:
            return []
        self._scan_all()
        return sorted({n[len(inner) :].split("/", 1)[0] for n in self._names() if n.startswith(inner)})

    def output(self):
        raise UnsupportedError("an archive is written whole by ckptio.archive.pack, not file by file", path=self.name)

    def close(self) -> None:
        self.stream.close()
