"""Rewrite many checkpoints into one output directory, in worker processes, resumably."""

from __future__ import annotations

import glob
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from .bundle import naming
from .bundle.paths import is_other_file
from .bundle.state import listed, record_outputs, state_path
from .errors import CheckpointNotFoundError, CkptioError
from .store import is_url


@dataclass(slots=True)
class Outcome:
    """One input's result in a batch."""

    src: str
    dst: str
    status: str  # "ok", "skipped" (complete output exists), "unfinished" (a save in progress) or "failed"
    message: str = ""
    kept: int = 0
    dropped: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class Input:
    """One batch input: a path, its timestamp (and field 4) if a state file lists it, or why it is unusable.

    error: the one-line reason; kind: the CkptioError class expand_inputs raises for it.
    """

    path: str
    timestamp: float | None = None
    last_preserved: float | None = None
    error: str | None = None
    kind: type[CkptioError] | None = None


def gather_inputs(args: list[str]) -> list[Input]:
    """Paths, globs, and directories (every checkpoint their state file lists) -> inputs, in order.

    A bad argument (a glob matching nothing, an unreadable state file, a listed checkpoint that is
    gone) becomes an Input with an error: it fails its own row, not the batch.
    """
    out: list[Input] = []
    for arg in args:
        matches = sorted(glob.glob(arg)) if glob.has_magic(arg) else [arg]
        if not matches:
            out.append(Input(arg, error="glob matches nothing"))
        elif len(matches) > 1 or matches[0] != arg:  # 'run/*' meets the state file, .meta ...: not inputs
            matches = [m for m in matches if not is_other_file(m)]
            if not matches:
                out.append(Input(arg, error="glob matches no checkpoint (only state, .meta or other files)"))
        for m in matches:
            if m.endswith(".index"):
                m = m[: -len(".index")]
            elif naming.split_data_path(m):
                continue  # a data shard of a prefix listed via its .index
            if os.path.isdir(m) and os.path.isfile(state_path(m)):
                out.extend(_listed_in_state(m))
            else:
                out.append(Input(m))
    seen, unique = set(), []
    for i in out:
        key = os.path.abspath(i.path)
        if key not in seen:
            seen.add(key)
            unique.append(i)
    return unique


def expand_inputs(args: list[str]) -> list[str]:
    """gather_inputs() as paths; the first bad argument raises CheckpointNotFoundError."""
    inputs = gather_inputs(args)
    bad = next((i for i in inputs if i.error), None)
    if bad is not None:
        raise (bad.kind or CheckpointNotFoundError)(str(bad.error), path=bad.path)
    return [i.path for i in inputs]


def _listed_in_state(directory: str) -> list[Input]:
    try:
        rows, state = listed(directory)
    except CkptioError as exc:
        return [Input(directory, error=exc.message, kind=type(exc))]
    return [
        Input(r.path, r.timestamp, state.last_preserved)
        if r.path is not None
        else Input(
            os.path.join(directory, r.stored) if not os.path.isabs(r.stored) else r.stored,
            error=f"listed in {state_path(directory)} but not there (deleted?)",
        )
        for r in rows
    ]


def unfinished(prefix: str) -> str | None:
    """Why prefix looks like a save still being written (TF's async or sharded save), or None.

    TF writes each shard as <prefix>_temp/part-*, merges them into <prefix>.data-* and
    <prefix>.index, removes the temp directory, and only then updates the state file.
    """
    if os.path.basename(os.path.normpath(prefix)).endswith("_temp") and os.path.isdir(prefix):
        return "a save's temporary parts, not a checkpoint"
    if os.path.exists(naming.index_path(prefix)):
        # Every TF writer renames complete data files into place before it writes the index (a
        # _temp/ left behind by a finished merge does not matter): with the index there, a missing
        # or short data file is damage, which the rewrite reports as a failure, not a save to wait for.
        return None
    if os.path.isfile(prefix) or glob.has_magic(prefix) or os.path.isdir(prefix):
        return None  # V1 files, shard patterns and directories: complete when written
    temps = glob.glob(glob.escape(prefix) + "_temp*") + glob.glob(glob.escape(prefix) + ".part-*")
    if temps:
        return f"save still in progress ({os.path.basename(temps[0])} present, .index not yet written)"
    if glob.glob(glob.escape(prefix) + ".data-?????-of-?????"):
        return "save still in progress (data files present, .index not yet written)"
    return None  # not a checkpoint at all: the rewrite says what it is


def output_prefixes(inputs: list[str], out_dir: str) -> list[str]:
    """DIR/<basename>, with the parent directory's name added where basenames collide."""
    bases = [os.path.basename(os.path.normpath(p)) for p in inputs]
    out = []
    for p, b in zip(inputs, bases):
        if bases.count(b) > 1:
            parent = os.path.basename(os.path.dirname(os.path.abspath(p))) or "root"
            b = f"{parent}_{b}"
        out.append(os.path.join(out_dir, b))
    if len(set(out)) != len(out):
        from .errors import PlanError

        raise PlanError("several inputs would be written to the same output name; rewrite them separately")
    return out


