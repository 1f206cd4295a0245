"""fit(src, template, out): the template's structure (keys, dtypes, shapes, object graph) with src's values.

Every template tensor is written once: copied from the source tensor that matches it (views.match),
copied from the template when none does, or built when it must be sliced, remapped to a new vocabulary
or re-partitioned. Copies go through rewrite's piece writer, so unchanged bytes are streamed with their
checksums carried over. Built tensors are made a chunk of output rows at a time from ranged row reads
(Tensor.read_rows), so memory stays bounded by the chunk size (strings, V1 and archive inputs excepted:
those pieces are read whole).
"""

from __future__ import annotations

import math
import os
import time

from .bundle import naming
from .checkpoint import Checkpoint
from .errors import MismatchError, PlanError
from .fit_decide import (  # noqa: F401 - their old home
    FLOATING,
    ON_MISMATCH,
    FitReport,
    Op,
    _decide,
    _without,
    mismatch_error,
    refuse_if_nothing_matched,
)
from .views import match, view


def fit(
    src,
    template,
    out,
    *,
    rules=None,
    regex: bool = False,
    on_mismatch: str = "error",
    vocab=None,
    vocab_axis: int = 0,
    dry_run: bool = False,
    force: bool = False,
    num_shards: int | None = 1,
    max_shard_size: int | None = None,
    verify: bool = True,
    state_file: bool = True,
    fsync: bool = False,
) -> FitReport:
    """Write at prefix `out` a checkpoint with template's structure and src's values where a source tensor matches.

    rules: a transform.Rename or (old, new) pairs renaming src's names first; on_mismatch: error, template or
    slice; vocab: {name: (old vocabulary, new vocabulary)}, each a file (one token per line) or a token list;
    num_shards / max_shard_size: output data shards, as for rewrite().
    """
    started = time.perf_counter()
    from .sources import open as open_checkpoint

    if on_mismatch not in ON_MISMATCH:
        raise PlanError(f"on_mismatch must be one of {', '.join(ON_MISMATCH)}, not {on_mismatch!r}")
    if vocab_axis not in (0, 1):
        raise PlanError(f"vocab_axis must be 0 or 1, not {vocab_axis!r}")
    if num_shards is not None and num_shards < 1 or max_shard_size is not None and max_shard_size < 1:
        raise PlanError("num_shards and max_shard_size must be at least 1")
    if out is None and not dry_run:
        raise PlanError("fit needs an output prefix (or dry_run=True)")
    from .formats.keras_fit import fit_weights_h5, is_keras_template

    if is_keras_template(template):  # a Keras 3 .weights.h5 template: written as one, through h5py
        return fit_weights_h5(
            src,
            template,
            out,
            rules=_rules(rules, regex),
            on_mismatch=on_mismatch,
            dry_run=dry_run,
            force=force,
            fsync=fsync,
            vocab=vocab,
            shards=num_shards not in (None, 1) or max_shard_size is not None,
        )
    if out is not None:
        from .sources import is_special

        if is_special(out):
            raise PlanError("fit writes a local checkpoint prefix; pack or upload it afterwards", path=os.fspath(out))
    rules = _rules(rules, regex)
    vocabularies = {name: (_tokens(old), _tokens(new)) for name, (old, new) in (vocab or {}).items()}
    cs = src if isinstance(src, Checkpoint) else open_checkpoint(src)
    try:
        ct = template if isinstance(template, Checkpoint) else open_checkpoint(template)
        try:
            if out is not None:  # refuse an existing output or an input before any planning
                from .bundle.writer import check_output

                check_output(os.fspath(out), force=force, inputs=[cs.located, ct.located])
            report, ops = plan(cs, ct, rules, on_mismatch, vocabularies, vocab_axis)
            report.dst, report.dry_run = None if out is None else os.fspath(out), dry_run
            if report.errors and not dry_run:
                raise mismatch_error(report, "tensor")
            if not dry_run:
                refuse_if_nothing_matched(report)
                write(
                    cs,
                    ct,
                    ops,
                    os.fspath(out),
                    num_shards=num_shards,
                    max_shard_size=max_shard_size,
                    force=force,
                    verify=verify,
                    state_file=state_file,
                    fsync=fsync,
                    axis=vocab_axis,
                )
            report.seconds = time.perf_counter() - started
            return report
        finally:
            if ct is not template:
                ct.close()
    finally:
        if cs is not src:
            cs.close()


def _rules(rules, regex: bool):
    from .transform import Rename, parse_map

    if rules is None or isinstance(rules, Rename):
        return rules
    pairs = tuple(parse_map(r) if isinstance(r, str) else tuple(r) for r in rules)
    return Rename(pairs, regex=regex) if pairs else None


def _tokens(value) -> tuple[str, ...]:
    """A vocabulary: a file of one token per line, or a sequence of tokens; duplicates are refused."""
    if isinstance(value, (str, os.PathLike)):
        try:
            with open(value, encoding="utf-8") as f:
                tokens = tuple(line.rstrip("\r\n") for line in f)
        except (OSError, UnicodeDecodeError) as exc:
            raise PlanError(f"cannot read vocabulary file {os.fspath(value)}: {exc}") from None
    else:
        tokens = tuple(value)
    seen = set()
    for t in tokens:
        if t in seen:
            raise PlanError(f"vocabulary lists token {t!r} twice")
        seen.add(t)
    return tokens


