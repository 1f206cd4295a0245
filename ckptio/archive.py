"""Checkpoints in one zstandard-compressed tar archive (.tar.zst): pack, unpack, and stream-read.

    archive   := zstd( member* end-of-archive )          any number of zstd frames, content checksums on
    member    := [pax header block + records, padded]  header block (512 bytes)  data, zero-padded to 512
    end       := two zero blocks, then zeros up to a multiple of 10240 bytes (the tar record size)

`pack` writes the `.index` member first, then the data shards in shard order (V1: the table files
in order), and nothing else: no manifest, so `tar --zstd -xf` gives back exactly the checkpoint.

Reading never makes an unpacked copy. Opening decompresses only up to the end of the `.index`
member, which is kept in memory; each data shard is then a forward-only `Source` over the one
decompressing stream. Reads must come in increasing (member, offset) order, as `rewrite` and
`verify` make them; a backward read starts a new pass from the beginning of the archive and skips
forward, which is correct but costs a decompression of everything before it (`passes` counts
them). Memory stays bounded by the read size. V1 archives are the exception: V1 tables need
random access, so their members are read into memory.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

from .bundle import naming
from .bundle.paths import Located
from .checkpoint import ARCHIVE_SUFFIXES, Checkpoint
from .errors import (CheckpointNotFoundError, CorruptCheckpointError, OutputExistsError, Remedy,
                     TruncatedError, UnsupportedError, WriteError, WrongFileError)
from .io import (AtomicFiles, FileSource, MemorySource, OutputClaim, Source, interrupts_deferred, make_dirs,
                 remove_stale_temps, staging_dir)
from .sstable.format import MAGIC_BYTES

SUFFIXES = ARCHIVE_SUFFIXES
ZSTD_MAGIC = bytes.fromhex("28b52ffd")
BLOCK = 512
RECORD = 10240                 # tar's default record: 20 blocks; archives end on a record boundary
COPY_CHUNK = 4 << 20           # bytes per read while packing
SKIP_CHUNK = 1 << 20           # bytes per discarded read while skipping forward
MAX_META = 1 << 20             # cap on pax records and GNU long names
# Members held in memory are capped far above any real checkpoint's (an index of 512 MiB lists
# millions of tensors) and well below what a 64 KB archive of zeros can inflate to.
MAX_INDEX = 512 << 20          # cap on an index member held in memory
MAX_V1 = 512 << 20             # cap on V1 members held in memory (all together)
READ_CHUNK = 8 << 20           # most bytes asked of the decompressor at once: memory follows what it produces
DEFAULT_LEVEL = 3


# -- tar headers ---------------------------------------------------------------------------------
#
#   ustar header block (512 bytes; numbers are octal text, NUL-terminated):
#     0 name[100]  100 mode[8]  108 uid[8]  116 gid[8]  124 size[12]  136 mtime[12]  148 chksum[8]
#     156 typeflag  157 linkname[100]  257 magic "ustar\0"  263 version "00"  265 uname[32]
#     297 gname[32]  329 devmajor[8]  337 devminor[8]  345 prefix[155]  500 padding[12]
#   chksum = sum of the 512 bytes with the chksum field read as 8 spaces, stored "%06o\0 ".
#   A size of 8 GiB or more, or a name that is not short ASCII, goes into a pax header
#   (typeflag 'x') before the member: records "LEN key=value\n", LEN counting the whole record.
#   Read also: GNU base-256 sizes (first byte 0x80), GNU long names (typeflag 'L'), the ustar prefix.

REGULAR, DIRECTORY, OTHER = "file", "dir", "other"
_NO_DATA_TYPES = b"123456"     # links, devices, directories, fifos carry no data


@dataclass(frozen=True, slots=True)
class TarHeader:
    """One decoded header block, before pax or GNU long-name overrides."""

    name: str
    size: int
    typeflag: bytes
    mtime: int = 0
    mode: int = 0o644


def _number_field(value: int, width: int) -> bytes:
    text = b"%0*o" % (width - 1, value)
    if len(text) > width - 1:
        raise ValueError(f"{value} does not fit a {width}-byte tar field")
    return text + b"\0"


def _ustar_block(name: bytes, size: int, mtime: int, typeflag: bytes, mode: int) -> bytes:
    block = bytearray(BLOCK)
    block[0:len(name)] = name
    block[100:108] = _number_field(mode, 8)
    block[108:116] = _number_field(0, 8)
    block[116:124] = _number_field(0, 8)
    block[124:136] = _number_field(size, 12)
    block[136:148] = _number_field(max(0, min(mtime, 8 ** 11 - 1)), 12)
    block[148:156] = b" " * 8
    block[156:157] = typeflag
    block[257:263] = b"ustar\0"
    block[263:265] = b"00"
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def _pax_records(pairs: dict[str, str]) -> bytes:
    out = bytearray()
    for key, value in pairs.items():
        body = f" {key}={value}\n".encode("utf-8", "surrogateescape")
        n = len(body) + 1
        while len(str(n)) + len(body) != n:
            n = len(str(n)) + len(body)
        out += str(n).encode() + body
    return bytes(out)


def encode_header(name: str, size: int, *, mtime: int = 0, mode: int = 0o644) -> bytes:
    """Header block(s) for a regular file: a pax header first when name or size need one."""
    raw = name.encode("utf-8", "surrogateescape")
    pax = {}
    if len(raw) > 100 or not name.isascii():
        pax["path"] = name
    if size >= 8 ** 11:
        pax["size"] = str(size)
    head = b""
    if pax:
        records = _pax_records(pax)
        head = _ustar_block(b"PaxHeaders/" + raw[:89], len(records), mtime, b"x", 0o644) + _padded(records)
    return head + _ustar_block(raw[:100], 0 if "size" in pax else size, mtime, b"0", mode)


def _padded(data: bytes) -> bytes:
    return data + bytes(-len(data) % BLOCK)


def _parse_number(field: bytes, what: str, *, path, offset) -> int:
    if field[:1] and field[0] & 0x80:  # GNU base-256, big-endian; 0xff would be negative
        if field[0] == 0xFF:
            raise CorruptCheckpointError(f"negative {what} in tar header", path=path, offset=offset)
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    text = field.split(b"\0", 1)[0].strip(b" ")
    if not text:
        return 0
    if text.strip(b"01234567"):
        raise CorruptCheckpointError(f"bad {what} field {bytes(field)!r} in tar header", path=path, offset=offset)
    return int(text, 8)


def decode_header(block: bytes, *, path=None, offset=None) -> TarHeader:
    """Decode one 512-byte header block, checking its checksum."""
    if len(block) != BLOCK:
        raise TruncatedError("archive ends inside a tar header", path=path, offset=offset)
    stored = _parse_number(block[148:156], "checksum", path=path, offset=offset)
    unsigned = sum(block[:148]) + 8 * 32 + sum(block[156:])
    signed = unsigned - 256 * sum(1 for b in block[:148] + block[156:] if b >= 128)
    if stored not in (unsigned, signed):
        raise CorruptCheckpointError("not a tar archive (bad header checksum)", path=path, offset=offset)
    name = block[0:100].split(b"\0", 1)[0]
    if block[257:262] == b"ustar" and block[263:265] == b"00":  # POSIX ustar: a prefix may precede the name
        prefix = block[345:500].split(b"\0", 1)[0]
        if prefix:
            name = prefix + b"/" + name
    return TarHeader(name=name.decode("utf-8", "surrogateescape"),
                     size=_parse_number(block[124:136], "size", path=path, offset=offset),
                     typeflag=block[156:157],
                     mtime=_parse_number(block[136:148], "mtime", path=path, offset=offset),
                     mode=_parse_number(block[100:108], "mode", path=path, offset=offset))


def parse_pax(data: bytes, *, path=None, offset=None) -> dict[str, str]:
    """Records "LEN key=value\\n" of a pax extended header."""
    out, pos = {}, 0
    while pos < len(data):
        if data[pos] == 0:  # zero padding after the last record
            break
        space = data.find(b" ", pos)
        try:
            n = int(data[pos:space])
        except ValueError:
            n = 0
        if space < 0 or n <= space - pos or pos + n > len(data) or data[pos + n - 1] != 0x0A:
            raise CorruptCheckpointError("bad pax extended header record", path=path, offset=offset)
        key, eq, value = data[space + 1:pos + n - 1].partition(b"=")
        if not eq:
            raise CorruptCheckpointError("bad pax extended header record", path=path, offset=offset)
        out[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos += n
    return out


@dataclass(frozen=True, slots=True)
class Member:
    """One archive member as found by a scan: where its data starts in the decompressed stream."""

    name: str
    size: int
    kind: str            # REGULAR, DIRECTORY or OTHER
    data_offset: int     # in the decompressed tar stream
    ordinal: int
    mtime: int = 0

    @property
    def end(self) -> int:
        return self.data_offset + self.size


def _clean_name(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name.rstrip("/") or name  # GNU tar writes directories as "dir/"


# -- reading -------------------------------------------------------------------------------------


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
        self.decompressed = 0        # bytes decompressed over all passes
        self.ended = False           # end of archive reached by a scan
        self._scan_at = 0            # offset of the next header not scanned yet
        self._lock = threading.RLock()
        self._z = None
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
        self._z = self._zstd.ZstdDecompressor().stream_reader(self._raw, read_size=1 << 20,
                                                             read_across_frames=True, closefd=False)
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
                    raise WrongFileError("not a zstandard-compressed archive (bad magic number)",
                                         path=self.label) from None
                raise CorruptCheckpointError(f"compressed data is corrupt after {self._pos + got} bytes "
                                             f"of the tar stream ({exc})", path=self.label) from None
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
                    raise TruncatedError("archive is truncated (it ends before tar's end-of-archive marker)",
                                         path=self.label, offset=pos)
                if block == bytes(BLOCK):  # zero blocks end the archive
                    self.ended = True
                    return None
                hdr = decode_header(block, path=self.label, offset=pos)
                data_at = pos + BLOCK
                padded = hdr.size + (-hdr.size % BLOCK)
                if hdr.typeflag in (b"x", b"g", b"L", b"K"):
                    if hdr.size > MAX_META:
                        raise CorruptCheckpointError(f"tar metadata header of {hdr.size} bytes (cap {MAX_META})",
                                                     path=self.label, offset=pos)
                    data = self._read(hdr.size)
                    if len(data) != hdr.size:
                        raise TruncatedError("archive ends inside a tar header", path=self.label, offset=data_at)
                    if hdr.typeflag == b"x":
                        overrides.update(parse_pax(data, path=self.label, offset=data_at))
                    elif hdr.typeflag == b"L":
                        overrides["path"] = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
                    pos = data_at + padded
                    continue
                name = _clean_name(overrides.get("path", hdr.name))
                size = hdr.size
                if "size" in overrides:
                    try:
                        size = int(overrides["size"])
                    except ValueError:
                        raise CorruptCheckpointError("bad pax size record", path=self.label, offset=pos) from None
                kind = (REGULAR if hdr.typeflag in (b"0", b"\0", b"7") else
                        DIRECTORY if hdr.typeflag == b"5" else OTHER)
                if hdr.typeflag and hdr.typeflag in _NO_DATA_TYPES:
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
            raise CorruptCheckpointError(f"archive holds member {member.name!r} twice (tar would extract the "
                                         "last copy, ckptio would read the first)", path=self.label, offset=pos)
        self._seen.add(key)

    def check_rest(self) -> None:
        """Scan every member header to the end of the archive and drain the stream, so that a
        duplicate member or a bad zstd content checksum after the last member read is found."""
        for _ in self:
            pass
        _drain(self)

    def find(self, name: str) -> Member | None:
        """The regular-file member called name, scanning forward as far as needed."""
        with self._lock:
            member = self._by_name.get(name)
            while member is None and not self.ended:
                m = self.scan()
                if m is not None and m.kind == REGULAR and m.name == name:
                    member = m
            return member

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


class ArchiveCheckpoint(Checkpoint):
    """A checkpoint read straight out of a .tar.zst archive; see the module docstring.

    `archive` is the ArchiveStream: `compressed_bytes_read`, `decompressed`, `passes`.
    """

    sequential = True  # sources are forward-only: read in (shard, offset) order, one thread

    def __init__(self, path: str, stream: ArchiveStream, located: Located, held: dict[str, bytes]):
        self.archive = stream
        self._held = held
        self.archive_path = path
        super().__init__(path, located=located, open_source=self._open_member)

    def _open_member(self, path: str) -> Source:
        prefix = self.archive.label + "/"
        name = path[len(prefix):] if path.startswith(prefix) else None
        if name is not None and name in self._held:
            return MemorySource(self._held[name], name=path)
        member = self.archive.find(name) if name is not None else None
        if member is None:
            raise CheckpointNotFoundError("no such member in the archive", path=path)
        return MemberSource(self.archive, member)

    @property
    def bytes_read(self) -> int:
        """Compressed bytes read from the archive so far."""
        return self.archive.compressed_bytes_read

    def check_container(self) -> None:
        """For verify, after the tensors: the rest of the archive (duplicates, zstd checksum)."""
        self.archive.check_rest()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.archive.close()

    def __repr__(self) -> str:
        return f"<ckptio.ArchiveCheckpoint {self.format} {self.prefix!r}>"


def open_archive(path, *, source: Source | None = None) -> ArchiveCheckpoint:
    """Open a checkpoint inside a .tar.zst archive, decompressing only up to the end of its .index.

    The archive's first `.index` member names the checkpoint (ckptio writes it first; in other
    archives the members before it are skipped, and read again by a second pass if needed).
    Without an `.index`, the V1 table files in the archive are used (read into memory).
    """
    label = os.fspath(path)
    src = source or FileSource(label)
    try:
        stream = ArchiveStream(src, label)
        held: dict[str, bytes] = {}
        index = None
        while index is None:
            m = stream.scan()
            if m is None:
                break
            if m.kind == REGULAR and m.name.endswith(".index") and len(m.name) > len(".index"):
                index = m
        if index is not None:
            if index.size > MAX_INDEX:  # before a byte of it is decompressed
                raise UnsupportedError(f"index member of {index.size} bytes is more than ckptio holds in memory "
                                       f"({MAX_INDEX} bytes); unpack the archive first", path=f"{label}/{index.name}")
            held[index.name] = stream.read_at(index.data_offset, index.size, name=f"{label}/{index.name}")
            located = Located("v2", f"{label}/{index.name[:-len('.index')]}")
        else:
            located = _locate_v1(stream, held, label)
        return ArchiveCheckpoint(label, stream, located, held)
    except BaseException:
        src.close()
        raise


def _locate_v1(stream: ArchiveStream, held: dict[str, bytes], label: str) -> Located:
    """Hold every V1 table member in memory and pick the checkpoint they form."""
    candidates = [m for m in stream.members if m.kind == REGULAR and m.size >= 48
                  and os.path.basename(m.name) != "checkpoint" and not m.name.endswith(".meta")]
    if not candidates:
        raise CheckpointNotFoundError("archive holds no checkpoint (no .index member, no V1 table file)",
                                      path=label)
    if sum(m.size for m in candidates) > MAX_V1:
        raise UnsupportedError(f"V1 archives are read into memory; this one holds more than {MAX_V1} bytes "
                               "(unpack it first)", path=label)
    tables = []
    for m in candidates:
        data = stream.read_at(m.data_offset, m.size, name=f"{label}/{m.name}")
        if data[-8:] == MAGIC_BYTES:
            held[m.name] = data
            tables.append(m.name)
    if not tables:
        raise CheckpointNotFoundError("archive holds no checkpoint (no .index member, no V1 table file)",
                                      path=label)
    shards = [naming.V1_SHARD_RE.match(n) for n in tables]
    if all(shards) and len({(s["base"], s["count"]) for s in shards}) == 1:
        return Located("v1", f"{label}/{shards[0]['base']}", tuple(f"{label}/{n}" for n in sorted(tables)))
    if len(tables) == 1:
        return Located("v1", f"{label}/{tables[0]}", (f"{label}/{tables[0]}",))
    raise CheckpointNotFoundError(f"archive holds {len(tables)} V1 checkpoints: {', '.join(tables[:5])}",
                                  path=label)


# -- packing -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PackStats:
    """What pack did: bytes_in (checkpoint files), bytes_out (archive), wall seconds."""

    path: str
    files: tuple[str, ...]
    bytes_in: int
    bytes_out: int
    seconds: float
    level: int
    threads: int

    @property
    def ratio(self) -> float:
        """Compression ratio, bytes_in / bytes_out."""
        return self.bytes_in / self.bytes_out if self.bytes_out else 0.0

    @property
    def throughput(self) -> float:
        """Checkpoint bytes packed per second."""
        return self.bytes_in / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict:
        return {"path": self.path, "files": list(self.files), "bytes_in": self.bytes_in,
                "bytes_out": self.bytes_out, "ratio": round(self.ratio, 4), "seconds": round(self.seconds, 3),
                "throughput": round(self.throughput), "level": self.level, "threads": self.threads}


def checkpoint_files(ckpt: Checkpoint) -> list[tuple[str, object]]:
    """(path, open) of every file of a checkpoint, .index first, then data shards in order (V1: its
    tables); open() returns the file's Source. Opening is deferred so that an archive source is
    read in one forward pass."""
    reader = ckpt._reader
    if ckpt.format == "v2":
        files = [(reader.index_source.name, lambda: reader.index_source)]
        files += [(reader.shard_path(i), lambda i=i: reader.shard(i)) for i in range(reader.header.num_shards)]
        return files
    return [(t.source.name, lambda t=t: t.source) for t in reader.tables]


def _basename(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def _mtime(source: Source) -> int:
    fd = source.fileno()
    try:
        return int(os.fstat(fd).st_mtime) if fd is not None else int(time.time())
    except OSError:
        return int(time.time())


class _Counting:
    """Counts bytes written through to a binary file (zstd's output)."""

    def __init__(self, f):
        self.f, self.n = f, 0

    def write(self, data) -> int:
        n = self.f.write(data)
        self.n += len(data)
        return n

    def flush(self) -> None:
        self.f.flush()


def pack(src, out_path, *, level: int = DEFAULT_LEVEL, threads: int = -1, force: bool = False,
         progress=None) -> PackStats:
    """Write the checkpoint src (any path ckptio.open takes, or an open Checkpoint) to one .tar.zst.

    Members: the .index, then every data shard in order (V1: its table files). The archive is
    written to a temp name beside out_path and renamed into place when complete; out_path may
    also be a remote URL (committed the same way where the filesystem allows renames).
    threads: zstd worker threads; -1 = one per CPU, 0 = compress on the calling thread.
    """
    from .checkpoint import open as open_checkpoint

    started = time.perf_counter()
    out_path = os.fspath(out_path)
    ckpt = src if isinstance(src, Checkpoint) else open_checkpoint(src)
    try:
        files = checkpoint_files(ckpt)
        inputs = {os.path.abspath(p) for p, _ in files if "://" not in p}
        if getattr(ckpt, "archive_path", None):
            inputs.add(os.path.abspath(ckpt.archive_path))
        if "://" not in out_path and os.path.abspath(out_path) in inputs:
            raise OutputExistsError("output is the input; write the archive elsewhere", path=out_path)
        output = _open_output(out_path, force=force)
        try:
            bytes_in = _write_archive(output.file, files, level, threads, progress)
            bytes_out = output.commit()
        except BaseException:
            output.abort()
            raise
    finally:
        if ckpt is not src:
            ckpt.close()
    return PackStats(out_path, tuple(_basename(p) for p, _ in files), bytes_in, bytes_out,
                     time.perf_counter() - started, level, threads)


def _write_archive(f, files, level: int, threads: int, progress) -> int:
    import zstandard

    try:
        cctx = zstandard.ZstdCompressor(level=level, threads=threads, write_checksum=True)
    except zstandard.ZstdError as exc:
        raise WriteError(f"bad compression settings (level {level}, threads {threads}): {exc}") from None
    total = 0
    with cctx.stream_writer(f, closefd=False, write_size=1 << 20) as zw:
        written = 0
        for path, open_source in files:
            source = open_source()
            header = encode_header(_basename(path), source.size, mtime=_mtime(source))
            zw.write(header)
            pos = 0
            while pos < source.size:
                data = source.read(pos, min(COPY_CHUNK, source.size - pos))
                zw.write(data)
                pos += len(data)
                if progress:
                    progress(len(data))
            zw.write(bytes(-source.size % BLOCK))
            written += len(header) + source.size + (-source.size % BLOCK)
            total += source.size
        end = 2 * BLOCK
        end += -(written + end) % RECORD
        zw.write(bytes(end))
    return total


class _LocalOutput:
    """The archive's temp file, owned by this writer (OutputClaim) until committed or aborted."""

    def __init__(self, path: str, force: bool):
        self.path, self.force = path, force
        if os.path.exists(path) and not force:
            raise OutputExistsError("the archive already exists", path=path, remedy=Remedy("force", "replace it"))
        directory = os.path.dirname(path) or "."
        make_dirs(directory)
        self.claim = OutputClaim(path)
        try:
            if os.path.exists(path) and not force:  # another writer finished it meanwhile
                raise OutputExistsError("the archive already exists (use --force to replace it)", path=path)
            self.files = AtomicFiles(directory)
            self.tmp, fd = self.files.create(path)
        except BaseException:
            self.claim.release()
            raise
        self._raw = os.fdopen(fd, "wb", buffering=1 << 20)
        self.file = _Counting(self._raw)

    def commit(self) -> int:
        try:
            self._raw.close()
        except OSError as exc:
            raise WriteError(f"cannot write: {exc.strerror}", path=self.tmp) from None
        with interrupts_deferred():
            self.files.commit(no_replace=() if self.force else (self.path,))
            self.claim.release()
        return self.file.n

    def abort(self) -> None:
        try:
            self._raw.close()
        except OSError:
            pass
        self.files.abort()
        self.claim.release()


def _open_output(path: str, *, force: bool):
    if "://" in path:
        from .remote import RemoteOutput
        return RemoteOutput(path, overwrite=force)
    return _LocalOutput(path, force)


# -- unpacking -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UnpackStats:
    path: str
    out_dir: str
    files: tuple[str, ...]
    bytes_out: int
    seconds: float

    def to_json(self) -> dict:
        return {"path": self.path, "out_dir": self.out_dir, "files": list(self.files),
                "bytes": self.bytes_out, "seconds": round(self.seconds, 3)}


def unpack(archive_path, out_dir, *, force: bool = False, progress=None) -> UnpackStats:
    """Extract every regular file of the archive into out_dir, byte for byte, in one pass.

    Files go to temp names first; data files are renamed into place before any .index, so a
    checkpoint appears only when whole. Existing files are refused unless force.
    """
    started = time.perf_counter()
    label = os.fspath(archive_path)
    out_dir = os.fspath(out_dir)
    if "://" in label:
        from .remote import RemoteSource
        source = RemoteSource.from_url(label)
    else:
        source = FileSource(label)
    try:
        stream = ArchiveStream(source, label)
    except BaseException:
        source.close()
        raise
    data_files, index_files = {}, {}   # directory -> AtomicFiles
    names, total = [], 0
    try:
        for m in stream:
            if m.kind != REGULAR:
                continue
            rel = _safe_relpath(m.name, label)
            final = os.path.join(out_dir, rel)
            if os.path.lexists(final) and not force:
                raise OutputExistsError("file exists", path=final, remedy=Remedy("force", "replace it"))
            directory = os.path.dirname(final) or "."
            make_dirs(directory)
            group = index_files if rel.endswith(".index") else data_files
            files = group.setdefault(directory, AtomicFiles(directory))
            tmp, fd = files.create(final)
            try:
                pos = 0
                while pos < m.size:
                    data = stream.read_at(m.data_offset + pos, min(COPY_CHUNK, m.size - pos),
                                          name=f"{label}/{m.name}")
                    view = memoryview(data)
                    while view:
                        try:
                            view = view[os.write(fd, view):]
                        except OSError as exc:
                            raise WriteError(f"cannot write: {exc.strerror}", path=tmp) from None
                    pos += len(data)
                    if progress:
                        progress(len(data))
            finally:
                os.close(fd)
            names.append(rel)
            total += m.size
        _drain(stream)  # reach the end of the zstd frame so its content checksum is checked
        for group in (data_files, index_files):
            for files in group.values():
                files.commit()
    except BaseException:
        for group in (data_files, index_files):
            for files in group.values():
                files.abort()
        raise
    finally:
        stream.close()
    if not names:
        raise CheckpointNotFoundError("archive holds no files", path=label)
    return UnpackStats(label, out_dir, tuple(names), total, time.perf_counter() - started)


def _drain(stream: ArchiveStream) -> None:
    with stream._lock:
        while stream._read(SKIP_CHUNK):
            pass


def _safe_relpath(name: str, label: str) -> str:
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or name.startswith("/") or ".." in parts or "\\" in name or "\0" in name:
        raise CorruptCheckpointError(f"refusing to extract a member with an unsafe name {name!r}", path=label)
    return os.path.join(*parts)


# -- rewrite into an archive ---------------------------------------------------------------------


def rewrite_packed(src, out_path, steps=(), *, level: int = DEFAULT_LEVEL, threads: int = -1,
                   force: bool = False, name: str | None = None, **options):
    """rewrite() into a temp directory beside out_path, then pack it; returns (Report, PackStats).

    name: the checkpoint's file name prefix inside the archive (default: the source's).
    """
    import shutil
    import tempfile

    from .checkpoint import open as open_checkpoint
    from .rewrite import rewrite

    out_path = os.fspath(out_path)
    if "://" not in out_path and os.path.exists(out_path) and not force:
        raise OutputExistsError("the archive already exists", path=out_path, remedy=Remedy("force", "replace it"))
    ckpt = src if isinstance(src, Checkpoint) else open_checkpoint(src)
    try:
        if "://" in out_path:
            tmp = tempfile.mkdtemp(prefix=".ckptio-pack-")
        else:
            # Beside the archive (one filesystem), named after this process: a later writer there
            # removes it if this one is killed (io.remove_stale_temps).
            local_dir = os.path.dirname(os.path.abspath(out_path))
            make_dirs(local_dir)
            remove_stale_temps(local_dir)
            tmp = staging_dir(local_dir)
    except BaseException:
        if ckpt is not src:
            ckpt.close()
        raise
    try:
        base = name or _basename(ckpt.prefix) or "model.ckpt"
        report = rewrite(ckpt, os.path.join(tmp, base), steps, state_file=False, **options)
        stats = pack(os.path.join(tmp, base), out_path, level=level, threads=threads, force=force)
        report.dst = out_path
        return report, stats
    finally:
        if ckpt is not src:
            ckpt.close()
        shutil.rmtree(tmp, ignore_errors=True)


__all__ = ["pack", "unpack", "open_archive", "rewrite_packed", "PackStats", "UnpackStats", "ArchiveCheckpoint",
           "ArchiveStream", "MemberSource", "encode_header", "decode_header", "parse_pax", "SUFFIXES"]
