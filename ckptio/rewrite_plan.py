"""A rewrite's plan: the output names after the steps, and every run of bytes to write, in source order.

Works on an open Checkpoint and reads no tensor bytes; rewrite_exec.py writes the plan, rewrite.py
is the public front that opens any path form and routes archive, URL and other-format outputs.
"""

from __future__ import annotations

import os
from collections import namedtuple

from .bundle import dtypes, naming
from .bundle.slices import encode_key as slice_key
from .checkpoint import Checkpoint
from .errors import PlanError
from .transform import Cast, Context, Item, check_collisions

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (type checkers honour the name)
if TYPE_CHECKING:
    from .bundle.entry import Entry


# key: output bundle key; name: output tensor name (for messages); src_name: source tensor name;
# src_entry: where the bytes are (V2) or the tensor's metadata (V1); slice: the stored slice, if any.
class Piece(namedtuple("Piece", "key name src_name src_entry out_dtype slice", defaults=(None,))):
    """One run of bytes to write: a whole tensor or one stored slice."""

    __slots__ = ()

    @property
    def size(self) -> int:
        """Bytes this piece takes in the output."""
        info = dtypes.lookup(self.out_dtype)
        if info is None or not info.fixed_width:
            return self.src_entry.size
        n = self.src_entry.num_elements
        if self.slice is not None and self.src_entry.slices:  # V1: the entry is the whole tensor
            n = 1
            for d in self.slice.shape(self.src_entry.shape):
                n *= d
        return n * info.itemsize


class Plan:
    """A validated rewrite: output items, the pieces to write, and the new object graph if any."""

    __slots__ = ("source", "items", "dropped", "pieces", "metadata", "graph", "graph_rewritten", "object_names")

    def __init__(
        self,
        source: Checkpoint,
        items: list[Item],
        dropped: list[str],
        pieces: list[Piece],
        metadata: dict[str, Entry],
        graph: bytes | None = None,
        graph_rewritten: bool = False,
    ):
        self.source, self.items, self.dropped, self.pieces = source, items, dropped, pieces
        self.metadata = metadata  # sliced tensors' metadata entries by output name
        self.graph = graph
        self.graph_rewritten = graph_rewritten  # the graph differs from the source's
        self.object_names = None  # source key -> its object paths, when --cast-only needed them

    @property
    def bytes_before(self) -> int:
        return sum(_stored_size(self.source, n, e) for n, e in self.source.entries().items())

    @property
    def bytes_after(self) -> int:
        return sum(p.size for p in self.pieces) + (len(self.graph) if self.graph else 0)


class Report:
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
            f"Report(src={self.src!r}, dst={self.dst!r}, kept={len(self.kept)}, dropped={len(self.dropped)}, "
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


def _stored_size(ckpt: Checkpoint, name: str, entry: Entry) -> int:
    if entry.slices and ckpt.format == "v2":
        return sum(ckpt._reader.slice_entry(name, s).size for s in entry.slices)
    return entry.size


def make_plan(ckpt: Checkpoint, steps=()) -> Plan:
    """Apply steps to the source's names and lay out every piece to write; no I/O on tensor bytes."""
    entries = ckpt.entries()
    graph_key = naming.OBJECT_GRAPH_KEY
    names = sorted(n for n in entries if n != graph_key)
    graph = source_graph = None
    if graph_key in entries and any(not isinstance(s, Cast) for s in steps):
        try:
            from .objgraph import plan_object_based
        except ImportError:
            raise PlanError(
                "this is an object-based (TF2) checkpoint; rewriting its names needs the object "
                "graph support, which this build lacks"
            ) from None
        source_graph = ckpt.object_graph_bytes  # read once: an archive source is forward-only
        mapping, graph = plan_object_based(ckpt, steps, data=source_graph)
        items = [Item(src, dst, entries[src].dtype) for src, dst in mapping.items()]
        ctx = Context(entries, _object_names(source_graph, entries, steps))
        for step in steps:
            if isinstance(step, Cast):
                items = step.apply(items, ctx)
    else:
        items = [Item(n, n, entries[n].dtype) for n in names]
        if graph_key in entries:  # only casts: names stay, the graph is copied
            graph = source_graph = ckpt.object_graph_bytes
        ctx = Context(entries, _object_names(source_graph, entries, steps))
        for step in steps:
            items = step.apply(items, ctx)
    check_collisions(items)
    if not items and names:
        raise PlanError("the plan keeps no tensor; check --include/--exclude and the rename rules")
    for item in items:
        if not item.dst or item.dst.startswith("\x00") or item.dst == graph_key:
            raise PlanError(f"invalid output name {item.dst!r}", key=item.src)
    kept = {i.src for i in items}
    dropped = [n for n in names if n not in kept]
    pieces, metadata = [], {}
    for item in items:
        found, meta = tensor_pieces(ckpt, item.promoted_from or item.src, item.dst, item.dtype)
        pieces += found
        if meta is not None:
            metadata[item.dst] = meta
    pieces.sort(key=lambda p: (p.src_entry.shard_id, p.src_entry.offset, p.key))
    plan = Plan(ckpt, items, dropped, pieces, metadata, graph, graph != source_graph)
    plan.object_names = ctx.names
    return plan


def _object_names(data: bytes | None, entries, steps) -> dict[str, list[str]] | None:
    """For a Cast with `only` on an object-based checkpoint: each source key's object paths, which
    `--cast-only` matches as `--include` does (a Keras 3 weight's key names the optimizer, not the model)."""
    if data is None or not any(isinstance(s, Cast) and s.only for s in steps):
        return None
    from .objgraph_edit import object_names

    return object_names(data, entries)


def tensor_pieces(ckpt: Checkpoint, name: str, dst: str, dtype: int) -> tuple[list[Piece], Entry | None]:
    """The pieces that write source tensor `name` as `dst` in `dtype`, and its metadata entry if sliced."""
    from .bundle.entry import Entry

    entry = ckpt.entries()[name]
    if not entry.slices:
        return [Piece(naming.encode_key(dst), dst, name, entry, dtype)], None
    pieces = [
        Piece(
            slice_key(dst, s), dst, name, ckpt._reader.slice_entry(name, s) if ckpt.format == "v2" else entry, dtype, s
        )
        for s in entry.slices
    ]
    return pieces, Entry(dtype, entry.shape, slices=entry.slices)


def _assign_shards(pieces: list[Piece], num_shards: int | None, max_shard_size: int | None) -> list[list[Piece]]:
    """Split pieces (in source order) into contiguous runs, one per output shard."""
    return split_runs(pieces, lambda p: p.size, num_shards, max_shard_size)


def split_runs(items: list, size_of, num_shards: int | None, max_shard_size: int | None) -> list[list]:
    """Cut items (in order) into runs: greedy up to max_shard_size, else num_shards runs of similar size."""
    if max_shard_size:
        groups, current, size = [], [], 0
        for item in items:
            if current and size + size_of(item) > max_shard_size:
                groups.append(current)
                current, size = [], 0
            current.append(item)
            size += size_of(item)
        groups.append(current)
        return groups
    n = max(1, num_shards or 1)
    total = sum(map(size_of, items)) or 1
    groups = [[] for _ in range(n)]
    done = 0
    for item in items:
        groups[min(n - 1, done * n // total)].append(item)
        done += size_of(item)
    return groups


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


def plan_report(plan: Plan, dst, steps=(), *, dry_run: bool = False) -> Report:
    """The Report of a planned rewrite, before anything is written."""
    entries = plan.source.entries()
    return Report(
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
