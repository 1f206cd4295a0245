"""fit(src, template, out): the template's structure (keys, dtypes, shapes, object graph) with src's values.

Every template tensor is written once: copied from the source tensor that matches it (views.match),
copied from the template when none does, or built in memory when it must be sliced, remapped to a new
vocabulary or re-partitioned. Copies go through rewrite's piece writer, so unchanged bytes are streamed
with their checksums carried over and memory stays bounded by the chunk size.
"""
from __future__ import annotations

import os
import time
from collections import namedtuple

from .bundle import dtypes, naming
from .checkpoint import Checkpoint
from .errors import MismatchError, PlanError
from .views import match, view

ON_MISMATCH = ("error", "template", "slice")
FLOATING = ("float16", "bfloat16", "float32", "float64")


# kind: "copy" (src bytes), "keep" (template bytes), "slice", "vocab" or "layout" (built in memory).
class Op(namedtuple("Op", "kind dst src dtype vocab", defaults=(None, None, None))):
    """How one template tensor is written."""

    __slots__ = ()


class FitReport:
    """Where every template tensor of the output comes from."""

    __slots__ = ("src", "template", "dst", "matched", "template_only", "source_only", "mismatched", "cast",
                 "remapped", "dry_run", "seconds", "errors")

    def __init__(self, src, template, dst, dry_run=False):
        self.src, self.template, self.dst, self.dry_run, self.seconds = src, template, dst, dry_run, 0.0
        self.matched, self.template_only, self.source_only = [], [], []
        self.mismatched, self.cast, self.remapped = [], [], []
        self.errors: list[tuple[str, str]] = []  # (template key, why) of each mismatch that stops the fit

    def to_json(self) -> dict:
        return {"matched": self.matched, "template_only": self.template_only, "source_only": self.source_only,
                "mismatched": self.mismatched, "cast": self.cast, "remapped": self.remapped}

    def __repr__(self):
        return (f"FitReport(dst={self.dst!r}, matched={len(self.matched)}, template_only={len(self.template_only)}, "
                f"source_only={len(self.source_only)}, mismatched={len(self.mismatched)}, cast={len(self.cast)}, "
                f"remapped={len(self.remapped)}, dry_run={self.dry_run})")


def fit(src, template, out, *, rules=None, regex: bool = False, on_mismatch: str = "error", vocab=None,
        vocab_axis: int = 0, dry_run: bool = False, force: bool = False, verify: bool = True,
        state_file: bool = True, fsync: bool = False) -> FitReport:
    """Write at prefix `out` a checkpoint with template's structure and src's values where a source tensor matches.

    rules: a transform.Rename or (old, new) pairs renaming src's names first; on_mismatch: error, template or
    slice; vocab: {name: (old vocabulary, new vocabulary)}, each a file (one token per line) or a token list.
    """
    started = time.perf_counter()
    from .checkpoint import open as open_checkpoint

    if on_mismatch not in ON_MISMATCH:
        raise PlanError(f"on_mismatch must be one of {', '.join(ON_MISMATCH)}, not {on_mismatch!r}")
    if vocab_axis not in (0, 1):
        raise PlanError(f"vocab_axis must be 0 or 1, not {vocab_axis!r}")
    if out is None and not dry_run:
        raise PlanError("fit needs an output prefix (or dry_run=True)")
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
                _, why = report.errors[0]
                more = f" (and {len(report.errors) - 1} more)" if len(report.errors) > 1 else ""
                raise MismatchError(f"{why}{more}; nothing written (--on-mismatch template keeps the "
                                    "template's value, slice copies the overlap)")
            if not dry_run:
                write(cs, ct, ops, os.fspath(out), force=force, verify=verify, state_file=state_file, fsync=fsync,
                      axis=vocab_axis)
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


