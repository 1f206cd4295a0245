"""The tar member format: ustar header blocks, pax records, GNU extensions read; the member a scan finds."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import CorruptCheckpointError, TruncatedError

BLOCK = 512
RECORD = 10240  # tar's default record: 20 blocks; archives end on a record boundary
MAX_META = 1 << 20  # cap on pax records and GNU long names


#   ustar header block (512 bytes; numbers are octal text, NUL-terminated):
#     0 name[100]  100 mode[8]  108 uid[8]  116 gid[8]  124 size[12]  136 mtime[12]  148 chksum[8]
#     156 typeflag  157 linkname[100]  257 magic "ustar\0"  263 version "00"  265 uname[32]
#     297 gname[32]  329 devmajor[8]  337 devminor[8]  345 prefix[155]  500 padding[12]
#   chksum = sum of the 512 bytes with the chksum field read as 8 spaces, stored "%06o\0 ".
#   A size of 8 GiB or more, or a name that is not short ASCII, goes into a pax header
#   (typeflag 'x') before the member: records "LEN key=value\n", LEN counting the whole record.
#   Read also: GNU base-256 sizes (first byte 0x80), GNU long names (typeflag 'L'), the ustar prefix.

REGULAR, DIRECTORY, OTHER = "file", "dir", "other"
NO_DATA_TYPES = b"123456"  # links, devices, directories, fifos carry no data


@dataclass(frozen=True, slots=True)
class TarHeader:
    """One decoded header block, before pax or GNU long-name overrides."""

    name: str
    size: int
    typeflag: bytes
    mtime: int = 0
    mode: int = 0o644


def encode_header(name: str, size: int, *, mtime: int = 0, mode: int = 0o644) -> bytes:
    """Header block(s) for a regular file, from stdlib tarfile (pax format: a pax header first when name or size need one)."""
    import tarfile

    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, mtime, mode
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


# Reading stays hand-written: tarfile reads pax records and GNU long names of any declared size into
# memory and trusts them, while this reader caps them (MAX_META) and checks every field of a hostile archive.
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
    return TarHeader(
        name=name.decode("utf-8", "surrogateescape"),
        size=_parse_number(block[124:136], "size", path=path, offset=offset),
        typeflag=block[156:157],
        mtime=_parse_number(block[136:148], "mtime", path=path, offset=offset),
        mode=_parse_number(block[100:108], "mode", path=path, offset=offset),
    )


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
        key, eq, value = data[space + 1 : pos + n - 1].partition(b"=")
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
    kind: str  # REGULAR, DIRECTORY or OTHER
    data_offset: int  # in the decompressed tar stream
    ordinal: int
    mtime: int = 0

    @property
    def end(self) -> int:
        return self.data_offset + self.size


def clean_name(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name.rstrip("/") or name  # GNU tar writes directories as "dir/"
