"""merge(inputs, dst, method=...): average, weigh or blend checkpoints tensor by tensor, streamed.

The first input's rewrite plan (ckptio.rewrite.make_plan, with the optimizer stripped unless kept)
lays out the output; every other input must plan to the same names, dtypes, shapes and slicing.
Floating tensors are combined chunk by chunk (ckptio.merge_math); every other tensor (integer
counters such as global_step, strings, bools) is copied from the last input, or from the base for
task-arithmetic. A TF2 checkpoint keeps the first input's object graph. The output goes through
the bundle writer: data first, the index last, renamed into place only when complete.
This module checks the options and opens the inputs; ckptio.merge_job plans, combines and writes.
"""

from __future__ import annotations

import math
import os
import time

from . import merge_math as mm
from . import merge_stream as ms
from .checkpoint import Checkpoint
from .errors import PlanError, UnsupportedError
from .merge_inputs import newest, step_order
from .merge_job import Job, MergeReport
from .store import is_archive

__all__ = ["Job", "MergeReport", "merge"]  # Job and MergeReport live in ckptio.merge_job; old imports keep working


# -- options -------------------------------------------------------------------------------------


def _check_options(method, n_inputs, weights, decay, base) -> list[float] | None:
    """Refuse options that do not fit the method (before anything is opened); the weights as floats."""
    if method not in mm.METHODS:
        raise PlanError(f"method must be one of {', '.join(mm.METHODS)}, not {method!r}")
    if base is not None and method != "task-arithmetic":
        raise PlanError("--base is for --method task-arithmetic only")
    if decay is not None and method != "ema":
        raise PlanError("--decay is for --method ema only")
    weights = None if weights is None else [float(w) for w in weights]
    if weights is not None and not all(math.isfinite(w) for w in weights):
        raise PlanError("weights must be finite numbers")
    if method == "mean" and weights is not None:
        raise PlanError("mean takes no weights; use --method weighted")
    if method == "ema":
        if weights is not None:
            raise PlanError("ema takes --decay D, not weights")
        if decay is None or not 0.0 <= float(decay) < 1.0:
            raise PlanError("ema needs --decay D with 0 <= D < 1")
    if method == "task-arithmetic":
        if base is None:
            raise PlanError("task-arithmetic needs --base CKPT (the model the inputs were fine-tuned from)")
        if n_inputs < 1:
            raise PlanError("task-arithmetic needs at least one input besides --base")
    elif n_inputs < 2:
        raise PlanError(f"{method} needs at least two inputs, got {n_inputs}")
    if method == "slerp":
        if n_inputs != 2:
            raise PlanError(f"slerp blends exactly two inputs, got {n_inputs}")
        if weights is None or len(weights) != 1 or not 0.0 <= weights[0] <= 1.0:
            raise PlanError("slerp needs --weights T, one number with 0 <= T <= 1")
        return weights
    if method == "weighted" and weights is None:
        raise PlanError("weighted needs --weights W1,W2,... (one per input)")
    if weights is not None and len(weights) != n_inputs:
        raise PlanError(f"{len(weights)} weights for {n_inputs} inputs")
    if method == "weighted":
        if any(w < 0 for w in weights) or not math.fsum(weights) > 0:
            raise PlanError(
                "weighted needs weights >= 0 with a positive sum (for other blends use --method task-arithmetic)"
            )
    return weights


# -- the API ---------------------------------------------------------------------------------------


def merge(
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
    force: bool = False,
    dry_run: bool = False,
    progress=None,
    fsync: bool = False,
    threads: int | None = None,
) -> MergeReport:
    """Combine checkpoints into a new one at dst (a local prefix, a URL or a .tar.zst); returns a MergeReport.

    inputs: paths (any form ckptio.open takes) or open Checkpoints; with last=N, one directory
    whose `checkpoint` state file lists them. See ckptio.merge_math for each method's rule.
    threads: how many threads combine chunks (default one per core, at most 4); the result is
    the same bytes whatever the number.
    """
    started = time.perf_counter()
    if isinstance(inputs, (str, os.PathLike, Checkpoint)):
        inputs = [inputs]
    inputs = list(inputs)
    if last is not None:
        if len(inputs) != 1 or isinstance(inputs[0], Checkpoint):
            raise PlanError("--last N takes one directory")
        inputs = newest(inputs[0], last)
    weights = _check_options(method, len(inputs), weights, decay, base)
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise PlanError(f"threads must be a whole number >= 1, not {threads!r}")
    decay = None if decay is None else float(decay)
    if dst is not None:
        from .formats import kind_of
        from .store import local_path

        dst = local_path(os.fspath(dst))  # file:// is a local path written as a URL
        if kind_of(dst) and not dry_run:
            raise UnsupportedError(
                "merge writes a TensorFlow checkpoint (a prefix, a URL or a .tar.zst); convert it afterwards "
                "with `ckptio rewrite OUT FILE`",
                path=dst,
            )
    opened: list[Checkpoint] = []
    try:
        ckpts = [_open(p, opened) for p in inputs]
        base_ckpt = None if base is None else _open(base, opened)
        order = "as given"
        if method == "ema":
            ckpts, order = step_order(ckpts)
        job = Job(method, ckpts, base_ckpt, weights, decay, include, exclude, keep_optimizer)
        store, prefix = None, dst
        if dst is not None:
            from .bundle.writer import check_output, output_store

            # A URL or a .tar.zst is written through its store (as model.ckpt in a URL directory or
            # the archive); a local prefix as before.
            store, prefix = output_store(dst, force=force)
            check_output(prefix, force=force, inputs=[c.located for c in job.all], store=store)
        report = job.report(dst if dst is None or is_archive(dst) else prefix, dry_run, order)
        if not dry_run:
            job.execute(
                prefix,
                report,
                store=store,
                force=force,
                progress=progress,
                fsync=fsync,
                threads=threads or ms.default_threads(),
            )
        report.bytes_read = sum(c.bytes_read for c in job.all)
        report.seconds = time.perf_counter() - started
        return report
    finally:
        for c in opened:
            c.close()


def _open(path, opened: list) -> Checkpoint:
    if isinstance(path, Checkpoint):
        return path
    from .sources import open as open_checkpoint

    ckpt = open_checkpoint(path)
    opened.append(ckpt)
    return ckpt