# -- planning ---------------------------------------------------------------------------------------


def plan(cs, ct, rules, on_mismatch: str, vocabularies: dict, axis: int) -> tuple[FitReport, list[Op]]:
    """Match, then decide how each template tensor is written; reads no tensor bytes."""
    vs, vt = view(cs), view(ct)
    m = match(vs, vt, rules, a_label="source", b_label="template")
    if m.shadowed:  # two sources for one template tensor: the rule's, and one matching it by name
        other, dst, how = m.shadowed[0]
        mapped = next(s for s, d, _ in m.pairs if d == dst)
        raise MismatchError(
            f"template tensor {dst!r} is matched by two source tensors: {mapped!r} (--map) and "
            f"{other!r} ({how}); send {other!r} elsewhere with a --map rule of its own"
        )
    source_of = {dst: (s, how) for s, dst, how in m.pairs}
    remap = _vocab_targets(vs, vt, source_of, vocabularies)
    report = FitReport(cs.prefix, ct.prefix, None)
    report.template_only, report.source_only = list(m.only_b), list(m.only_a)
    ops = []
    for dst in sorted(vt.tensors):
        if dst not in source_of:
            ops.append(Op("keep", dst))
            continue
        name, how = source_of[dst]
        es, et = vs.tensors[name].entry, vt.tensors[dst].entry
        ops.append(_decide(report, name, dst, how, es, et, on_mismatch, remap.get(dst), axis))
    return report, ops


def _vocab_targets(vs, vt, source_of: dict, vocabularies: dict) -> dict[str, tuple]:
    """template key -> (old tokens, new tokens, vocabulary name) for each remapped tensor and its slots."""
    out = {}
    for name, tokens in vocabularies.items():
        keys = vt.find(name)
        if not keys:  # a source name: the template tensor it matched
            keys = sorted({dst for dst, (s, _) in source_of.items() if s in vs.find(name)})
        if len(keys) != 1:
            raise PlanError(
                f"--vocab {name}: names {'no' if not keys else len(keys)} template tensors"
                + (f" ({', '.join(keys[:3])})" if keys else ""),
                key=name,
            )
        if keys[0] not in source_of:
            raise PlanError(f"--vocab {name}: no source tensor matches template tensor {keys[0]!r}", key=name)
        if keys[0] in out:  # two vocabularies for one tensor: neither may silently win
            raise PlanError(
                f"--vocab {name} and --vocab {out[keys[0]][2]} name one template tensor {keys[0]!r}", key=name
            )
        out[keys[0]] = tokens + (name,)
    named = set(out)
    for dst, t in vt.tensors.items():  # optimizer slots of a remapped variable move with it
        var = t.slot_of[0] if t.slot_of is not None else None
        if var in named and dst in named:
            raise PlanError(
                f"--vocab {out[dst][2]} names optimizer slot {dst!r}, which moves with its variable "
                f"(--vocab {out[var][2]}); drop one of them",
                key=dst,
            )
        if var in named and dst in source_of:
            src_var, src_slot = source_of[var][0], source_of[dst][0]
            if (
                t.entry.shape != vt.tensors[var].entry.shape
                or vs.tensors[src_slot].entry.shape != vs.tensors[src_var].entry.shape
            ):
                # A factored or scalar slot (Adafactor's row/column statistics, a step count) is not one
                # row per token: moving its entries as rows would be wrong without a word.
                raise PlanError(
                    f"--vocab {out[var][2]}: optimizer slot {dst!r} is not shaped like its variable "
                    f"{var!r}, so its rows cannot be remapped; fit with a template without the "
                    "optimizer, or strip the source's optimizer state first",
                    key=dst,
                )
            out[dst] = out[var]
    return out


# -- writing ----------------------------------------------------------------------------------------

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
) -> None:
    """Write the planned checkpoint atomically: copies first (in source order), then built tensors, then the graph.

    Shards are assigned by rewrite's rule over every piece in write order; built tensors are sized as the
    template's pieces they replace."""
    from .bundle.writer import BundleWriter
    from .rewrite_exec import _write_piece

    groups, origin, metadata = layout(cs, ct, ops, num_shards, max_shard_size)
    with BundleWriter(out, len(groups), force=force, inputs=[cs.located, ct.located]) as writer:
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


def layout(cs, ct, ops: list[Op], num_shards: int | None, max_shard_size: int | None):
    """(pieces per output shard, key -> (checkpoint, Op), sliced tensors' metadata): what write() writes where.

    Also the layout of a fit plan (plan_fit.py), so both write the same bytes."""
    from .rewrite_plan import _assign_shards, tensor_pieces

    copies, built, metadata, origin = [], [], {}, {}
    for op in ops:
        ckpt = cs if op.kind == "copy" else ct
        dtype = op.dtype if op.kind == "copy" else ct.entries()[op.dst].dtype
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