def _decide(report, name, dst, how, es, et, on_mismatch, vocab, axis) -> Op:
    """One matched tensor: its Op, with the report updated."""
    s_type, t_type = dtypes.name_of(es.dtype), dtypes.name_of(et.dtype)
    mismatch = {"src": name, "dst": dst, "src_shape": list(es.shape), "dst_shape": list(et.shape)}
    if es.dtype != et.dtype:
        if not (s_type in FLOATING and t_type in FLOATING):
            why = f"{name!r} is {s_type}, template tensor {dst!r} is {t_type}: only floating dtypes are cast"
            report.mismatched.append({**mismatch, "action": "error"})
            report.errors.append((dst, why))
            return Op("keep", dst)
        report.cast.append({"src": name, "dst": dst, "src_dtype": s_type, "dst_dtype": t_type})
    if vocab is not None:
        _check_vocab(name, dst, es.shape, et.shape, vocab, axis)
        old, new, vocab_name = vocab
        moved = len(set(old[:es.shape[axis]]) & set(new))
        report.matched.append({"src": name, "dst": dst, "how": how})
        report.remapped.append({"src": name, "dst": dst, "vocab": vocab_name, "moved": moved, "new": len(new) - moved})
        return Op("vocab", dst, name, et.dtype, vocab)
    if es.shape != et.shape:
        action = on_mismatch
        if action == "slice" and len(es.shape) != len(et.shape):
            action = "error"
        why = (f"{name!r} has shape {list(es.shape)}, template tensor {dst!r} has shape {list(et.shape)}"
               + (" (ranks differ: cannot slice)" if on_mismatch == "slice" else ""))
        report.mismatched.append({**mismatch, "action": action})
        if action == "error":
            report.errors.append((dst, why))
        return Op("slice", dst, name, et.dtype) if action == "slice" else Op("keep", dst)
    report.matched.append({"src": name, "dst": dst, "how": how})
    if es.slices != et.slices:  # partitioned differently: re-cut in memory
        return Op("layout", dst, name, et.dtype)
    return Op("copy", dst, name, et.dtype)


def _check_vocab(name, dst, src_shape, dst_shape, vocab, axis) -> None:
    """Refuse a remap that cannot be done, before anything is written."""
    old, new, vocab_name = vocab
    if len(src_shape) <= axis or len(dst_shape) <= axis:
        raise PlanError(f"--vocab {vocab_name}: {dst!r} has rank {len(dst_shape)}, no axis {axis}", key=dst)
    if _without(src_shape, axis) != _without(dst_shape, axis):
        raise MismatchError(f"--vocab {vocab_name}: {name!r} {list(src_shape)} and {dst!r} {list(dst_shape)} "
                            f"differ beyond axis {axis}", key=dst)
    if len(old) > src_shape[axis] or len(new) > dst_shape[axis]:
        raise PlanError(f"--vocab {vocab_name}: {len(old)} old and {len(new)} new tokens, but {name!r} has "
                        f"{src_shape[axis]} and {dst!r} {dst_shape[axis]} entries along axis {axis}", key=dst)


def _vocab_targets(vs, vt, source_of: dict, vocabularies: dict) -> dict[str, tuple]:
    """template key -> (old tokens, new tokens, vocabulary name) for each remapped tensor and its slots."""
    out = {}
    for name, tokens in vocabularies.items():
        keys = vt.find(name)
        if not keys:  # a source name: the template tensor it matched
            keys = sorted({dst for dst, (s, _) in source_of.items() if s in vs.find(name)})
        if len(keys) != 1:
            raise PlanError(f"--vocab {name}: names {'no' if not keys else len(keys)} template tensors"
                            + (f" ({', '.join(keys[:3])})" if keys else ""), key=name)
        if keys[0] not in source_of:
            raise PlanError(f"--vocab {name}: no source tensor matches template tensor {keys[0]!r}", key=name)
        out[keys[0]] = tokens + (name,)
    for dst, t in vt.tensors.items():  # optimizer slots of a remapped variable move with it
        if t.slot_of is not None and t.slot_of[0] in out and dst in source_of:
            out[dst] = out[t.slot_of[0]]
    return out


# -- writing ----------------------------------------------------------------------------------------

