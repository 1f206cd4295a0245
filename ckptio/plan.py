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
from .plan_exec import check_inputs, fingerprint, store_of  # noqa: F401 - check_inputs: part of this module's API

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
    out = out_path(dst)
    refuse_saved_model_output(out)
    ckpt = src if isinstance(src, Checkpoint) else open_input(src)
    try:
        check_v2(ckpt)
        check_output(out, store=store_of(out), force=force, inputs=[ckpt.located])
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
    """Plans read and write checkpoints on disks and URLs by byte ranges: refuse archives and other
    weight formats, which are read as a stream or written whole (UnsupportedError)."""
    from .checkpoint import Checkpoint
    from .formats import kind_of
    from .store import is_archive, is_url

    for path in paths:
        if path is None or isinstance(path, Checkpoint):
            continue
        text = os.fspath(path)
        if is_archive(text) or kind_of(text) is not None:
            raise UnsupportedError(
                "plans read and write TensorBundle checkpoints on disks or URLs (not archives or other "
                "weight formats); run the command itself for these",
                path=text,
            )
        if is_url(text):
            from .store import for_path

            if for_path(text)[0] is None:
                raise UnsupportedError("remote paths need fsspec: pip install 'ckptio[remote]'", path=text)


check_plannable = check_local


def out_path(dst) -> str:
    """OUT as a plan records it: a URL as given, a local path made absolute (tasks may run elsewhere)."""
    from .store import is_url, local_path

    text = os.fspath(dst)
    return text if is_url(text) else os.path.abspath(local_path(text))


def open_input(path):
    """An input checkpoint by path or URL (plans take no archives: check_local refused them)."""
    from .sources import open as open_checkpoint

    return open_checkpoint(path)


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
    """Where tasks put finished shards: next to the output, so that commit renames (on object stores:
    copies within the store), never moves bytes through the machine that commits."""
    from .store import is_url

    if is_url(out):
        directory, _, base = out.rpartition("/")
        return f"{directory}/.{base}.ckptio-plan"
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
        "file": naming.data_path(out, shard, num_shards).rpartition("/")[2],
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
    """Write the plan as JSON, atomically, to a path or a URL; the same plan gives the same bytes."""
    store, where = _plan_store(path)
    data = (json.dumps(plan, indent=1, sort_keys=True) + "\n").encode("utf-8")
    if store.name == "<local>":
        from .io import make_dirs

        make_dirs(os.path.dirname(where) or ".")
    store.write_file(where, data)


def load_plan(path) -> dict:
    """Read and check a plan file, from a path or a URL (PlanError when it is not one, or was edited)."""
    from .errors import CheckpointNotFoundError, CkptioError

    try:
        store, where = _plan_store(path)
        plan = json.loads(store.read_file(where).decode("utf-8"))
    except CheckpointNotFoundError:
        raise PlanError("no such plan file", path=os.fspath(path)) from None
    except (CkptioError, OSError, UnicodeDecodeError, ValueError) as exc:
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


def _plan_store(path):
    """(store, path in it) for a plan file: a local path (made absolute) or a URL."""
    from .store import for_path, is_url

    text = os.fspath(path)
    store, where = for_path(text if is_url(text) else os.path.abspath(text.removeprefix("file://")))
    if store is None:
        raise UnsupportedError("remote paths need fsspec: pip install 'ckptio[remote]'", path=text)
    return store, where


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
