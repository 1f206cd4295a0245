"""Writing a fitted checkpoint: copies streamed through rewrite's piece writer, built tensors a chunk of rows at a time.

A built tensor (sliced, remapped to a new vocabulary, or re-cut to the template's partitioning) is made
from ranged row reads (Tensor.read_rows), so memory stays bounded by CHUNK_BYTES.
"""

from __future__ import annotations

import math

from .bundle import naming
from .fit_decide import Op

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (type checkers honour the name)
if TYPE_CHECKING:
    from .bundle.entry import Entry
    from .checkpoint import Checkpoint
    from .rewrite_plan import Piece

CHUNK_BYTES = 8 << 20  # output rows built per step of a sliced, remapped or re-cut tensor


def write(
    cs,
    ct,
    ops: list[Op],
    out: str,
    *,
    num_shards: int | None = 1,
    max_shard_size: int | None = None,
    force=False,
    verify=True,
    state_file=True,
    fsync=False,
    axis: int = 0,
    store=None,
) -> None:
    """Write the planned checkpoint atomically at out in store (None: local files): copies first (in source
    order), then built tensors, then the graph.

    Shards are assigned by rewrite's rule over every piece in write order; built tensors are sized as the
    template's pieces they replace."""
    from .bundle.writer import BundleWriter
    from .rewrite_exec import _write_piece

    groups, origin, metadata = layout(cs, ct, ops, num_shards, max_shard_size)
    with BundleWriter(store, out, len(groups), force=force, inputs=[cs.located, ct.located]) as writer:
        for shard, group in enumerate(groups):
            for piece in group:
                ckpt, op = origin[piece.key]
                if op.kind in ("copy", "keep"):
                    _write_piece(ckpt, writer, piece, shard, verify)
                else:
                    _write_built(writer, cs[op.src], ct[op.dst], op, piece, axis, shard)
        for name, meta in metadata.items():
            writer.add_entry(name, meta)
        graph = ct.object_graph_bytes
        if graph is not None:
            import numpy as np

            value = np.empty((), dtype=object)
            value[()] = graph
            writer.add_array(naming.OBJECT_GRAPH_KEY, value, len(groups) - 1)
        writer.finish(state_file=state_file, fsync=fsync)


def layout(
    cs: Checkpoint, ct: Checkpoint, ops: list[Op], num_shards: int | None, max_shard_size: int | None
) -> tuple[list[list[Piece]], dict[bytes, tuple[Checkpoint, Op]], dict[str, Entry]]:
    """(pieces per output shard, key -> (checkpoint, Op), sliced tensors' metadata): what write() writes where.

    Also the layout of a fit plan (plan_fit.py), so both write the same bytes."""
    from .rewrite_plan import _assign_shards, tensor_pieces

    copies: list[Piece] = []
    built: list[Piece] = []
    metadata: dict[str, Entry] = {}
    origin: dict[bytes, tuple[Checkpoint, Op]] = {}  # piece key -> where it comes from
    for op in ops:
        ckpt = cs if op.kind == "copy" else ct
        dtype = op.dtype if op.kind == "copy" and op.dtype is not None else ct.entries()[op.dst].dtype
        # A built tensor takes the template's layout: its pieces say where each part goes and how big it is.
        pieces, meta = (
            tensor_pieces(ckpt, op.src or op.dst, op.dst, dtype)
            if op.kind in ("copy", "keep")
            else tensor_pieces(ct, op.dst, op.dst, dtype)
        )
        for p in pieces:
            origin[p.key] = (ckpt, op)
        (copies if op.kind in ("copy", "keep") else built).extend(pieces)
        if meta is not None:
            metadata[op.dst] = meta
    copies.sort(key=lambda p: (origin[p.key][0] is ct, p.src_entry.shard_id, p.src_entry.offset, p.key))
    return _assign_shards(copies + built, num_shards, max_shard_size), origin, metadata


def _write_built(writer, source, target, op: Op, piece, axis: int, shard: int) -> None:
    """Write one piece of a built tensor (the whole tensor, or one template slice) a chunk of rows at a time."""
    import numpy as np

    from .bundle.decode import to_bytes

    shape, info = target.shape, target.entry.dtype_info
    bounds = piece.slice.bounds(shape) if piece.slice is not None else tuple((0, d) for d in shape)
    region = tuple(b - a for a, b in bounds)
    chunks = _region_chunks(source, target, op, bounds, axis)
    if info.fixed_width:
        writer.add_bytes(piece.key, target.entry.dtype, region, (to_bytes(c, info) for c in chunks), shard)
    else:  # strings: variable width, one piece in memory
        parts = list(chunks)
        value = np.concatenate(parts) if len(parts) > 1 else parts[0]
        writer.add_array(piece.key, value.reshape(region), shard, dtype=target.entry.dtype)