def is_complete(prefix: str) -> bool:
    """An output that exists and opens (index and every shard present)."""
    if not os.path.exists(naming.index_path(prefix)):
        return False
    try:
        from .checkpoint import Checkpoint

        with Checkpoint(prefix) as ckpt:
            return all(os.path.exists(path) for path, _ in ckpt.reader.files())
    except CkptioError:
        return False


def _one(job) -> Outcome:
    src, dst, steps, options = job
    from .rewrite import rewrite

    try:
        report = rewrite(src, dst, steps, **options)
    except (CkptioError, OSError) as exc:  # one input's problem fails its row only; rows are shown by the CLI
        return Outcome(
            src,
            dst,
            "failed",
            exc.describe(flags=True)
            if isinstance(exc, CkptioError)
            else f"{exc.filename or src}: {exc.strerror or exc}",
        )
    return Outcome(
        src,
        dst,
        "ok",
        "",
        len(report.kept),
        len(report.dropped),
        report.bytes_before,
        report.bytes_after,
        report.seconds,
    )


def _ignore_sigint() -> None:
    """Workers leave Ctrl-C to the parent, which reports it once and exits 130."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


class BatchResult(list):
    """The outcomes, in input order; state_file says what happened to out_dir's `checkpoint` file."""

    state_file: str | None = None


def run_batch(
    inputs,
    out_dir: str,
    steps,
    *,
    jobs: int = 1,
    resume: bool = True,
    on_done=None,
    state_file: bool = True,
    make_latest: bool = False,
    map_jobs=None,
    **options,
) -> BatchResult:
    """Rewrite each input (a path or an Input) into out_dir; returns the outcomes in input order.

    Skipped: inputs whose complete output exists (when resuming) and saves still being written
    ("unfinished"). Inputs with an error fail their own row. Then out_dir's state file lists every
    complete output in input order with the input's timestamps, so a CheckpointManager on out_dir
    manages them (bundle/state.py says when an existing state file is changed).
    map_jobs(fn, jobs), when given, runs the jobs elsewhere (e.g. on Ray) and returns their outcomes.
    """
    from .io import take_late_interrupt

    take_late_interrupt()  # one held back before this batch (an earlier rewrite) is not this batch's
    items = [i if isinstance(i, Input) else Input(os.fspath(i)) for i in inputs]
    outputs = output_prefixes([i.path for i in items], out_dir)
    todo, results = [], {}

    def done(outcome: Outcome) -> None:
        results[outcome.src] = outcome
        if on_done:
            on_done(outcome)

    for item, dst in zip(items, outputs):
        src = item.path
        is_input = os.path.realpath(src) == os.path.realpath(dst)  # let rewrite() refuse it
        if item.error:
            done(Outcome(src, dst, "failed", item.error))
        elif (why := unfinished(src)) is not None:
            done(Outcome(src, dst, "unfinished", f"{why}; skipped (run again when the save has finished)"))
        elif resume and not options.get("force") and not is_input and is_complete(dst):
            done(Outcome(src, dst, "skipped", "complete output exists"))
        else:
            # An output left incomplete (resuming) or to be redone (--no-resume) is replaced.
            redo = not is_input and os.path.exists(naming.index_path(dst))
            job_options = {**options, "force": True} if redo else dict(options)
            todo.append((src, dst, tuple(steps), {**job_options, "state_file": False}))
    if map_jobs is not None and todo:
        for outcome in map_jobs(_one, todo):
            done(outcome)
    elif jobs > 1 and len(todo) > 1:
        with ProcessPoolExecutor(max_workers=jobs, initializer=_ignore_sigint) as pool:
            for outcome in pool.map(_one, todo):
                done(outcome)
    else:
        for job in todo:
            done(_one(job))
            if take_late_interrupt():  # Ctrl-C held back while that output was committed
                raise KeyboardInterrupt
    result = BatchResult(results[i.path] for i in items)
    if state_file and not options.get("dry_run"):
        result.state_file = _record_batch_state(out_dir, items, result, make_latest)
    return result


def _record_batch_state(out_dir: str, items: list[Input], outcomes, make_latest: bool) -> str | None:
    """List the complete outputs in out_dir's state file, oldest first, with the inputs' timestamps."""
    import warnings

    from .errors import StateFileWarning

    complete = [(o.dst, i) for i, o in zip(items, outcomes) if o.status in ("ok", "skipped")]
    if not complete:
        return None
    stamped = [i.last_preserved for _, i in complete if i.timestamp is not None and i.last_preserved is not None]
    try:
        if is_url(out_dir):  # through the store, in the order listed (the last one latest where ours)
            from .bundle.state import record_output
            from .store import for_path

            store = for_path(out_dir)[0]
            answers = [record_output(store, dst, make_latest=make_latest) for dst, _ in complete]
            return "written" if "written" in answers else "left"
        return record_outputs(
            out_dir,
            [(dst, i.timestamp) for dst, i in complete],
            make_latest=make_latest,
            last_preserved=min(stamped) if stamped else None,
        )
    except (CkptioError, OSError) as exc:  # every output is complete: the state file alone is missing
        warnings.warn(
            StateFileWarning(f"{state_path(out_dir)} was not updated ({exc}); the outputs are complete"), stacklevel=2
        )
        return f"failed: {exc}"