def write(cs, ct, ops: list[Op], out: str, *, force=False, verify=True, state_file=True, fsync=False,
          axis: int = 0) -> None:
    """Write the planned checkpoint atomically: copies first (in source order), then built tensors, then the graph."""
    from .bundle.writer import BundleWriter
    from .rewrite import _write_piece, tensor_pieces

    copies, built, metadata = [], [], {}
    for op in ops:
        if op.kind in ("copy", "keep"):
            ckpt = cs if op.kind == "copy" else ct
            dtype = op.dtype if op.kind == "copy" else ct.entries()[op.dst].dtype
            pieces, meta = tensor_pieces(ckpt, op.src or op.dst, op.dst, dtype)
            copies += [(ckpt is ct, p) for p in pieces]
            if meta is not None:
                metadata[op.dst] = meta
        else:
            built.append(op)
    copies.sort(key=lambda c: (c[0], c[1].src_entry.shard_id, c[1].src_entry.offset, c[1].key))
    with BundleWriter(out, 1, force=force, inputs=[cs.located, ct.located]) as writer:
        for from_template, piece in copies:
            _write_piece(ct if from_template else cs, writer, piece, 0, verify)
        for op in built:
            target, source = ct[op.dst], cs[op.src]
            if op.kind == "slice" and _streamable(target) and _streamable(source):
                writer.add_bytes(op.dst, target.entry.dtype, target.shape, _corner_chunks(source, target), 0)
            else:
                _write_built(writer, target, _build(cs, ct, op, axis))
        for name, meta in metadata.items():
            writer.add_entry(name, meta)
        graph = ct.object_graph_bytes
        if graph is not None:
            import numpy as np

            value = np.empty((), dtype=object)
            value[()] = graph
            writer.add_array(naming.OBJECT_GRAPH_KEY, value, 0)
        writer.finish(state_file=state_file, fsync=fsync)


CHUNK_BYTES = 8 << 20


def _streamable(t) -> bool:
    """Unsliced and fixed-width: iter_chunks then yields rows a chunk at a time."""
    info = t.entry.dtype_info
    return not t.slices and info is not None and info.fixed_width and len(t.shape) >= 1


def _corner_chunks(source, target):
    """The template's rows with the source's overlapping corner over them, as stored bytes, a chunk at a time."""
    import numpy as np

    from .bundle.decode import to_bytes

    info = target.entry.dtype_info
    overlap = min(source.shape[0], target.shape[0])
    inner = tuple(slice(0, min(a, b)) for a, b in zip(source.shape[1:], target.shape[1:]))
    rows = _take_rows(source.iter_chunks(CHUNK_BYTES))
    done = 0
    for chunk in target.iter_chunks(CHUNK_BYTES):
        n = max(0, min(len(chunk), overlap - done))
        if n:
            chunk = np.array(chunk)  # writable
            chunk[(slice(0, n),) + inner] = rows(n)[(slice(None),) + inner]
        done += len(chunk)
        yield to_bytes(chunk, info)


def _take_rows(chunks):
    """take(n): the next n rows of a stream of row chunks."""
    import numpy as np

    pending = []

    def take(n: int):
        have = sum(len(p) for p in pending)
        while have < n:
            piece = next(chunks)
            pending.append(piece)
            have += len(piece)
        joined = pending[0] if len(pending) == 1 else np.concatenate(pending)
        pending[:] = [joined[n:]] if len(joined) > n else []
        return joined[:n]

    return take


def _build(cs, ct, op: Op, axis: int):
    """The full value of a tensor built in memory: the template's, with the source's rows or corner over it."""
    import numpy as np

    target = ct[op.dst]
    source = cs[op.src].read().astype(target.dtype, copy=False)
    if op.kind == "layout":
        return source
    value = np.array(target.read())
    if op.kind == "slice":
        corner = tuple(slice(0, min(a, b)) for a, b in zip(source.shape, value.shape))
        value[corner] = source[corner]
        return value
    old, new, _ = op.vocab  # checked against the shapes when planned
    where = {t: i for i, t in enumerate(old)}
    moved = [(j, where[t]) for j, t in enumerate(new) if t in where]
    if moved:
        to, frm = (np.array(x, dtype=np.int64) for x in zip(*moved))
        index = (slice(None),) * axis + (to,)
        value[index] = np.take(source, frm, axis=axis)
    return value


def _without(shape, axis: int) -> tuple:
    return tuple(d for i, d in enumerate(shape) if i != axis)


def _write_built(writer, target, value) -> None:
    """Write a built value under the template tensor's name, cut into the template's slices if it has any."""
    from .bundle.entry import Entry
    from .bundle.slices import encode_key as slice_key

    entry = target.entry
    if not entry.slices:
        writer.add_array(target.name, value, 0, dtype=entry.dtype)
        return
    for s in entry.slices:
        index = tuple(slice(a, b) for a, b in s.bounds(entry.shape))
        writer.add_array(slice_key(naming.encode_key(target.name), s), value[index], 0, dtype=entry.dtype)
    writer.add_entry(target.name, Entry(entry.dtype, entry.shape, slices=entry.slices))
