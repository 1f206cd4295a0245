"""Write a V2 bundle into a store: data shards first, then the index, committed in that order at the end.

Each data shard is tensor bytes back to back (alignment 1, as TensorFlow writes them);
the index is a table of "" -> BundleHeaderProto and key -> BundleEntryProto in bytewise key order.
"""

from __future__ import annotations

import os
import threading

from ..errors import CkptioError, OutputExistsError, PlanError, Remedy
from ..sstable import TableBuilder
from ..sstable.coding import crc32c, mask
from ..store.atomic import interrupts_deferred
from ..store.base import Output, Source, Store
from ..store.local import LocalStore
from . import dtypes, naming, strings
from .copy import Copier, ShardFile
from .entry import Entry, Header
from .paths import refuse_saved_model_output


class BundleWriter:
    """Builds one checkpoint at prefix in store. Use as a context manager; finish() commits it.

    BundleWriter(store, prefix, num_shards=1, ...); the older BundleWriter(prefix, num_shards, ...)
    (and store None) writes local files. Every file goes through the store's Output: data shards
    first, the index last, committed in that order; abort() leaves nothing behind.
    """

    def __init__(self, store, prefix=None, num_shards: int = 1, *, force: bool = False, inputs=()):
        if store is None or isinstance(store, Store):
            if prefix is None:
                raise TypeError("BundleWriter(store, prefix, ...) needs a prefix")
            store = LocalStore() if store is None else store
        else:  # the older BundleWriter(prefix, num_shards=1, ...)
            if prefix is not None:
                num_shards = prefix
            store, prefix = LocalStore(), store
        if num_shards < 1:
            raise PlanError(f"num_shards must be >= 1, not {num_shards}")
        self.store: Store = store
        self.prefix = os.fspath(prefix)
        self.num_shards = num_shards
        self.force = force
        refuse_saved_model_output(self.prefix, store)  # force or not: new tensors there would not load
        check_output(self.prefix, force=force, inputs=inputs, store=store)
        self.output: Output = store.output()
        # Own the output before looking again: of two writers of one prefix exactly one gets here,
        # and a checkpoint committed by the other meanwhile is seen by the second check.
        self.output.claim(self.prefix)
        try:
            check_output(self.prefix, force=force, inputs=inputs, store=store)
        except BaseException:
            self.output.release()
            raise
        self.state_file: str | None = None  # after finish(): "written", "left" (someone else's) or "failed: <reason>"
        self.shards: list[ShardFile] = []
        self.entries: dict[bytes, Entry] = {}
        self._lock = threading.Lock()
        self._done = False
        self.copier = Copier()  # copy() runs on one thread per output shard; one checker for all
        try:
            if force:  # an index being replaced goes first: never an old index over new data
                self.output.replace([naming.index_path(self.prefix)])
            for i in range(num_shards):
                self.shards.append(ShardFile(self.output.create(naming.data_path(self.prefix, i, num_shards))))
        except BaseException:
            self.abort()
            raise

    # -- data ----------------------------------------------------------------------------------

    def reserve(self, shard: int, nbytes: int) -> None:
        """Preallocate a shard's expected size: faster copies, and a full disk fails before copying."""
        out = self.shards[shard]
        if out.sink.reserve(nbytes):
            out.reserved = nbytes

    def will_copy(self, shard: int, src: Source, ranges: list[tuple[int, int]]) -> None:
        """A hint: these (offset, length) ranges of src are copied into shard next, in this order.

        A local file is read ahead by a thread of the copier (bounded, see readahead.py); other
        sources get the hint (Source.will_need: a remote one fetches ahead).
        """
        if not self.copier.read_ahead(self.shards[shard], src, ranges):
            src.will_need(ranges)

    def add_entry(self, key: str, entry: Entry) -> None:
        """Record an index entry (data already written, or a sliced tensor's metadata)."""
        raw = naming.encode_key(key) if isinstance(key, str) else key
        if raw == b"":
            raise PlanError("the empty key is reserved for the header")
        with self._lock:
            if raw in self.entries:
                raise PlanError("two tensors would be written under one key", key=key)
            self.entries[raw] = entry

    def add_bytes(self, key, dtype: int, shape, chunks, shard: int = 0, *, crc: int | None = None) -> Entry:
        """Append chunks as one tensor; crc (masked) is computed unless given."""
        out = self.shards[shard]
        with out.lock:
            start, running = out.offset, 0
            for chunk in chunks:
                if crc is None:
                    running = crc32c(chunk, running)
                out.write(chunk)
            entry = Entry(dtype, tuple(shape), shard, start, out.offset - start, mask(running) if crc is None else crc)
        self.add_entry(key, entry)
        return entry

    def add_array(self, key, array, shard: int = 0, *, dtype: int | None = None) -> Entry:
        """Write a numpy array (numeric, or object/bytes array for strings) as dtype (default: numpy's)."""
        import numpy as np

        array = np.asarray(array)
        # numpy cannot tell qint8 from int8 (quint8 from uint8 ...): a copied tensor passes its own dtype.
        info = dtypes.from_numpy(array.dtype) if dtype is None else dtypes.require(dtype)
        if info.name == "string":
            data, crc = strings.encode(list(array.reshape(-1)))
            return self.add_bytes(key, info.enum, array.shape, [data], shard, crc=crc)
        from .decode import to_bytes

        return self.add_bytes(key, info.enum, array.shape, [to_bytes(array, info)], shard)

    def copy(
        self, key, entry: Entry, src: Source, shard: int = 0, *, verify: bool = True, name: str | None = None
    ) -> Entry:
        """Copy an entry's bytes unchanged from src, carrying its crc32c over (checked on the way).

        REQUIRES: a fixed-width dtype when verify is true; a string or variant crc32c is not over the
        stored bytes (FORMAT §4.3, §4.4), so check those with BundleReader.read_raw and use add_bytes.
        """
        out = self.shards[shard]
        with out.lock:
            start = out.offset
            self.copier.copy(src, entry.offset, entry.size, out, crc=entry.crc32c if verify else None, key=name or key)
            new = Entry(entry.dtype, entry.shape, shard, start, entry.size, entry.crc32c)
        self.add_entry(key, new)
        return new

    # -- commit --------------------------------------------------------------------------------

    def finish(self, *, state_file: bool = True, fsync: bool = False, make_latest: bool = False) -> str:
        """Validate and write the index, rename everything into place; return the prefix.

        state_file: list the output in its directory's `checkpoint` file when that file is new or
        ckptio's own (bundle/state.py); make_latest: also in someone else's, as its latest.
        """
        try:
            self.copier.wait()  # a mismatch found meanwhile fails the write before anything is renamed
            self._validate()
            self._close_shards()
            self._write_index()
            stale = [p for p in _existing_shards(self.prefix, self.store) if p not in {s.path for s in self.shards}]
            index = naming.index_path(self.prefix)
            # From the first rename on, finishing is the only right outcome: Ctrl-C waits until the
            # output and its state file are in place (and the run then succeeds).
            with interrupts_deferred():
                self.output.commit(fsync=fsync, no_replace=() if self.force else (index,))
                self._done = True
                for p in stale:  # data files of the checkpoint we replaced (--force)
                    try:
                        self.store.remove(p)
                    except (CkptioError, OSError):
                        pass
                if state_file:
                    self._record_state(make_latest)
                self.output.release()
        except BaseException:
            self.abort()
            raise
        return self.prefix

    def _close_shards(self) -> None:
        """Trim each data shard to what was written and close it."""
        for s in self.shards:
            if s.reserved > s.offset:  # give back what the plan over-estimated
                s.sink.truncate(s.offset)
            s.sink.close()

    def _write_index(self) -> None:
        """Write the index (header, then every entry in key order), created last so it commits last."""
        index = ShardFile(self.output.create(naming.index_path(self.prefix)))
        builder = TableBuilder(index.write)  # on failure (disk full) abort() closes and removes it
        builder.add(b"", Header(num_shards=self.num_shards).encode())
        for key in sorted(self.entries):
            builder.add(key, self.entries[key].encode())
        builder.finish()
        index.sink.close()

    def _record_state(self, make_latest: bool) -> None:
        """Update the state file; the checkpoint is complete already, so a failure here only warns."""
        import warnings

        from ..errors import StateFileWarning
        from .state import record_output, state_file_of

        try:
            self.state_file = record_output(self.store, self.prefix, make_latest=make_latest)
        except (CkptioError, OSError) as exc:
            self.state_file = f"failed: {exc}"
            warnings.warn(
                StateFileWarning(
                    f"{state_file_of(self.store, self.prefix)} was not updated ({exc}); "
                    f"the checkpoint {self.prefix} is complete"
                ),
                stacklevel=2,
            )

    def _validate(self) -> None:
        """Refuse what would make TensorFlow abort or mis-index (FORMAT §11.7)."""
        from .slices import encode_key

        for key, entry in self.entries.items():
            name = naming.decode_key(key)
            problem = entry.problem()
            if problem is None and not entry.slices:
                problem = entry.data_problem()
            if problem:
                raise PlanError(f"refusing to write an entry TensorFlow cannot load: {problem}", key=name)
            for s in entry.slices:
                if encode_key(key, s) not in self.entries:
                    raise PlanError(f"slice {s.spec()} has no data entry", key=name)

    def abort(self) -> None:
        """Remove what was not committed and give up the output (after a commit: only the latter)."""
        self.copier.cancel()
        if self._done:
            self.output.release()
        else:
            self.output.abort()  # closes every sink (the index's too) and removes its files

    def __enter__(self) -> BundleWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or not self._done:
            self.abort()


