"""plan_merge: a merge as a plan whose shards any runner executes (plan.py's run_plan and commit_plan).

The layout is merge's: the first input's rewrite plan (optimizer stripped unless kept), its
pieces in order, cut into shards by rewrite's rule (single-process merge writes them all into one
shard; with --shards N the plan writes what `merge` and then `rewrite --shards N` would). A
combined piece's step lists the same byte range of every operand; any other piece is copied from
the input merge copies it from. A task rebuilds merge's Job from the recorded options (which checks
again that the inputs agree) and combines its shards' pieces through merge_stream's Pipeline.
Slerp's per-tensor angles are computed by the task that writes the tensor, over all its pieces.
"""

from __future__ import annotations

import os

from .plan import build_plan, check_local, check_v2, copy_step, fingerprint, out_path, store_of


def plan_merge(
    inputs,
    dst,
    *,
    method: str = "mean",
    weights=None,
    decay=None,
    base=None,
    last: int | None = None,
    include=(),
    exclude=(),
    keep_optimizer: bool = False,
    num_shards: int | None = 1,
    max_shard_size: int | None = None,
    force: bool = False,
    fsync: bool = False,
):
    """(plan, MergeReport) for merge(inputs, dst, ...) with the same options; reads no tensor bytes."""
    from .bundle.paths import refuse_saved_model_output
    from .bundle.writer import check_output
    from .checkpoint import Checkpoint
    from .errors import PlanError
    from .merge import Job, _check_options, _open
    from .merge_inputs import newest, step_order
    from .merge_job import directory_of
    from .rewrite_plan import _assign_shards

    if isinstance(inputs, (str, os.PathLike, Checkpoint)):
        inputs = [inputs]
    inputs = list(inputs)
    if last is not None:
        if len(inputs) != 1 or isinstance(inputs[0], Checkpoint):
            raise PlanError("--last N takes one directory")
        inputs = newest(inputs[0], last)
    weights = _check_options(method, len(inputs), weights, decay, base)
    decay = None if decay is None else float(decay)
    check_local(*inputs, base, dst)
    out = out_path(dst)
    refuse_saved_model_output(out)
    opened: list[Checkpoint] = []
    try:
        ckpts = [_open(p, opened) for p in inputs]
        base_ckpt = None if base is None else _open(base, opened)
        for c in ckpts + [base_ckpt]:
            if c is not None:
                check_v2(c)
        order = "as given"
        if method == "ema":
            ckpts, order = step_order(ckpts)
        job = Job(method, ckpts, base_ckpt, weights, decay, include, exclude, keep_optimizer)
        report = job.report(out, False, order)
        check_output(out, store=store_of(out), force=force, inputs=[c.located for c in job.all])
        index = {id(c): i for i, c in enumerate(job.all)}
        combined = set(job.combined)
        copy = copy_step(index[id(job.keep_from)])

        def step_of(piece):
            if piece.name not in combined:
                return copy(job._piece_in(job.keep_from, piece))
            sources = []
            for ckpt in job.operands:
                p = job._piece_in(ckpt, piece)
                e = p.src_entry
                sources.append([index[id(ckpt)], p.src_name, e.shard_id, e.offset, e.size])
            return {
                "op": "combine",
                "key": piece.key.hex(),
                "name": piece.name,
                "out_dtype": piece.out_dtype,
                "slice": None if piece.slice is None else piece.slice.spec(),
                "sources": sources,  # [input, stored name, data shard, offset, size] per operand, in operand order
            }, None

        # As merge: the output's directory may be a training run's own (an input's), whose state file stays.
        own_state = all(directory_of(c.prefix) != directory_of(out) for c in job.all)
        plan = build_plan(
            "merge",
            out,
            _assign_shards(job.plan.pieces, num_shards, max_shard_size),
            inputs=[fingerprint(c) for c in job.all],
            options=dict(force=force, verify=True, fsync=fsync, state_file=own_state, make_latest=False),
            graph=job.plan.graph,
            metadata=job.plan.metadata,
            step_of=step_of,
            merge={
                "method": method,
                "weights": weights,
                "decay": decay,
                "n_inputs": len(ckpts),
                "base": base_ckpt is not None,
                "include": list(include),
                "exclude": list(exclude),
                "keep_optimizer": keep_optimizer,
                "order": order,
            },
            kept=[[i.src, i.dst] for i in job.plan.items],
            dropped=list(job.plan.dropped),
        )
        return plan, report
    finally:
        for c in opened:
            c.close()
