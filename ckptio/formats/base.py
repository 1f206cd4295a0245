"""What the other formats share: a Checkpoint over tensors that are plain little-endian byte ranges.

A safetensors tensor, a stored .npz member's array and a contiguous HDF5 dataset are all a run
of bytes at a known offset in a file, with no checksum. RangeReader presents them through the
interface every reader has (bundle.tensors.CheckpointReader), so the listing, reading and
rewriting code works on them unchanged. An Entry here has crc32c 0 (none stored) and
shard_id = the index of its file. Tensors that are not a plain byte range (a compressed member,
a chunked dataset) have a loader instead, which returns the whole array.
"""

from __future__ import annotations

from ..bundle import dtypes
from ..bundle.entry import Entry, Header
from ..bundle.paths import Located
from ..bundle.tensors import CheckpointReader
from ..checkpoint import Checkpoint
from ..errors import CorruptCheckpointError, TensorNotFoundError, TruncatedError, UnsupportedError

CHUNK = 8 << 20


class RangeReader(CheckpointReader):
    """Tensors at byte ranges of some files (sources[shard_id]), or made by a loader; no checksums."""

    def __init__(self, path: str, sources: list, entries: dict[str, Entry], loaders: dict | None = None):
        self.path = path
        self.sources = sources
        self._entries = entries
        self._loaders = loaders or {}  # name -> () -> numpy array, for tensors not stored as one range
        self.header = Header(num_shards=max(1, len(sources)))  # little-endian, as all these formats are

    def entries(self) -> dict[str, Entry]:
        return self._entries

    def entry(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise TensorNotFoundError("no such tensor", path=self.path, key=name) from None

    def is_range(self, name: str) -> bool:
        """Whether the tensor's bytes are one little-endian range of sources[shard_id] (copyable as is)."""
        return name not in self._loaders

    def stores_ranges(self, name: str, entry: Entry) -> bool:
        return self.is_range(name)

    @property
    def num_shards(self) -> int:
        return len(self.sources) or 1

    @property
    def bytes_read(self) -> int:
        return sum(s.bytes_read for s in self.sources)

    def shard(self, shard: int):
        return self.sources[shard]

    def check_entry(self, name: str, entry: Entry) -> None:
        """Raise unless the entry's bytes lie inside its file (checked on open; cheap to repeat)."""
        if name in self._loaders:
            return
        info = entry.dtype_info
        if info is None or not info.fixed_width:
            raise UnsupportedError(f"cannot read {dtypes.name_of(entry.dtype)} tensors here", path=self.path, key=name)
        src = self.sources[entry.shard_id]
        if entry.offset + entry.size > src.size:
            raise TruncatedError(
                f"bytes [{entry.offset}, {entry.offset + entry.size}) lie past the end of the {src.size}-byte file",
                path=src.name,
                key=name,
                offset=entry.offset,
            )

    def iter_raw(self, name: str, entry: Entry, chunk: int = CHUNK, *, verify: bool = True, buffers=()):
        """The tensor's stored bytes in chunks (there is no checksum to verify)."""
        if name in self._loaders:
            yield self.read_raw(name, entry)
            return
        self.check_entry(name, entry)
        src = self.sources[entry.shard_id]
        pos, end = entry.offset, entry.offset + entry.size
        while pos < end:
            data = src.read(pos, min(chunk, end - pos), key=name)
            pos += len(data)
            yield data

    def read_raw(self, name: str, entry: Entry, *, verify: bool = True) -> bytes:
        if name in self._loaders:
            from ..bundle.decode import to_bytes

            return to_bytes(self._load(name, entry), _info(entry))
        self.check_entry(name, entry)
        return self.sources[entry.shard_id].read(entry.offset, entry.size, key=name)

    def read_entry(self, name: str, entry: Entry, *, verify: bool = True):
        """The tensor as a numpy array (ml_dtypes for bfloat16 and float8)."""
        if name in self._loaders:
            return self._load(name, entry)
        from ..bundle.decode import from_bytes

        self.check_entry(name, entry)
        src = self.sources[entry.shard_id]
        buf = bytearray(entry.size)  # writable, as BundleReader's arrays are
        if hasattr(src, "readinto"):
            got = src.readinto(entry.offset, memoryview(buf))
            if got != entry.size:
                raise TruncatedError(f"read {got} of {entry.size} bytes", path=src.name, key=name, offset=entry.offset)
        else:
            buf[:] = src.read(entry.offset, entry.size, key=name)
        return from_bytes(buf, _info(entry), entry.shape)

    def _load(self, name: str, entry: Entry):
        array = self._loaders[name]()
        if tuple(array.shape) != tuple(entry.shape):
            raise CorruptCheckpointError(
                f"holds shape {list(array.shape)}, its header says {list(entry.shape)}", path=self.path, key=name
            )
        return array

    def files(self):
        # archive.checkpoint_files lists a checkpoint's files through its reader: packing these
        # formats into a .tar.zst (which ckptio reads as a TF checkpoint) is refused.
        raise UnsupportedError(
            "only TensorFlow checkpoints are packed into .tar.zst archives; compress this file with zstd itself",
            path=self.path,
        )

    def close(self) -> None:
        for src in self.sources:
            src.close()


class ForeignCheckpoint(Checkpoint):
    """A Checkpoint whose tensors come from a RangeReader; format names the file format."""

    checksums = False  # whether the format stores checksums of the tensor bytes

    def __init__(self, reader: RangeReader, fmt: str, path: str, files=()):
        # Not Checkpoint.__init__: that resolves TensorFlow paths and opens a bundle.
        self._reader = reader
        self._foreign = reader
        self.format = fmt
        self.located = Located(fmt, path, tuple(files) or (path,))
        self.prefix = path
        self.path = reader.path

    def __repr__(self) -> str:
        return f"<ckptio.{type(self).__name__} {self.format} {self.prefix!r}>"

    def verify_format(self, report, progress=None) -> None:
        """verify() for this format: fill report (problems, counts, and what was checked)."""
        report.tensors = len(self)
        report.checked = self.what_is_checked()

    def what_is_checked(self) -> str:
        return "the file's structure (it stores no checksums)"


def numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def check_shape(shape, *, path, key) -> tuple[int, ...]:
    """A shape list from a header: non-negative ints, bounded rank and element count."""
    from ..bundle.entry import MAX_ELEMENTS, MAX_RANK

    if not isinstance(shape, (list, tuple)) or len(shape) > MAX_RANK:
        raise CorruptCheckpointError(f"bad shape {shape!r}", path=path, key=key)
    n = 1
    for d in shape:
        if type(d) is not int or d < 0:  # bool is an int subclass: refuse it too
            raise CorruptCheckpointError(f"bad shape {shape!r}", path=path, key=key)
        n *= d if d > 1 else 1
    if n > MAX_ELEMENTS:
        raise CorruptCheckpointError(f"shape {shape!r} has too many elements", path=path, key=key)
    return tuple(shape)


def _info(entry: Entry) -> dtypes.DType:
    """The entry's dtype, which a foreign format always knows (it made the entry from one it reads)."""
    info = entry.dtype_info
    if info is None:
        raise UnsupportedError(f"unknown dtype enum {entry.dtype}")
    return info
