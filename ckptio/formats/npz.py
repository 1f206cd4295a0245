"""NumPy .npz: a zip of <name>.npy members; read lazily, written without pickle.

    .npy = 93 'NUMPY' | major | minor | header length (u16 LE for 1.0, u32 LE for 2.0/3.0) | header | data
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }" + spaces + "\\n",
             padded so the data starts at a multiple of 64
(FORMAT-models.md §6.) Members we write are stored (not deflated), so each array's bytes are one
range of the .npz file: reading one tensor reads only its bytes.

ml_dtypes types (bfloat16, float8_*, int4 ...) have no name a .npy header can hold (bfloat16
is written by NumPy as '<V2' and float8_e5m2 as the unloadable '<f1'). ckptio stores them as raw
void ('|V2', '|V1') and records the TensorFlow dtype of every tensor whose .npy dtype does not
say it in one extra member, `__ckptio__.npy`: a 0-d unicode array holding JSON
    {"format": "ckptio-npz", "version": 1, "dtypes": {"name": "bfloat16", ...}, "source": ..., ...}
Every member loads with numpy.load(allow_pickle=False); `array.view(ml_dtypes.bfloat16)` restores a
bfloat16 one. Strings would need pickle (object arrays) and are refused.
"""

from __future__ import annotations

import ast
import json
import struct
import zipfile

from ..bundle import dtypes
from ..bundle.entry import Entry
from ..errors import CorruptCheckpointError, TruncatedError, UnsupportedError, WrongFileError
from .base import ForeignCheckpoint, RangeReader, check_shape, numel

FORMAT_NAME = "an .npz (without pickle)"
SIDE_MEMBER = "__ckptio__.npy"
SIDE_KEY = "__ckptio__"
MAGIC = b"\x93NUMPY"
MAX_NPY_HEADER = 10_000  # numpy.load's own limit without allow_pickle
MAX_MEMBERS = 10_000_000
ALIGN = 64
_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")  # signature .. extra length: 30 bytes


# -- .npy headers -------------------------------------------------------------------------------------


def encode_npy_header(descr: str, shape) -> bytes:
    """The .npy preamble and header for a C-order array; version 1.0 unless the header needs 2.0."""
    text = "{'descr': %r, 'fortran_order': False, 'shape': %r, }" % (descr, tuple(shape))
    for major, length in ((1, "<H"), (2, "<I")):
        fixed = len(MAGIC) + 2 + struct.calcsize(length)
        body = text + " " * (-(fixed + len(text) + 1) % ALIGN) + "\n"
        if major == 2 or len(body) <= 0xFFFF:
            return MAGIC + bytes([major, 0]) + struct.pack(length, len(body)) + body.encode("latin1")
    raise AssertionError("unreachable")


def parse_npy_header(data: bytes, *, path, key) -> tuple[dict, int]:
    """(header dict, header bytes) of a .npy whose first bytes are data, validated."""
    if len(data) < 10 or not data.startswith(MAGIC):
        raise CorruptCheckpointError("not a .npy member (bad magic)", path=path, key=key)
    major = data[6]
    if major == 1:
        (n,), fixed = struct.unpack("<H", data[8:10]), 10
    elif major in (2, 3) and len(data) >= 12:
        (n,), fixed = struct.unpack("<I", data[8:12]), 12
    else:
        raise UnsupportedError(f".npy version {major}.{data[7]}", path=path, key=key)
    if n > MAX_NPY_HEADER:
        raise CorruptCheckpointError(
            f".npy header of {n} bytes (numpy.load accepts {MAX_NPY_HEADER})", path=path, key=key
        )
    if fixed + n > len(data):
        raise TruncatedError(".npy header runs past the member's end", path=path, key=key)
    try:
        text = data[fixed : fixed + n].decode("utf-8" if major == 3 else "latin1")
        header = ast.literal_eval(text)
    except (UnicodeDecodeError, ValueError, SyntaxError, MemoryError, RecursionError) as exc:
        raise CorruptCheckpointError(f"bad .npy header: {exc}", path=path, key=key) from None
    if (
        not isinstance(header, dict)
        or set(header) != {"descr", "fortran_order", "shape"}
        or not isinstance(header["fortran_order"], bool)
        or not isinstance(header["shape"], tuple)
    ):
        raise CorruptCheckpointError(f"bad .npy header {text.strip()!r}", path=path, key=key)
    header["shape"] = check_shape(header["shape"], path=path, key=key)
    return header, fixed + n


