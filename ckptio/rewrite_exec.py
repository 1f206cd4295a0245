"""Write a planned rewrite to a local prefix: stream bytes in (shard, offset) order into a new bundle.

Unchanged tensors are copied chunk by chunk with their crc32c carried over (and checked on the
way); only cast, V1 or big-endian tensors are decoded. Memory is bounded by the chunk size.
rewrite_local() is the whole rewrite of an open Checkpoint; rewrite.rewrite() opens any path form.
"""

from __future__ import annotations

import os
import threading
import time

from .bundle import dtypes, naming
from .checkpoint import Checkpoint
from .rewrite_plan import Piece, Plan, _assign_shards, make_plan
from .transform import Cast, Item

CHUNK_BYTES = 8 << 20


class RewriteReport:
    """What a rewrite did (or, for a dry run, would do)."""

    # kept, dropped and cast list tensors; the object graph of a TF2 checkpoint is not among them:
    # object_graph says what became of it (None without one, "copied" or "rewritten").
    # not_cast: with a Cast step, the kept tensors it left as they were: (name, dtype, reason), reason
    # one of transform's NOT_FLOATING, LOW, ALREADY, NOT_SELECTED codes.
    __slots__ = (
        "src",
        "dst",
        "kept",
        "dropped",
        "cast",
        "not_cast",
        "bytes_before",
        "bytes_after",
        "seconds",
        "dry_run",
        "object_graph",
        "state_file",
    )

    def __init__(
        self,
        src: str,
        dst: str | None,
        kept: list[tuple[str, str]] | None = None,
        dropped: list[str] | None = None,
        cast: list[str] | None = None,
        bytes_before: int = 0,
        bytes_after: int = 0,
        seconds: float = 0.0,
        dry_run: bool = False,
        not_cast: list[tuple[str, str, str]] | None = None,
        object_graph: str | None = None,
    ):
        self.src, self.dst = src, dst
        self.object_graph = object_graph
        self.kept = [] if kept is None else kept
        self.dropped = [] if dropped is None else dropped
        self.cast = [] if cast is None else cast
        self.not_cast = [] if not_cast is None else not_cast
        self.bytes_before, self.bytes_after, self.seconds, self.dry_run = bytes_before, bytes_after, seconds, dry_run
        # What happened to the output directory's `checkpoint` file: None (not asked), "written",
        # "left" (it lists other checkpoints: not ours to change) or "failed: <reason>".
        self.state_file: str | None = None

    def __repr__(self):
        return (
            f"RewriteReport(src={self.src!r}, dst={self.dst!r}, kept={len(self.kept)}, dropped={len(self.dropped)}, "
            f"cast={len(self.cast)}, bytes_before={self.bytes_before}, bytes_after={self.bytes_after}, "
            f"object_graph={self.object_graph!r}, dry_run={self.dry_run})"
        )

    @property
    def renamed(self) -> list[tuple[str, str]]:
        return [(s, d) for s, d in self.kept if s != d]

    def to_json(self) -> dict:
        return {
            "src": self.src,
            "dst": self.dst,
            "dry_run": self.dry_run,
            "kept": [{"src": s, "dst": d} for s, d in self.kept],
            "dropped": self.dropped,
            "renamed": [{"src": s, "dst": d} for s, d in self.renamed],
            "cast": self.cast,
            "object_graph": self.object_graph,
            "not_cast": [{"name": n, "dtype": d, "reason": r} for n, d, r in self.not_cast],
            "bytes_before": self.bytes_before,
            "bytes_after": self.bytes_after,
            "seconds": round(self.seconds, 3),
            "state_file": self.state_file,
        }


Report = RewriteReport  # its name before issue 13 (verify had a Report too)


