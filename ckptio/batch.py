"""Rewrite many checkpoints into one output directory, in worker processes, resumably."""
from __future__ import annotations

import glob
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from .bundle import naming
from .bundle.paths import latest_from_state
from .errors import CheckpointNotFoundError, CkptioError, WrongFileError


@dataclass
class Outcome:
    """One input's result in a batch."""

    src: str
    dst: str
    status: str  # "ok", "skipped" (complete output exists) or "failed"
    message: str = ""
    kept: int = 0
    dropped: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    seconds: float = 0.0


def expand_inputs(args: list[str]) -> list[str]:
    """Paths, globs, and directories (every checkpoint their state file lists) -> input paths."""
    out: list[str] = []
    for arg in args:
        matches = sorted(glob.glob(arg)) if glob.has_magic(arg) else [arg]
        if not matches:
            raise CheckpointNotFoundError("glob matches nothing", path=arg)
        for m in matches:
            if m.endswith(".index"):
                m = m[: -len(".index")]
            elif naming.split_data_path(m):
                continue  # a data shard of a prefix listed via its .index
            if os.path.isdir(m) and os.path.isfile(os.path.join(m, "checkpoint")):
                out.extend(_listed_in_state(m))
            else:
                out.append(m)
    seen, unique = set(), []
    for p in out:
        key = os.path.abspath(p)
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def _listed_in_state(directory: str) -> list[str]:
    from google.protobuf import text_format

    from ._proto.checkpoint_state_pb2 import CheckpointState

    state = CheckpointState()
    state_path = os.path.join(directory, "checkpoint")
    try:
        with open(state_path, encoding="utf-8") as f:
            text_format.Parse(f.read(), state)
    except (OSError, UnicodeDecodeError, text_format.ParseError) as exc:  # as latest_from_state does
        raise WrongFileError(f"cannot parse the 'checkpoint' state file ({exc})", path=state_path) from None
    paths = list(state.all_model_checkpoint_paths) or [state.model_checkpoint_path]
    out = []
    for p in paths:
        full = p if os.path.isabs(p) else os.path.join(directory, p)
        if not os.path.exists(naming.index_path(full)):
            full = os.path.join(directory, os.path.basename(p))
        if os.path.exists(naming.index_path(full)) or os.path.isfile(full):
            out.append(full)
    if not out:
        latest = latest_from_state(directory)
        if latest:
            out.append(latest)
    return out


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
            return all(os.path.exists(ckpt._reader.shard_path(i)) for i in range(ckpt.num_shards))
    except CkptioError:
        return False


def _one(job) -> Outcome:
    src, dst, steps, options = job
    from .rewrite import rewrite

    try:
        report = rewrite(src, dst, steps, **options)
    except CkptioError as exc:
        return Outcome(src, dst, "failed", exc.describe(flags=True))  # batch rows are shown by the CLI
    return Outcome(src, dst, "ok", "", len(report.kept), len(report.dropped), report.bytes_before,
                   report.bytes_after, report.seconds)


def _ignore_sigint() -> None:
    """Workers leave Ctrl-C to the parent, which reports it once and exits 130."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def run_batch(inputs: list[str], out_dir: str, steps, *, jobs: int = 1, resume: bool = True, on_done=None,
              map_jobs=None, **options) -> list[Outcome]:
    """Rewrite each input into out_dir; inputs whose complete output exists are skipped when resuming.

    map_jobs(fn, jobs), when given, runs the jobs elsewhere (e.g. on Ray) and returns their outcomes.
    """
    outputs = output_prefixes(inputs, out_dir)
    todo, results = [], {}
    for src, dst in zip(inputs, outputs):
        is_input = os.path.realpath(src) == os.path.realpath(dst)  # let rewrite() refuse it
        if resume and not options.get("force") and not is_input and is_complete(dst):
            results[src] = Outcome(src, dst, "skipped", "complete output exists")
            if on_done:
                on_done(results[src])
        else:
            # An output left incomplete (resuming) or to be redone (--no-resume) is replaced.
            redo = not is_input and os.path.exists(naming.index_path(dst))
            todo.append((src, dst, tuple(steps), {**options, "force": True} if redo else options))
    if map_jobs is not None and todo:
        for outcome in map_jobs(_one, todo):
            results[outcome.src] = outcome
            if on_done:
                on_done(outcome)
    elif jobs > 1 and len(todo) > 1:
        with ProcessPoolExecutor(max_workers=jobs, initializer=_ignore_sigint) as pool:
            for outcome in pool.map(_one, todo):
                results[outcome.src] = outcome
                if on_done:
                    on_done(outcome)
    else:
        for job in todo:
            outcome = _one(job)
            results[outcome.src] = outcome
            if on_done:
                on_done(outcome)
    return [results[s] for s in inputs]