def _existing_shards(prefix: str, store: Store | None = None) -> list[str]:
    """The data files of a checkpoint at prefix, whatever its number of shards."""
    store = store or LocalStore()
    directory, base = store.dirname(prefix), store.basename(prefix)
    out = []
    for n in store.list(directory):
        split = naming.split_data_path(n)
        if split and split[0] == base:
            out.append(store.join(directory, n))
    return out


def check_output(prefix: str, *, force: bool, inputs=(), store: Store | None = None) -> None:
    """Refuse to overwrite a checkpoint (unless force) and always refuse to overwrite an input."""
    store = store or LocalStore()
    base = store.basename(prefix)
    if not base or base in (".", ".."):
        raise PlanError("the output must be a prefix such as dir/model.ckpt, not a directory", path=prefix)
    index = naming.index_path(prefix)
    for located in inputs:
        src = os.fspath(getattr(located, "prefix", located))
        # same_path: a symlinked directory or a '..' must not hide that the output is the input.
        if any(store.same_path(a, b) for a in (src, naming.index_path(src)) for b in (prefix, index)):
            raise OutputExistsError("output is the input checkpoint; write to another prefix", path=prefix)
    if store.exists(index) and not force:
        raise OutputExistsError("a checkpoint already exists here", path=index, remedy=Remedy("force", "replace it"))


def output_store(text, *, name: str = "model.ckpt", force: bool = False) -> tuple[Store | None, str]:
    """(store, prefix) a writer of OUT uses: None and the local prefix for a local path (file:// too),
    store.for_output's for a URL (one ending in '/': name there) or a .tar.zst (name inside it).

    An existing archive is refused here unless force: committing one replaces it whole.
    """
    from ..store import for_output, is_archive, is_url, local_path
    from ..store.archive_output import PackingStore

    text = local_path(os.fspath(text))
    if not is_url(text) and not is_archive(text):
        return None, text
    store, prefix = for_output(text, name=name)
    if isinstance(store, PackingStore) and not force and store.parent.exists(store.archive):
        raise OutputExistsError("the archive already exists", path=text, remedy=Remedy("force", "replace it"))
    return store, prefix


def write_state_file(prefix: str, *, make_latest: bool = True) -> str:
    """List prefix in its directory's state file (see bundle/state.py); "written" or "left"."""
    from .state import record_outputs

    return record_outputs(os.path.dirname(prefix) or ".", [(prefix, None)], make_latest=make_latest)