def _numpy_dtype(descr, *, path, key):
    import numpy as np

    if not isinstance(descr, str):
        raise UnsupportedError("structured .npy dtypes are not tensors", path=path, key=key)
    try:
        dt = np.dtype(descr)
    except (TypeError, ValueError):
        raise CorruptCheckpointError(f"bad .npy dtype {descr!r}", path=path, key=key) from None
    if dt.hasobject or dt.kind not in "biufcV" or dt.fields is not None or dt.subdtype is not None:
        raise UnsupportedError(
            f".npy dtype {descr!r} is not a numeric tensor (ckptio reads numbers only)", path=path, key=key
        )
    return dt


def tf_dtype_of(dt, recorded: str | None, *, path, key) -> int:
    """The TF dtype enum of a member: the recorded name if any (its size must agree), else numpy's."""
    if recorded is not None:
        info = dtypes.BY_NAME.get(recorded)
        if info is None or not info.fixed_width or info.itemsize != dt.itemsize:
            raise CorruptCheckpointError(
                f"recorded dtype {recorded!r} does not fit the stored {dt.str}", path=path, key=key
            )
        return info.enum
    if dt.kind == "V":
        raise UnsupportedError(f"raw {dt.str} data with no recorded dtype", path=path, key=key)
    return dtypes.from_numpy(dt.newbyteorder("=")).enum


# -- reading -------------------------------------------------------------------------------------------


class NpzCheckpoint(ForeignCheckpoint):
    """An .npz; info is the __ckptio__ member's JSON (empty when another program wrote the file)."""

    checksums = True  # zip stores a CRC-32 of every member

    def __init__(self, reader, path, archive: zipfile.ZipFile, info: dict):
        super().__init__(reader, "npz", path, (path,))
        self.archive, self.info = archive, info

    def close(self) -> None:
        super().close()
        self.archive.close()

    def verify_format(self, report, progress=None) -> None:
        super().verify_format(report, progress)
        problems, report.bytes_checked = check_members(self, progress)
        for member, message in problems:
            report.add(message, path=self.path, key=member[:-4] if member.endswith(".npy") else member)

    def what_is_checked(self) -> str:
        return (
            f"{len(self.archive.infolist())} zip members: every member's CRC-32 and every .npy header "
            "(shape, dtype and size against the member)"
        )


def open_npz(path: str) -> NpzCheckpoint:
    from ..io import FileSource

    src = FileSource(path)
    try:
        try:
            archive = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
            raise WrongFileError(f"not an .npz (zip) file: {exc}", path=path) from None
        try:
            return _open(path, src, archive)
        except BaseException:
            archive.close()
            raise
    except BaseException:
        src.close()
        raise


def _open(path: str, src, archive: zipfile.ZipFile) -> NpzCheckpoint:
    members = archive.infolist()
    if len(members) > MAX_MEMBERS:
        raise CorruptCheckpointError(f"{len(members)} members", path=path)
    info = _side_table(archive, path)
    recorded = info.get("dtypes", {})
    entries, loaders = {}, {}
    for m in members:
        if m.filename == SIDE_MEMBER or m.is_dir():
            continue
        if not m.filename.endswith(".npy"):
            raise UnsupportedError(f"member {m.filename!r} is not a .npy array", path=path)
        key = m.filename[:-4]
        if key in entries:
            raise CorruptCheckpointError("two members of this name", path=path, key=key)
        entries[key], loader = _member(archive, src, m, key, recorded.get(key), path)
        if loader is not None:
            loaders[key] = loader
    reader = RangeReader(path, [src], entries, loaders)
    return NpzCheckpoint(reader, path, archive, info)


