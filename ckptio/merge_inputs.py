"""Choosing and checking the inputs of a merge: --last N, step order for ema, agreement of every tensor."""

from __future__ import annotations

import os
import re

from .bundle import dtypes
from .checkpoint import Checkpoint
from .errors import CheckpointNotFoundError, MismatchError, PlanError

# Integer step counters, in the order tried, that put the inputs of an EMA in step order.
STEP_KEYS = (
    "global_step",
    "global_step/.ATTRIBUTES/VARIABLE_VALUE",
    "step/.ATTRIBUTES/VARIABLE_VALUE",
    "save_counter/.ATTRIBUTES/VARIABLE_VALUE",
)


def newest(directory, n: int) -> list[str]:
    """The n newest checkpoints a directory's `checkpoint` state file lists (oldest of them first)."""
    from .bundle.state import listed

    directory = os.fspath(directory)
    if n < 1:
        raise PlanError(f"--last needs N >= 1, not {n}")
    if not os.path.isfile(os.path.join(directory, "checkpoint")):
        raise PlanError(
            f"--last N needs a directory with a 'checkpoint' state file; {directory} has none", path=directory
        )
    rows = listed(directory)[0]
    present = [r.path for r in rows if r.path is not None]
    if len(present) < n:
        raise PlanError(
            f"the 'checkpoint' state file lists {len(present)} checkpoint(s) that exist; --last {n} needs {n}",
            path=directory,
        )
    missing = [r.stored for r in rows[-n:] if r.path is None]
    if missing:  # skipping it would quietly widen the window to an older checkpoint
        raise CheckpointNotFoundError(
            f"--last {n}: the 'checkpoint' state file lists {missing[-1]}, which does not "
            "exist; name the checkpoints to merge instead",
            path=directory,
        )
    return present[-n:]  # CheckpointManager and Saver list them oldest first


def _scalar_int(ckpt: Checkpoint, name: str) -> int | None:
    if name not in ckpt:
        return None
    t = ckpt[name]
    if not t.dtype_name.startswith(("int", "uint")) or t.size != 1 or t.slices:
        return None
    return int(t.read().reshape(-1)[0])


def step_order(ckpts: list[Checkpoint]) -> tuple[list[Checkpoint], str]:
    """Inputs sorted by a step counter they all have (distinct values), else by their prefix's -N."""
    for key in STEP_KEYS:
        steps = [s for c in ckpts if (s := _scalar_int(c, key)) is not None]
        if len(steps) == len(ckpts) and len(set(steps)) == len(steps):
            return [c for _, c in sorted(zip(steps, ckpts), key=lambda p: p[0])], f"by {key}"
    numbers = [int(m[1]) for c in ckpts if (m := re.search(r"-(\d+)$", c.prefix))]
    if len(numbers) == len(ckpts) and len(set(numbers)) == len(numbers):
        keyed = sorted(zip(numbers, range(len(ckpts))))
        return [ckpts[i] for _, i in keyed], "by the number ending each prefix"
    return ckpts, "as given (no step counter with distinct values in every input)"


def describe(entry) -> str:
    return f"{dtypes.name_of(entry.dtype)}{list(entry.shape)}"


def check_agree(first: Checkpoint, plan, other: Checkpoint, other_plan) -> None:
    """Raise MismatchError at the first tensor the two inputs do not agree on."""
    a, b = first.prefix, other.prefix
    hint = f"; `ckptio diff {a} {b}` shows every difference"
    if (plan.graph is None) != (other_plan.graph is None):
        kinds = ("object-based (TF2)", "name-based (TF1)")
        ka, kb = (kinds[0], kinds[1]) if plan.graph is not None else (kinds[1], kinds[0])
        raise MismatchError(f"{a} is {ka} but {b} is {kb}")
    what = "the object graphs differ: tensor" if plan.graph is not None else "tensor"
    # By output name: what TF restores by (a TF2 key is its object's path in the graph).
    mine = {i.dst: i.src for i in plan.items}
    theirs = {i.dst: i.src for i in other_plan.items}
    ea, eb = first.entries(), other.entries()
    for name in sorted(set(mine) | set(theirs)):
        if name not in theirs:
            raise MismatchError(f"{what} {name!r} is in {a} but not in {b}{hint}", key=name)
        if name not in mine:
            raise MismatchError(f"{what} {name!r} is in {b} but not in {a}{hint}", key=name)
        x, y = ea[mine[name]], eb[theirs[name]]
        if (x.dtype, x.shape) != (y.dtype, y.shape):
            raise MismatchError(f"{describe(x)} in {a} but {describe(y)} in {b}{hint}", key=name)
        if x.slices != y.slices:
            raise MismatchError(f"partitioned into different slices in {a} and {b}{hint}", key=name)
