"""A rewrite, fit or merge split into independent tasks: plan once, run the output shards anywhere, commit once.

    plan = plan_rewrite(src, dst, steps, num_shards=4)   # nothing written to dst (plan_fit.py, plan_merge.py: the same)
    save_plan(plan, "plan.json")
    run_plan(plan, task=i, of=n)                         # each shard whose number is i mod n
    commit_plan(plan)                                    # index (merged fragments), state file

The plan is plain JSON: for every output shard, the source byte ranges it takes and what happens
to them (copy or cast, a renamed tensor having name != src_name; fit's build: the source sliced,
remapped to a new vocabulary or re-cut over the template's values; merge's combine of the same
ranges of every input), the data file's name and its index fragment; plus the sliced tensors'
metadata entries and the object graph. It names its inputs by path with the sha256 of each .index
and the size of every data file, so a task refuses to run against changed inputs. The layout is
the one the single-process command makes with the same options (make_plan and _assign_shards;
fit.layout; merge's Job), so the output is byte-identical to it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os

from .bundle import dtypes, naming
from .errors import PlanError, UnsupportedError
from .plan_exec import check_inputs, fingerprint  # noqa: F401 - check_inputs: part of this module's API

FORMAT = "ckptio-plan"
VERSION = 2  # 2: fit and merge plans; every step has its size
SUPPORTED = ("strip", "rename", "rewrite", "fit", "merge")


def plan_rewrite(
    src,
    dst,
    steps=(),
    *,
    num_shards: int | None = 1,
    max_shard_size: int | None = None,
    force: bool = False,
    verify: bool = True,
    fsync: bool = False,
    state_file: bool = True,
    make_latest: bool = False,
    command: str = "rewrite",
) -> dict:
    """The plan (a JSON-able dict) that writes src through steps to prefix dst; reads no tensor bytes."""
    from .bundle.paths import refuse_saved_model_output
    from .bundle.writer import check_output
    from .checkpoint import Checkpoint
    from .rewrite_plan import _assign_shards, make_plan

    check_local(src, dst)
    out = os.path.abspath(os.fspath(dst))
    refuse_saved_model_output(out)
    ckpt = src if isinstance(src, Checkpoint) else Checkpoint(src)
    try:
        check_v2(ckpt)
        check_output(out, force=force, inputs=[ckpt.located])
        rewrite_plan = make_plan(ckpt, steps)
        return build_plan(
            command,
            out,
            _assign_shards(rewrite_plan.pieces, num_shards, max_shard_size),
            inputs=[fingerprint(ckpt)],
            options=dict(force=force, verify=verify, fsync=fsync, state_file=state_file, make_latest=make_latest),
            graph=rewrite_plan.graph,
            metadata=rewrite_plan.metadata,
            step_of=copy_step(0),
            kept=[[i.src, i.dst] for i in rewrite_plan.items],
            dropped=rewrite_plan.dropped,
        )
    finally:
        if ckpt is not src:
            ckpt.close()


def build_plan(command: str, out: str, groups, *, inputs, options, graph, metadata, step_of, **extra) -> dict:
    """The plan of pieces grouped by output shard; step_of(piece) -> (its step, its output crc32c or None)."""
    shards = [
        _shard(out, i, len(groups), group, graph if i == len(groups) - 1 else None, step_of)
        for i, group in enumerate(groups)
    ]
    plan = {
        "format": FORMAT,
        "version": VERSION,
        "command": command,
        "out": out,
        "staging": staging_dir(out),
        "options": options,
        "inputs": inputs,
        "num_shards": len(groups),
        "shards": shards,
        "metadata": {
            k.hex(): _b64(e.encode()) for k, e in sorted((naming.encode_key(n), m) for n, m in metadata.items())
        },
        "graph": None if graph is None else _b64(graph),
        **extra,
    }
    plan["plan_id"] = plan_id(plan)
    return plan


def check_local(*paths) -> None:
    """Plans read and write local files: refuse archives and URLs (UnsupportedError)."""
    from .checkpoint import Checkpoint
    from .sources import is_special

    for path in paths:
        if path is not None and not isinstance(path, Checkpoint) and is_special(os.fspath(path)):
            raise UnsupportedError(
                "plans read and write local files only (not archives or URLs); run the command itself for these",
                path=os.fspath(path),
            )


def check_v2(ckpt) -> None:
    """Plans read little-endian V2 bundles, whose byte ranges tasks can read on their own."""
    if not ckpt.reader.copies_bytes:
        raise UnsupportedError(
            "plans take little-endian V2 bundles only; run the command itself for this input", path=ckpt.path
        )


def copy_step(input_index: int):
    """step_of for pieces copied (or cast) from one input: the step and, for a copy, the crc32c it keeps."""

    def step_of(p) -> tuple[dict, int | None]:
        e = p.src_entry
        op = "copy" if p.out_dtype == e.dtype else "cast"
        return {
            "op": op,
            "key": p.key.hex(),
            "name": p.name,
            "src_name": p.src_name,
            "input": input_index,
            "src_shard": e.shard_id,
            "src_offset": e.offset,
            "src_size": e.size,
            "src_entry": _b64(e.encode()),
            "out_dtype": p.out_dtype,
            "slice": None if p.slice is None else p.slice.spec(),
        }, (e.crc32c if op == "copy" else None)

    return step_of


def staging_dir(out: str) -> str:
    """Where tasks put finished shards: next to the output, so that commit renames, never copies."""
    directory, base = os.path.split(out)
    return os.path.join(directory, f".{base}.ckptio-plan")


def _shard(out: str, shard: int, num_shards: int, pieces, graph: bytes | None, step_of) -> dict:
    """One output shard: its pieces and the index fragment they make (crc32c None where only writing tells)."""
    offset, steps, fragment = 0, [], {}
    for p in pieces:
        step, crc = step_of(p)
        steps.append({**step, "size": p.size})
        fragment[p.key.hex()] = {
            "dtype": p.out_dtype,
            "shape": list(p.src_entry.shape),
            "offset": offset,
            "size": p.size,
            "crc32c": crc,
        }
        offset += p.size
    if graph is not None:  # the last shard ends with the graph, as rewrite writes it
        from .bundle import strings

        data, crc = strings.encode([graph])
        fragment[naming.encode_key(naming.OBJECT_GRAPH_KEY).hex()] = {
            "dtype": dtypes.STRING,
            "shape": [],
            "offset": offset,
            "size": len(data),
            "crc32c": crc,
        }
        offset += len(data)
    return {
        "shard": shard,
        "file": os.path.basename(naming.data_path(out, shard, num_shards)),
        "size": offset,
        "pieces": steps,
        "graph": graph is not None,
        "fragment": fragment,
    }


def plan_id(plan: dict) -> str:
    """sha256 of the plan's canonical JSON (without the id itself)."""
    body = {k: v for k, v in plan.items() if k != "plan_id"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def save_plan(plan: dict, path) -> None:
    """Write the plan as JSON, atomically; the same plan gives the same bytes."""
    from .io import AtomicFiles

    path = os.path.abspath(os.fspath(path))
    files = AtomicFiles(os.path.dirname(path))
    _, fd = files.create(path)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(plan, f, indent=1, sort_keys=True)
            f.write("\n")
        files.commit()
    except BaseException:
        files.abort()
        raise


def load_plan(path) -> dict:
    """Read and check a plan file (PlanError when it is not one, or was edited)."""
    try:
        with open(path, encoding="utf-8") as f:
            plan = json.load(f)
    except FileNotFoundError:
        raise PlanError("no such plan file", path=os.fspath(path)) from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise PlanError(f"cannot read the plan ({exc})", path=os.fspath(path)) from None
    if not isinstance(plan, dict) or plan.get("format") != FORMAT:
        raise PlanError("not a ckptio plan", path=os.fspath(path))
    if plan.get("version") != VERSION:
        raise PlanError(f"plan version {plan.get('version')} is not {VERSION}; make it again", path=os.fspath(path))
    if plan.get("plan_id") != plan_id(plan):
        raise PlanError(
            "the plan was edited after it was made (its plan_id does not match); make it again", path=os.fspath(path)
        )
    return plan


def run_plan(plan: dict, task: int = 0, of: int = 1, *, progress=None) -> list[int]:
    """Write every shard whose number is task mod `of` (skipping finished ones); return the shards written."""
    from .plan_exec import run_shards

    if not 0 <= task < of:
        raise PlanError(f"task {task}/{of}: need 0 <= I < N")
    return run_shards(plan, [s["shard"] for s in plan["shards"] if s["shard"] % of == task], progress=progress)


def commit_plan(plan: dict) -> str:
    """Check every shard, write the merged index and the state file, remove the staging area; return OUT."""
    from .plan_exec import commit

    return commit(plan)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