def _member(archive, src, m: zipfile.ZipInfo, key: str, recorded, path):
    """(Entry, loader or None) of one member; stored little-endian C-order members are byte ranges."""
    if m.flag_bits & 1:
        raise UnsupportedError("encrypted member", path=path, key=key)
    if m.compress_type == zipfile.ZIP_STORED:
        start = _data_offset(src, m, key, path)
        head = src.read(start, min(m.file_size, 12 + MAX_NPY_HEADER), key=key)
    else:
        with archive.open(m) as f:
            head = f.read(12 + MAX_NPY_HEADER)
        start = None
    header, hlen = parse_npy_header(head, path=path, key=key)
    dt = _numpy_dtype(header["descr"], path=path, key=key)
    shape = header["shape"]
    enum = tf_dtype_of(dt, recorded, path=path, key=key)
    nbytes = numel(shape) * dt.itemsize
    if m.file_size != hlen + nbytes:
        raise CorruptCheckpointError(
            f"member holds {m.file_size - hlen} data bytes, {header['descr']}{list(shape)} needs {nbytes}",
            path=path,
            key=key,
        )
    plain = dt.byteorder in "<|=" and not (header["fortran_order"] and len(shape) > 1)
    if start is not None and plain and (dt.byteorder != "=" or dt.itemsize == 1 or _little()):
        return Entry(enum, shape, 0, start + hlen, nbytes, 0), None
    return Entry(enum, shape, 0, 0, nbytes, 0), lambda: _load(archive, m, enum)


def _little() -> bool:
    import sys

    return sys.byteorder == "little"


def _data_offset(src, m: zipfile.ZipInfo, key, path) -> int:
    """Where a stored member's bytes start: after its local header (whose extra field may differ)."""
    raw = src.read(m.header_offset, _LOCAL_HEADER.size, key=key)
    sig, *_, name_len, extra_len = _LOCAL_HEADER.unpack(raw)
    if sig != b"PK\x03\x04":
        raise CorruptCheckpointError("bad zip local header", path=path, key=key, offset=m.header_offset)
    start = m.header_offset + _LOCAL_HEADER.size + name_len + extra_len
    if start + m.file_size > src.size:
        raise TruncatedError(f"member runs past the end of the {src.size}-byte file", path=path, key=key, offset=start)
    return start


def _load(archive, m, enum: int):
    """A member read whole through zipfile (deflated, big-endian or Fortran order); CRC-32 checked."""
    import numpy as np

    from ..bundle.decode import from_bytes

    with archive.open(m) as f:
        array = np.lib.format.read_array(f, allow_pickle=False)
    info = dtypes.require(enum)
    data = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
    return from_bytes(bytearray(data), info, array.shape)


def _side_table(archive, path) -> dict:
    import numpy as np

    try:
        m = archive.getinfo(SIDE_MEMBER)
    except KeyError:
        return {}
    if m.file_size > 16 << 20:
        raise CorruptCheckpointError(f"{SIDE_MEMBER} is {m.file_size} bytes", path=path)
    try:
        with archive.open(m) as f:
            value = np.lib.format.read_array(f, allow_pickle=False)
        info = json.loads(str(value[()]))
    except (ValueError, TypeError, OSError, zipfile.BadZipFile, RecursionError) as exc:
        raise CorruptCheckpointError(f"unreadable {SIDE_MEMBER}: {exc}", path=path) from None
    table = info.get("dtypes") if isinstance(info, dict) else None
    if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
        raise CorruptCheckpointError(f'{SIDE_MEMBER} has no "dtypes" table', path=path)
    return info


def check_members(ckpt: NpzCheckpoint, progress=None) -> tuple[list, int]:
    """Read every member through zipfile, which checks its CRC-32; ([(member, error)], bytes checked)."""
    problems, done = [], 0
    for m in ckpt.archive.infolist():
        try:
            with ckpt.archive.open(m) as f:
                while chunk := f.read(8 << 20):
                    done += len(chunk)
                    if progress:
                        progress(len(chunk))
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
            problems.append((m.filename, str(exc)))
    return problems, done


# -- writing ---------------------------------------------------------------------------------------------


def can_store(enum: int) -> bool:
    return True  # every fixed-width TF dtype: native ones by name, the rest as raw void plus the side table


def descr_of(enum: int) -> str:
    """The .npy descr for a TF dtype: numpy's own little-endian name, or raw void for ml_dtypes types."""
    info = dtypes.require(enum)
    dt = info.numpy()
    if dt.isbuiltin == 1:
        return dt.newbyteorder("<").str if dt.itemsize > 1 else dt.str
    return f"|V{info.itemsize}"