def _region_chunks(source, target, op: Op, bounds, axis: int):
    """The template's values in the box `bounds` with the source's over them, as arrays of consecutive rows."""
    import numpy as np

    moves = _moves(op.vocab) if op.kind == "vocab" else None

    if not bounds:  # a scalar has no rows: sliced, remapped or re-cut, it is the source's value cast
        yield np.asarray(source.read()).astype(target.dtype)
        return
    (r0, r1), inner = bounds[0], tuple(slice(a, b) for a, b in bounds[1:])
    step = _rows_per_chunk(source, target, r1 - r0)
    for g0 in range(r0, r1, step):
        g1 = min(r1, g0 + step)
        if op.kind == "layout":
            yield source.read_rows(g0, g1)[(slice(None),) + inner].astype(target.dtype)
            continue
        value = np.array(target.read_rows(g0, g1)[(slice(None),) + inner])  # writable
        if op.kind == "slice":
            _overlay_corner(value, source, target, g0, g1, bounds)
        elif axis == 0:
            _overlay_rows(value, source, g0, g1, bounds, moves)
        else:
            _overlay_columns(value, source, g0, g1, bounds, moves)
        yield value


def _rows_per_chunk(source, target, rows: int) -> int:
    """Rows per step: about CHUNK_BYTES of full rows of either side; all of them if either is read whole."""
    if not (source.ranged_rows and target.ranged_rows):
        return max(rows, 1)
    row_bytes = max(t.entry.dtype_info.itemsize * math.prod(t.shape[1:]) for t in (source, target))
    return max(1, CHUNK_BYTES // row_bytes) if row_bytes else max(rows, 1)


def _clip(bounds, limits) -> tuple:
    """Per inner dimension: (local slice into the box, global slice) of the part below each limit."""
    out = []
    for (a, b), limit in zip(bounds, limits):
        stop = max(a, min(b, limit))
        out.append((slice(0, stop - a), slice(a, stop)))
    return tuple(out)


def _overlay_corner(value, source, target, g0, g1, bounds) -> None:
    """The source's leading corner over rows [g0, g1) of the box."""
    n = max(0, min(g1, source.shape[0]) - g0)
    if not n:
        return
    clipped = _clip(bounds[1:], [min(a, b) for a, b in zip(source.shape[1:], target.shape[1:])])
    rows = source.read_rows(g0, g0 + n)
    corner = rows[(slice(None),) + tuple(g for _, g in clipped)]
    value[(slice(0, n),) + tuple(local for local, _ in clipped)] = corner.astype(value.dtype, copy=False)


def _moves(vocab):
    """(new indices, old indices) of the tokens in both vocabularies, as int64 arrays ordered by new index."""
    import numpy as np

    old, new, _ = vocab
    where = {t: i for i, t in enumerate(old)}
    moved = [(j, where[t]) for j, t in enumerate(new) if t in where]
    return tuple(np.array(x, dtype=np.int64).reshape(-1) for x in (zip(*moved) if moved else ((), ())))


def _moves_within(moves, start: int, stop: int):
    """The part of moves whose new index lies in [start, stop)."""
    to, frm = moves
    lo, hi = to.searchsorted(start), to.searchsorted(stop)
    return to[lo:hi], frm[lo:hi]


def _overlay_rows(value, source, g0, g1, bounds, moves) -> None:
    """Axis-0 remap: each output row [g0, g1) whose token the old vocabulary has gets that old row."""
    to, frm = _moves_within(moves, g0, g1)
    if not len(to):
        return
    inner = tuple(slice(a, b) for a, b in bounds[1:])
    value[to - g0] = _gather_rows(source, frm)[(slice(None),) + inner].astype(value.dtype, copy=False)


def _gather_rows(source, rows):
    """source rows in the order given, reading each run of consecutive rows once."""
    import numpy as np

    order = np.argsort(rows, kind="stable")
    ranked = rows[order]
    parts, start = [], 0
    for k in range(1, len(ranked) + 1):
        if k == len(ranked) or ranked[k] != ranked[k - 1] + 1:
            parts.append(source.read_rows(int(ranked[start]), int(ranked[k - 1]) + 1))
            start = k
    out = np.empty((len(rows),) + tuple(source.shape[1:]), dtype=parts[0].dtype)
    out[order] = np.concatenate(parts) if len(parts) > 1 else parts[0]
    return out


def _overlay_columns(value, source, g0, g1, bounds, moves) -> None:
    """Axis-1 remap: in rows [g0, g1), each column whose token the old vocabulary has gets that old column."""
    (c0, c1) = bounds[1]
    to, frm = _moves_within(moves, c0, c1)
    if not len(to):
        return
    rest = tuple(slice(a, b) for a, b in bounds[2:])
    rows = source.read_rows(g0, g1)
    value[:, to - c0] = rows[(slice(None), frm) + rest].astype(value.dtype, copy=False)