def plan_report(plan: Plan, dst, steps=(), *, dry_run: bool = False) -> RewriteReport:
    """The RewriteReport of a planned rewrite, before anything is written."""
    entries = plan.source.entries()
    return RewriteReport(
        plan.source.prefix,
        None if dst is None else os.fspath(dst),
        dry_run=dry_run,
        kept=[(i.src, i.dst) for i in plan.items],
        dropped=plan.dropped,
        cast=[i.dst for i in plan.items if i.dtype != entries[i.src].dtype],
        not_cast=_not_cast(plan.items, entries, steps, plan.object_names),
        bytes_before=plan.bytes_before,
        bytes_after=plan.bytes_after,
        object_graph=None if plan.graph is None else "rewritten" if plan.graph_rewritten else "copied",
    )


def rewrite_local(
    ckpt: Checkpoint,
    dst,
    steps=(),
    *,
    num_shards: int | None = 1,
    max_shard_size: int | None = None,
    force: bool = False,
    dry_run: bool = False,
    progress=None,
    verify: bool = True,
    state_file: bool = True,
    fsync: bool = False,
    make_latest: bool = False,
    store=None,
) -> RewriteReport:
    """Plan and write the rewrite of an open checkpoint at prefix dst in store (None: local files;
    dst None: plan only); see rewrite()."""
    started = time.perf_counter()
    plan = make_plan(ckpt, steps)
    report = plan_report(plan, dst, steps, dry_run=dry_run)
    if dry_run and dst is not None:  # predict what a real run would refuse
        from .bundle.writer import check_output

        check_output(os.fspath(dst), force=force, inputs=[ckpt.located], store=store)
    if not dry_run:
        report.state_file = execute(
            plan,
            os.fspath(dst),
            num_shards=num_shards,
            max_shard_size=max_shard_size,
            force=force,
            progress=progress,
            verify=verify,
            state_file=state_file,
            fsync=fsync,
            make_latest=make_latest,
            store=store,
        )
    report.seconds = time.perf_counter() - started
    return report


def _not_cast(items: list[Item], entries, steps, paths=None) -> list[tuple[str, str, str]]:
    """With a Cast step: the kept tensors whose dtype stays as it was, and why."""
    from .transform import ALREADY

    casts = [s for s in steps if isinstance(s, Cast)]
    if not casts:
        return []
    paths = paths or {}
    return [
        (i.dst, dtypes.name_of(i.dtype), casts[-1].left_as_is(i, paths.get(i.src, ())) or ALREADY)
        for i in items
        if i.dtype == entries[i.src].dtype
    ]


def execute(
    plan: Plan,
    dst: str,
    *,
    num_shards=1,
    max_shard_size=None,
    force=False,
    progress=None,
    verify=True,
    state_file=True,
    fsync=False,
    make_latest=False,
    store=None,
) -> str | None:
    """Write the planned checkpoint atomically at dst in store (None: local files); return what
    happened to the state file."""
    from .bundle.writer import BundleWriter

    ckpt = plan.source
    groups = _assign_shards(plan.pieces, num_shards, max_shard_size)
    lock = threading.Lock()
    if progress is not None and hasattr(progress, "set_total"):
        # What is written, not the input's size: a strip reads (and writes) a third of its input.
        progress.set_total(sum(p.size for p in plan.pieces) + (len(plan.graph) if plan.graph else 0))

    def tick(n: int) -> None:
        if progress:
            with lock:
                progress(n)

    # Set on the first failure (or Ctrl-C): the other shard threads stop at their next piece
    # instead of writing their whole shard before the error can surface.
    stop = threading.Event()

    with BundleWriter(store, dst, len(groups), force=force, inputs=[ckpt.located]) as writer:
        for shard, group in enumerate(groups):
            writer.reserve(shard, sum(p.size for p in group))

        def run(shard: int) -> None:
            try:
                _announce(ckpt, groups[shard], writer, shard)
                for piece in groups[shard]:
                    if stop.is_set():
                        return
                    _write_piece(ckpt, writer, piece, shard, verify)
                    tick(piece.size)
            except BaseException:
                stop.set()
                raise

        # Forward-only sources (archives) are read by one thread in source order.
        if len(groups) > 1 and not ckpt.sequential:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=min(len(groups), os.cpu_count() or 2, 4)) as pool:
                try:
                    for f in [pool.submit(run, i) for i in range(len(groups))]:
                        f.result()
                except BaseException:
                    stop.set()
                    raise
        else:
            for i in range(len(groups)):
                run(i)
        for name, meta in plan.metadata.items():
            writer.add_entry(name, meta)
        if plan.graph is not None:
            import numpy as np

            graph = np.empty((), dtype=object)
            graph[()] = plan.graph
            writer.add_array(naming.OBJECT_GRAPH_KEY, graph, shard=len(groups) - 1)
            tick(len(plan.graph))
        check_container = getattr(ckpt, "check_container", None)
        if check_container is not None:  # an archive: a duplicate member past the tensors makes it ambiguous
            check_container()
        writer.finish(state_file=state_file, fsync=fsync, make_latest=make_latest)
        return writer.state_file


