"""CheckpointReader: the one interface every checkpoint reader offers, whatever its format stores.

Code above bundle/ asks a reader what it can do (copies_bytes, checksums, stores_ranges, index_file)
and never which format it is: a V2 bundle keeps each tensor as a byte range of a data shard with a
crc32c over it; a V1 table keeps values inline in protobufs, covered only by the table's block
CRCs; another format's reader (ckptio.formats) keeps plain byte ranges without checksums.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from ..errors import CorruptCheckpointError, UnsupportedError
from ..store.base import Source
from .slices import Slice

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (type checkers honour the name)
if TYPE_CHECKING:  # entry loads protobuf: on first use, keeping `ckptio --help` fast
    from .entry import Entry, Header

CHUNK = 8 << 20


class CheckpointReader:
    """Entries, tensors, stored bytes and files of one checkpoint (TF's CheckpointReader, over V1 and V2)."""

    format: str = ""  # "v2", "v1" or another format's name: for display, never for branching
    path: str = ""  # the file errors name: the .index, the first V1 table, the foreign file
    header: Header | None = None  # the V2 bundle header; None where the format has none (V1)

    # -- capabilities ---------------------------------------------------------------------------

    checksums = False
    """Whether every entry's crc32c covers its stored bytes, checked by iter_raw and read_raw (V2).

    Without it (V1) only the table's block CRCs guard the values, which sit inline in the table:
    verifying means decoding every tensor and checking every block of sstables().
    """

    @property
    def copies_bytes(self) -> bool:
        """Whether each entry's stored bytes, with its crc32c, go into a new little-endian bundle as they
        are (plans and verbatim copies); otherwise tensors are decoded and written again."""
        return False

    @property
    def index_file(self) -> str | None:
        """The file that names all the others (V2's .index): read first, written last; None if none."""
        return None

    def stores_ranges(self, name: str, entry: Entry) -> bool:
        """Whether the entry's bytes are one range [offset, offset + size) of data file entry.shard_id,
        readable by range (shard, iter_raw, read_raw); a V1 value is inside a protobuf: no."""
        return False

    # -- index ----------------------------------------------------------------------------------

    def entries(self) -> dict[str, Entry]:
        """Every named tensor's metadata (stored slice pieces hidden)."""
        raise NotImplementedError

    def entry(self, name: str) -> Entry:
        raise NotImplementedError

    def slice_entry(self, name: str, s: Slice) -> Entry:
        """The entry describing stored slice s of name: its dtype, the slice's shape and its size."""
        raise CorruptCheckpointError("this format stores no slices", path=self.path, key=name)

    def stored_size(self, name: str, entry: Entry) -> int:
        """Bytes the tensor occupies in the checkpoint, all its stored pieces together."""
        if entry.slices:
            return sum(self.slice_entry(name, s).size for s in entry.slices)
        return entry.size

    @property
    def num_shards(self) -> int:
        """Data files (V2 shards, V1 tables, the files of another format)."""
        return self.header.num_shards if self.header is not None else 1

    @property
    def big_endian(self) -> bool:
        """Whether stored bytes are big-endian (only a V2 header can say so)."""
        return self.header is not None and self.header.big_endian

    # -- values ---------------------------------------------------------------------------------

    def read_entry(self, name: str, entry: Entry, *, verify: bool = True):
        """Decode one unsliced entry (or stored piece) into a numpy array."""
        raise NotImplementedError

    def read_slice(self, name: str, s: Slice, shape: tuple[int, ...] | None = None):
        """Decode stored slice s of tensor name (shape: name's full shape, looked up when None)."""
        raise NotImplementedError

    def read_tensor(self, name: str, entry: Entry | None = None):
        """The whole tensor as a numpy array, stored slices assembled, checksums verified."""
        entry = self.entry(name) if entry is None else entry
        if not entry.slices:
            return self.read_entry(name, entry)
        return assemble(name, entry, lambda s: self.read_slice(name, s, entry.shape), path=self.path)

    # -- stored bytes (entries that stores_ranges) -----------------------------------------------

    def shard(self, shard: int) -> Source:
        """The data file holding entries with this shard_id."""
        raise UnsupportedError("this checkpoint keeps no tensor as a byte range", path=self.path)

    def check_entry(self, name: str, entry: Entry) -> None:
        """Raise if the entry's bytes cannot be read as it claims (no I/O beyond a stat)."""

    def iter_raw(self, name: str, entry: Entry, chunk: int = CHUNK, *, verify: bool = True, buffers=()) -> Iterator:
        """The entry's stored bytes in chunks (its checksum, where there is one, checked after the last)."""
        raise UnsupportedError("this checkpoint keeps no tensor as a byte range", path=self.path, key=name)

    def read_raw(self, name: str, entry: Entry, *, verify: bool = True) -> bytes:
        """The entry's stored bytes in one read."""
        return b"".join(bytes(c) for c in self.iter_raw(name, entry, verify=verify))

    # -- files ----------------------------------------------------------------------------------

    def files(self) -> list[tuple[str, Callable[[], Source]]]:
        """(path, open) of every file of the checkpoint, index_file first, then the data in order.

        open() returns the file's Source; it is deferred so that an archive is read in one pass.
        """
        raise NotImplementedError

    def sstables(self) -> list:
        """The sstable Tables of the checkpoint (V2: the .index; V1: every table file)."""
        return []

    @property
    def bytes_read(self) -> int:
        """Bytes read from the files so far."""
        return 0

    def close(self) -> None:
        raise NotImplementedError


def assemble(name: str, entry: Entry, read_piece, *, path=None):
    """Build a full tensor from its stored slices, which must tile it exactly; read_piece(s) -> array."""
    import numpy as np

    from .slices import tiling_problem

    problem = tiling_problem(entry.shape, entry.slices)  # before allocating anything
    if problem:
        raise CorruptCheckpointError(problem, path=path, key=name)
    info = entry.dtype_info
    if info is None:
        raise UnsupportedError("unknown dtype", path=path, key=name)
    out = np.empty(entry.shape, dtype=info.numpy())
    for s in entry.slices:
        index = tuple(slice(a, b) for a, b in s.bounds(entry.shape))
        out[index + (Ellipsis,)] = read_piece(s)  # Ellipsis: 0-d object arrays too
    return out