def recorded_name(enum: int) -> str | None:
    """The TF dtype name to record when the .npy dtype does not say it (bfloat16, qint8 ...)."""
    info = dtypes.require(enum)
    return None if info.numpy().isbuiltin == 1 and info.numpy().name == info.name else info.name


def output_paths(dst: str, tensors, **_) -> list[str]:
    return [dst]


def existing_outputs(dst: str, store=None) -> list[str]:
    from ..store.local import LocalStore
    from .export import output_exists

    return [dst] if output_exists(store or LocalStore(), dst) else []


def write(
    ckpt, tensors, dst: str, *, store=None, verify=True, progress=None, fsync=False, metadata=None, **_
) -> list[str]:
    """Write tensors as a stored (uncompressed) .npz at dst through store's output (local files when None).

    The zip is written front to back (each member's CRC-32 and sizes in a data descriptor after it),
    so a local file and an upload get the same bytes.
    """
    import numpy as np

    from ..bundle.copy import ShardFile
    from ..errors import PlanError
    from ..store.local import LocalStore
    from .export import committing, runs_of

    for t in tensors:
        if t.name == SIDE_KEY:
            raise PlanError(f"the name {SIDE_KEY!r} is reserved for ckptio's dtype table in .npz files", key=t.name)
    output = (store or LocalStore()).output()
    output.claim(dst)  # locally: the directory is made, and a second writer of dst is refused
    table = {t.name: recorded_name(t.dtype) for t in tensors if recorded_name(t.dtype)}
    with committing(output, dst, fsync=fsync):
        out = ShardFile(output.create(dst))
        with zipfile.ZipFile(_Stream(out), "w", zipfile.ZIP_STORED, allowZip64=True) as z:
            work = [(t, runs_of(ckpt, t)) for t in tensors]
            work.sort(key=lambda w: min((r.order() for r in w[1]), default=(2, 0, 0)))
            for t, runs in work:
                _write_member(ckpt, z, t, runs, verify, progress)
            side = {k: v for k, v in (metadata or {}).items() if k != "format"}
            side.update(format="ckptio-npz", version=1, dtypes=table)
            text = np.array(json.dumps(side, ensure_ascii=False, sort_keys=True))
            with z.open(_zipinfo(SIDE_MEMBER), "w") as m:
                m.write(encode_npy_header(text.dtype.str, ()))
                m.write(text.tobytes())
        out.sink.close()
    return [dst]


class _Stream:
    """A write-only stream over an output file for zipfile: no seek, so zipfile writes front to back."""

    def __init__(self, out) -> None:
        self._out = out

    def write(self, data: bytes, /) -> int:
        self._out.write(data)
        return len(data)

    def tell(self) -> int:
        return self._out.offset

    def flush(self) -> None:
        pass

    def close(self) -> None:  # the output file is closed by its writer, which then commits it
        pass


def _zipinfo(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))  # as numpy.savez: reproducible bytes
    info.compress_type = zipfile.ZIP_STORED
    return info


def _write_member(ckpt, z, t, runs, verify: bool, progress) -> None:
    try:
        member = _zipinfo(t.name + ".npy")
    except UnicodeError:
        from ..errors import PlanError

        raise PlanError("the name is not valid UTF-8, which a zip member name cannot hold", key=t.name) from None
    reader = ckpt.reader
    with z.open(member, "w", force_zip64=True) as m:
        m.write(encode_npy_header(descr_of(t.dtype), t.shape))
        done = 0
        for run in sorted(runs, key=lambda r: r.at):
            if run.at != done:
                raise CorruptCheckpointError(f"pieces leave a gap at byte {done}", path=ckpt.path, key=run.name)
            chunks = (
                run.chunks() if run.chunks is not None else reader.iter_raw(run.name, run.entry, 8 << 20, verify=verify)
            )
            for chunk in chunks:
                m.write(chunk)
                done += len(chunk)
            if done != run.at + run.size:
                raise CorruptCheckpointError(
                    f"gave {done - run.at} bytes, expected {run.size}", path=ckpt.path, key=run.name
                )
            if progress:
                progress(run.size)
        if done != t.nbytes:
            raise CorruptCheckpointError(f"wrote {done} bytes, expected {t.nbytes}", path=ckpt.path, key=t.name)