def _announce(ckpt: Checkpoint, pieces: list[Piece], writer, shard: int) -> None:
    """Tell the writer which byte ranges of each data shard this output shard copies, in order (it reads
    a local file ahead, and passes the hint on to other sources: Source.will_need)."""
    if ckpt.format != "v2":
        return
    wanted: dict[int, list[tuple[int, int]]] = {}
    for piece in pieces:
        entry = piece.src_entry
        if entry.size:
            wanted.setdefault(entry.shard_id, []).append((entry.offset, entry.size))
    for shard_id, ranges in wanted.items():
        writer.will_copy(shard, ckpt.reader.shard(shard_id), ranges)


def _write_piece(ckpt: Checkpoint, writer, piece: Piece, shard: int, verify: bool) -> None:
    entry = piece.src_entry
    same_dtype = piece.out_dtype == entry.dtype
    reader = ckpt.reader
    if ckpt.format == "v2" and same_dtype and not reader.header.big_endian:
        if entry.dtype in (dtypes.STRING, dtypes.VARIANT):
            # Their crc32c is not over the stored bytes (FORMAT §4.3, §4.4): the reader checks them whole.
            data = reader.read_raw(piece.src_name, entry, verify=verify)
            writer.add_bytes(piece.key, entry.dtype, entry.shape, [data], shard, crc=entry.crc32c)
            return
        reader.check_entry(piece.src_name, entry)
        writer.copy(piece.key, entry, reader.shard(entry.shard_id), shard, verify=verify, name=piece.src_name)
        return
    if ckpt.format == "v1":
        if piece.slice is None:
            array = reader.read_entry(piece.src_name, entry)
        else:
            array = ckpt._v1().read_slice(piece.src_name, piece.slice, ckpt.entries()[piece.src_name].shape)
        _add_array(writer, piece, array, shard)
        return
    info = dtypes.lookup(entry.dtype)
    if info is not None and info.fixed_width:
        # Cast (or byte-swap) flat runs of whole elements, not rows: memory stays bounded by the
        # chunk even when one row is huge, and big-endian input streams too.
        from .bundle.decode import cast, from_bytes, to_bytes

        target = dtypes.require(piece.out_dtype)
        big = reader.header.big_endian
        chunks = (
            to_bytes(cast(from_bytes(c, info, (len(c) // info.itemsize,), big_endian=big), target), target)
            for c in reader.iter_raw(piece.src_name, entry, CHUNK_BYTES)
        )
        writer.add_bytes(piece.key, piece.out_dtype, entry.shape, chunks, shard)
        return
    _add_array(writer, piece, reader.read_entry(piece.src_name, entry), shard)


def _add_array(writer, piece: Piece, array, shard: int) -> None:
    target = dtypes.require(piece.out_dtype)
    if target.name != "string" and array.dtype != target.numpy():
        from .bundle.decode import cast

        array = cast(array, target)
    writer.add_array(piece.key, array, shard, dtype=piece.out_dtype)  # numpy's dtype loses qint8 etc.
