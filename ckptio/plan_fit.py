"""plan_fit: a fit as a plan whose shards any runner executes (plan.py's run_plan and commit_plan).

The layout is fit.layout's, the one fit() writes: copies from the source or the template in
source order, then built tensors (sliced, remapped to a new vocabulary or re-cut), shards cut by
rewrite's rule, the template's object graph last. A copy step names its input (0 the source, 1 the
template); a build step names the template piece it replaces and the source tensor it reads, and
carries what fit's _write_built needs (kind, slice extents, vocabulary name). The vocabularies are
stored once in the plan, so a task needs no vocabulary file.
"""

from __future__ import annotations

import os

from .bundle import dtypes
from .errors import UnsupportedError
from .plan import _b64, build_plan, check_local, check_v2, copy_step, fingerprint, out_path, store_of


def plan_fit(
    src,
    template,
    dst,
    *,
    rules=None,
    regex: bool = False,
    on_mismatch: str = "error",
    vocab=None,
    vocab_axis: int = 0,
    num_shards: int | None = 1,
    max_shard_size: int | None = None,
    force: bool = False,
    verify: bool = True,
    fsync: bool = False,
    state_file: bool = True,
):
    """(plan, FitReport) for fit(src, template, dst, ...) with the same options; reads no tensor bytes."""
    from .bundle.paths import refuse_saved_model_output
    from .bundle.writer import check_output
    from .checkpoint import Checkpoint
    from .errors import PlanError
    from .fit import _rules, _tokens, layout, mismatch_error, plan, refuse_if_nothing_matched
    from .fit_decide import ON_MISMATCH
    from .formats.keras_fit import is_keras_template

    if on_mismatch not in ON_MISMATCH:
        raise PlanError(f"on_mismatch must be one of {', '.join(ON_MISMATCH)}, not {on_mismatch!r}")
    if vocab_axis not in (0, 1):
        raise PlanError(f"vocab_axis must be 0 or 1, not {vocab_axis!r}")
    if is_keras_template(template):
        raise UnsupportedError("plans write TensorBundle checkpoints; a .weights.h5 template is fit in one process")
    check_local(src, template, dst)
    out = out_path(dst)
    refuse_saved_model_output(out)
    rules = _rules(rules, regex)
    vocabularies = {name: (_tokens(old), _tokens(new)) for name, (old, new) in (vocab or {}).items()}
    opened: list[Checkpoint] = []
    try:
        cs, ct = (c if isinstance(c, Checkpoint) else _open(c, opened) for c in (src, template))
        check_v2(cs)
        check_v2(ct)
        check_output(out, store=store_of(out), force=force, inputs=[cs.located, ct.located])
        report, ops = plan(cs, ct, rules, on_mismatch, vocabularies, vocab_axis)
        report.dst = os.fspath(dst)
        if report.errors:
            raise mismatch_error(report, "tensor")
        refuse_if_nothing_matched(report)
        groups, origin, metadata = layout(cs, ct, ops, num_shards, max_shard_size)
        steps = {id(cs): copy_step(0), id(ct): copy_step(1)}
        # Each vocabulary once, however many tensors (a variable and its slots) move with it.
        used = {op.vocab[2]: [list(op.vocab[0]), list(op.vocab[1])] for op in ops if op.vocab is not None}

        def step_of(piece):
            ckpt, op = origin[piece.key]
            if op.kind in ("copy", "keep"):
                return steps[id(ckpt)](piece)
            if not dtypes.lookup(piece.out_dtype).fixed_width:
                # A built string tensor's size is known only once written; the plan fixes every offset first.
                raise UnsupportedError(
                    "a fit plan cannot rebuild a string tensor (sliced, remapped or re-cut); run fit itself",
                    key=op.dst,
                )
            return {
                "op": "build",
                "kind": op.kind,
                "key": piece.key.hex(),
                "name": op.dst,
                "src_name": op.dst,  # the template piece it replaces (its entry gives shape and slice)
                "source": op.src,
                "src_entry": _b64(piece.src_entry.encode()),
                "out_dtype": piece.out_dtype,
                "slice": None if piece.slice is None else piece.slice.spec(),
                "extents": None if piece.slice is None else [list(e) for e in piece.slice.extents],
                "vocab": None if op.vocab is None else op.vocab[2],
            }, None

        result = build_plan(
            "fit",
            out,
            groups,
            inputs=[fingerprint(cs), fingerprint(ct)],
            options=dict(force=force, verify=verify, fsync=fsync, state_file=state_file, make_latest=False),
            graph=ct.object_graph_bytes,
            metadata=metadata,
            step_of=step_of,
            fit={"axis": vocab_axis, "vocab": used},
            kept=[[m["src"], m["dst"]] for m in report.matched],
            dropped=list(report.source_only),
        )
        return result, report
    finally:
        for c in opened:
            c.close()


def _open(path, opened: list):
    from .sources import open as open_checkpoint

    ckpt = open_checkpoint(path)
    opened.append(ckpt)
    return ckpt
