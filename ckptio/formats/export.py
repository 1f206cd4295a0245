"""strip / rename / rewrite into another format: plan with the usual steps, then copy bytes.

The plan is rewrite.make_plan's (same steps, same validation). Each output tensor becomes one
or more runs of bytes at offsets within it: a run copied unchanged from the source (a whole
tensor, or one stored slice of a variable partitioned along its first axis, which is a
contiguous block of the whole), or a run of converted bytes (a cast, a big-endian source, or a
tensor that has to be read whole: V1, partitioned along another axis, not one byte range).
Copied runs go through bundle/copy.py's Copier, as the bundle writer's do (copy_file_range,
CRC32C checked on the way when the source has checksums); nothing is decoded unless something
changes.
The files go through the store of the destination (store.output(): a local path or a URL), data
files first and an index last; a local file is filled at its places, an upload front to back.
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

from ..bundle import dtypes
from ..bundle.copy import Copier, ShardFile
from ..errors import CorruptCheckpointError, OutputExistsError, PlanError, WriteError
from ..store.base import Output, Store
from ..store.local import LocalStore
from .base import ForeignCheckpoint, numel

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (type checkers honour the name)
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from ..bundle.entry import Entry
    from ..store.atomic import AtomicFiles
    from ..store.base import Source

CHUNK = 8 << 20  # a multiple of every itemsize, so converted chunks hold whole elements


@dataclass(frozen=True, slots=True)
class OutTensor:
    """One output tensor: its name, dtype enum and shape, and where its bytes come from."""

    name: str
    src: str
    dtype: int
    shape: tuple[int, ...]
    nbytes: int
    data_name: str
    entry: Entry


@dataclass(frozen=True, slots=True)
class Run:
    """One contiguous run of an output tensor's bytes."""

    at: int  # offset within the output tensor
    size: int  # bytes it yields
    source: Source | None  # with entry: what to copy, when chunks is None
    entry: Entry | None
    name: str
    chunks: Callable[[], Iterator] | None  # or a callable giving the converted bytes

    def order(self):
        """Sort key: source position, so a forward-only source is read forward."""
        e = self.entry
        return (0, e.shard_id, e.offset) if e is not None else (1, 0, 0)


def format_error(name: str, what: str, fmt: str) -> PlanError:
    """The one error for a tensor a format cannot hold, naming it and the way out."""
    return PlanError(f"{what}, which {fmt} cannot hold; leave it out with --exclude '^{re.escape(name)}$'", key=name)


def plan_tensors(ckpt, plan, dtype_ok, fmt: str) -> list[OutTensor]:
    """The output tensors of a plan, each checked against what the format can store (before any write)."""
    entries = ckpt.entries()
    out = []
    for item in plan.items:
        data_name = item.promoted_from or item.src
        info = dtypes.lookup(item.dtype)
        if info is None or not info.fixed_width:
            kind = "a string" if item.dtype == dtypes.STRING else f"a {dtypes.name_of(item.dtype)}"
            raise format_error(item.dst, f"{item.dst!r} is {kind} tensor", fmt)
        if not dtype_ok(item.dtype):
            raise format_error(item.dst, f"{item.dst!r} is a {info.name} tensor", fmt)
        shape = entries[item.src].shape
        out.append(
            OutTensor(
                item.dst, item.src, item.dtype, shape, numel(shape) * info.itemsize, data_name, entries[data_name]
            )
        )
    return out


def runs_of(ckpt, t: OutTensor) -> list[Run]:
    """The runs that make up tensor t, from whatever the source stores."""
    reader = ckpt.reader
    e = t.entry
    ranges = reader.stores_ranges(t.data_name, e)  # not a V1 value (a protobuf), nor a loader's array
    big = reader.big_endian
    if not e.slices and ranges:
        return [_run(reader, t.data_name, e, 0, t.dtype, big)]
    if e.slices and ranges and _row_slices(e):
        row = t.nbytes // e.shape[0] if e.shape[0] else 0
        runs = []
        for s in sorted(e.slices, key=lambda s: s.bounds(e.shape)[0][0]):
            piece = reader.slice_entry(t.data_name, s)
            if piece.dtype != e.dtype or piece.shape != s.shape(e.shape):
                raise CorruptCheckpointError(
                    f"slice {s.spec()} is stored as {dtypes.name_of(piece.dtype)}"
                    f"{list(piece.shape)}, expected {dtypes.name_of(e.dtype)}"
                    f"{list(s.shape(e.shape))}",
                    path=ckpt.path,
                    key=t.data_name,
                )
            runs.append(_run(reader, t.data_name, piece, s.bounds(e.shape)[0][0] * row, t.dtype, big))
        return runs
    return [Run(0, t.nbytes, None, None, t.data_name, partial(_whole, ckpt, t))]


