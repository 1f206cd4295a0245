"""The plan of a rewrite: the steps applied to the source's names, and the pieces of bytes each output tensor takes.

Planning reads no tensor bytes, so a bad rule fails before any output exists; rewrite.execute (and
fit, merge and saved plans) then write the pieces in (shard, offset) order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .bundle import dtypes, naming
from .bundle.slices import encode_key as slice_key
from .checkpoint import Checkpoint
from .errors import PlanError
from .transform import Cast, Context, Item, check_collisions

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (type checkers honour the name)
if TYPE_CHECKING:
    from .bundle.entry import Entry
    from .bundle.slices import Slice


# key: output bundle key; name: output tensor name (for messages); src_name: source tensor name;
# src_entry: where the bytes are (V2) or the tensor's metadata (V1); slice: the stored slice, if any.
@dataclass(frozen=True, slots=True)
class Piece:
    """One run of bytes to write: a whole tensor or one stored slice."""

    key: bytes
    name: str
    src_name: str
    src_entry: Entry
    out_dtype: int
    slice: Slice | None = None

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


@dataclass(slots=True)
class Plan:
    """A validated rewrite: output items, the pieces to write, and the new object graph if any."""

    source: Checkpoint
    items: list[Item]
    dropped: list[str]
    pieces: list[Piece]
    metadata: dict[str, Entry]  # sliced tensors' metadata entries by output name
    graph: bytes | None = None
    graph_rewritten: bool = False  # the graph differs from the source's
    # source key -> its object paths, when --cast-only needed them
    object_names: dict[str, list[str]] | None = field(default=None, init=False)

    @property
    def bytes_before(self) -> int:
        return sum(_stored_size(self.source, n, e) for n, e in self.source.entries().items())

    @property
    def bytes_after(self) -> int:
        return sum(p.size for p in self.pieces) + (len(self.graph) if self.graph else 0)


def _stored_size(ckpt: Checkpoint, name: str, entry: Entry) -> int:
    return ckpt.reader.stored_size(name, entry)


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
    reader = ckpt.reader
    pieces = [Piece(slice_key(dst, s), dst, name, reader.slice_entry(name, s), dtype, s) for s in entry.slices]
    return pieces, Entry(dtype, entry.shape, slices=entry.slices)


def _assign_shards(pieces: list[Piece], num_shards: int | None, max_shard_size: int | None) -> list[list[Piece]]:
    """Split pieces (in source order) into contiguous runs, one per output shard."""
    return split_runs(pieces, lambda p: p.size, num_shards, max_shard_size)


def split_runs(items: list, size_of, num_shards: int | None, max_shard_size: int | None) -> list[list]:
    """Cut items (in order) into runs: greedy up to max_shard_size, else num_shards runs of similar size."""
    if max_shard_size:
        groups: list[list] = []
        current: list = []
        size = 0
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