def _run(reader, name: str, entry, at: int, out_dtype: int, big: bool) -> Run:
    """A stored entry as a run: copied when unchanged, else converted chunk by chunk."""
    reader.check_entry(name, entry)
    size = entry.num_elements * dtypes.require(out_dtype).itemsize
    if entry.dtype == out_dtype and not big:
        return Run(at, size, reader.shard(entry.shard_id), entry, name, None)
    return Run(at, size, None, entry, name, partial(_converted, reader, name, entry, out_dtype, big))


def _row_slices(entry) -> bool:
    """Whether every slice spans all but the first axis (so each is one contiguous block of the whole)."""
    shape = entry.shape
    return bool(shape) and all(
        all(b - a == shape[i] for i, (a, b) in enumerate(s.bounds(shape)) if i) for s in entry.slices
    )


def _converted(reader, name, entry, out_dtype, big):
    from ..bundle.decode import from_bytes, to_bytes

    info, target = dtypes.require(entry.dtype), dtypes.require(out_dtype)
    for chunk in reader.iter_raw(name, entry, CHUNK):
        values = from_bytes(chunk, info, (len(chunk) // info.itemsize,), big_endian=big)
        yield to_bytes(values.astype(target.numpy(), copy=False), target)


def _whole(ckpt, t: OutTensor):
    from ..bundle.decode import to_bytes

    target = dtypes.require(t.dtype)
    array = ckpt[t.data_name].read()
    if array.dtype != target.numpy():
        array = array.astype(target.numpy())
    yield to_bytes(array, target)


def write_runs(ckpt, out: ShardFile, placed, *, verify: bool, progress=None) -> None:
    """Write every (position, run) into out; CRC32C checked where the source has it.

    A seekable sink (a local file) is filled in source order, each run at its place, so the source
    is read forward; another (an upload) is a stream, written in output order, and runs must tile it.
    """
    copier = Copier()
    checked = verify and ckpt.reader.checksums
    seekable = out.sink.seekable
    ordered = sorted(placed, key=(lambda p: p[1].order()) if seekable else (lambda p: p[0]))
    try:
        _announce(copier, out, ordered)
        for position, run in ordered:
            if not seekable and out.offset != position:
                raise CorruptCheckpointError(
                    f"pieces leave a gap or overlap at byte {out.offset}", path=ckpt.path, key=run.name
                )
            out.seek(position)  # usually there already: the layout mostly follows the source order
            if run.chunks is None:
                e = run.entry
                copier.copy(run.source, e.offset, e.size, out, crc=e.crc32c if checked else None, key=run.name)
            else:
                for chunk in run.chunks():
                    out.write(chunk)
                if out.offset - position != run.size:
                    raise CorruptCheckpointError(
                        f"gave {out.offset - position} bytes, expected {run.size}", path=ckpt.path, key=run.name
                    )
            if progress:
                progress(run.size)
        copier.wait()
    except BaseException:
        copier.cancel()
        raise


def _announce(copier: Copier, out: ShardFile, ordered) -> None:
    """Tell the copier every range it will copy from each source, in copy order, as the bundle writer does.

    A local source is then read ahead by one thread for the whole file (bounded, readahead.py) and
    each copy skips its own per-range advice and read-ahead thread; other sources get the hint
    (Source.will_need: a remote one fetches ahead).
    """
    wanted: dict[int, tuple] = {}  # id(source) -> (source, ranges in copy order)
    for _, run in ordered:
        if run.chunks is None and run.entry.size:
            wanted.setdefault(id(run.source), (run.source, []))[1].append((run.entry.offset, run.entry.size))
    for src, ranges in wanted.values():
        if not copier.read_ahead(out, src, ranges):
            src.will_need(ranges)


def check_outputs(paths, existing, *, force: bool, inputs, store: Store | None = None) -> None:
    """Refuse to write over an input (ever) or an existing output (unless force).

    existing: files of an earlier output at this name (also those this one would not rewrite,
    such as the shards of a set with a different count), which --force replaces. store: where
    the outputs go (local files when None).
    """
    store = store or LocalStore()
    for p in list(paths) + list(existing):
        if any(store.same_path(p, i) for i in inputs):
            raise OutputExistsError("output is the input; write to another file", path=p)
    for p in paths:
        if store.is_dir(p):
            raise PlanError("the output is a directory; name a file", path=p)
    if existing and not force:
        raise OutputExistsError("the output already exists (use --force to replace it)", path=existing[0])


def output_exists(store: Store, path: str) -> bool:
    """Whether anything is at path (locally a dangling symlink too: a rename would replace it)."""
    return store.exists(path) or (isinstance(store, LocalStore) and os.path.lexists(path))


def input_files(ckpt) -> list[str]:
    """Every file the source reads (for the never-over-the-input check)."""
    located = ckpt.located
    files = [located.prefix, *located.files]
    if not isinstance(ckpt, ForeignCheckpoint):  # its files are located.files; its reader lists none
        files += [path for path, _ in ckpt.reader.files()]
    return [f for f in files if "://" not in f]


def source_metadata(ckpt) -> dict[str, str]:
    """Provenance recorded in the output: the source checkpoint and this ckptio's version."""
    from .. import __version__

    return {"format": "tf", "producer": "ckptio", "ckptio_version": __version__, "source": str(ckpt.prefix)}


def export_tensors(
    src,
    dst: str,
    steps=(),
    *,
    writer,
    num_shards: int | None = 1,
    max_shard_size: int | None = None,
    force: bool = False,
    dry_run: bool = False,
    progress=None,
    verify: bool = True,
    fsync: bool = False,
    **_ignored,
):
    """Write the planned tensors of src as a .safetensors (set) or .npz at dst; returns a rewrite Report.

    src: an open Checkpoint (ckptio.rewrite opens any path form) or a local prefix; writer: the
    format's module (formats/safetensors.py or npz.py), chosen by formats.write_format.
    """
    import time

    from ..checkpoint import Checkpoint
    from ..rewrite_exec import Report
    from ..rewrite_plan import make_plan
    from ..store import file_store

    started = time.perf_counter()
    module = writer
    ckpt = src if isinstance(src, Checkpoint) else Checkpoint(src)
    try:
        plan = make_plan(ckpt, _steps_for(ckpt, steps))
        tensors = plan_tensors(ckpt, plan, module.can_store, module.FORMAT_NAME)
        entries = ckpt.entries()
        kept = {i.src for i in plan.items}
        # The TF2 object graph is not a tensor of the model: it is not exported, and listed as dropped.
        listed = kept | set(plan.dropped)  # built once: a set per entry made exports of many entries quadratic
        dropped = plan.dropped + [k for k in entries if k not in listed]
        report = Report(
            ckpt.prefix,
            dst,
            dry_run=dry_run,
            kept=[(i.src, i.dst) for i in plan.items],
            dropped=dropped,
            cast=[i.dst for i in plan.items if i.dtype != entries[i.src].dtype],
            bytes_before=plan.bytes_before,
            bytes_after=sum(t.nbytes for t in tensors),
        )
        store, path = file_store(dst)  # a local path, or a URL: written through that store's output
        outputs = module.output_paths(path, tensors, num_shards=num_shards, max_shard_size=max_shard_size)
        check_outputs(outputs, module.existing_outputs(path, store), force=force, inputs=input_files(ckpt), store=store)
        if not dry_run:
            module.write(
                ckpt,
                tensors,
                path,
                store=store,
                num_shards=num_shards,
                max_shard_size=max_shard_size,
                verify=verify,
                progress=progress,
                fsync=fsync,
                metadata=source_metadata(ckpt),
            )
        report.seconds = time.perf_counter() - started
        return report
    finally:
        if ckpt is not src:
            ckpt.close()


def _steps_for(ckpt, steps):
    """Keras sources name their optimizer's variables optimizer/vars/N: StripOptimizer drops those."""
    from ..transform import Select, StripOptimizer

    if getattr(ckpt, "format", None) in ("keras", "keras_h5"):
        return [Select(exclude=(r"^optimizer/",)) if isinstance(s, StripOptimizer) else s for s in steps]
    return list(steps)


def groups_by_size(tensors, num_shards: int | None, max_shard_size: int | None) -> list[list]:
    """Split tensors (in name order) into shards: greedy up to max_shard_size, or num_shards of similar size."""
    from ..rewrite_plan import split_runs

    groups = split_runs(sorted(tensors, key=lambda t: t.name), lambda t: t.nbytes, num_shards, max_shard_size)
    return [g for g in groups if g] or [[]]


@contextmanager
def committing(files: AtomicFiles | Output, dst: str, *, fsync: bool):
    """Commit files (AtomicFiles, or a store's Output, then released) when the block ends; on any error
    abort them, an OSError as a WriteError naming dst."""
    try:
        yield
        files.commit(fsync=fsync)
    except OSError as exc:
        files.abort()
        raise write_error(exc, dst) from None
    except BaseException:
        files.abort()
        raise
    if isinstance(files, Output):
        files.release()


def write_error(exc: OSError, path: str) -> WriteError:
    return WriteError(f"cannot write: {exc.strerror or exc}", path=path)
