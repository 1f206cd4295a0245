"""Run a plan's shards and commit them: the only module that touches the staging area.

A shard is written as a one-shard bundle `STAGING/NNNNN/part` by the same BundleWriter and piece
writers the single-process command uses (plan_work.py: rewrite's _write_piece, fit's _write_built,
merge's Job; so its bytes are the same), then a receipt naming
the plan and the part's index sha256 is renamed into place: a shard is done exactly when its
receipt matches. A killed task leaves at most temp files (removed by the next writer there).
Commit merges the fragments as TF's MergeV2Checkpoints does (shard id i for part i), renames
the data files next to OUT, writes the index last, then the state file, and removes STAGING.
Everything here goes through Staging and plain paths, to move onto the storage layer later.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
from dataclasses import replace

from .bundle import naming
from .bundle.entry import Entry, Header
from .errors import CkptioError, MismatchError, PlanError

RECEIPT = "done.json"


class Staging:
    """The staging directory next to OUT: one subdirectory per shard, each with a part and a receipt."""

    def __init__(self, plan: dict):
        self.root, self.plan_id = plan["staging"], plan["plan_id"]

    def part(self, shard: int) -> str:
        return os.path.join(self.root, f"{shard:05d}", "part")

    def part_data(self, shard: int) -> str:
        return naming.data_path(self.part(shard), 0, 1)

    def receipt_path(self, shard: int) -> str:
        return os.path.join(self.root, f"{shard:05d}", RECEIPT)

    def read_receipt(self, shard: int) -> dict | None:
        try:
            with open(self.receipt_path(shard), encoding="utf-8") as f:
                receipt = json.load(f)
        except (OSError, ValueError):
            return None
        return receipt if isinstance(receipt, dict) and receipt.get("plan_id") == self.plan_id else None

    def write_receipt(self, shard: int, receipt: dict) -> None:
        from .io import AtomicFiles

        files = AtomicFiles(os.path.dirname(self.receipt_path(shard)))
        _, fd = files.create(self.receipt_path(shard))
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({**receipt, "plan_id": self.plan_id}, f, sort_keys=True)
            files.commit()
        except BaseException:
            files.abort()
            raise

    def forget(self, shard: int) -> None:
        try:
            os.unlink(self.receipt_path(shard))
        except FileNotFoundError:
            pass

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


# -- tasks -------------------------------------------------------------------------------------


def run_shards(plan: dict, shards: list[int], *, progress=None) -> list[int]:
    """Write the given shards (skipping those done and verified); return the ones written."""
    from contextlib import ExitStack

    from .checkpoint import Checkpoint
    from .plan_work import worker

    check_inputs(plan)
    staging = Staging(plan)
    written = []
    with ExitStack() as stack:
        ckpts = [stack.enter_context(Checkpoint(i["prefix"])) for i in plan["inputs"]]
        work = None  # made on the first shard to write (a merge's Job checks every input's layout)
        for shard in shards:
            spec = plan["shards"][shard]
            if shard_problem(plan, staging, shard) is None:
                if progress:
                    progress(spec["size"])
                continue
            work = work or stack.enter_context(worker(plan, ckpts))
            write_shard(plan, ckpts, work, staging, shard, progress=progress)
            written.append(shard)
    return written


def write_shard(plan: dict, ckpts, work, staging: Staging, shard: int, *, progress=None) -> None:
    """Write one output shard as a one-shard bundle in the staging area, then its receipt."""
    from .bundle.writer import BundleWriter
    from .io import make_dirs

    spec, options = plan["shards"][shard], plan["options"]
    staging.forget(shard)  # from here until the new receipt, this shard is not done
    part = staging.part(shard)
    make_dirs(os.path.dirname(part))
    # Two runs of one shard at once (a retry while the first still runs) write the same bytes, so
    # whichever renames last leaves a consistent part.
    with BundleWriter(part, 1, force=True, inputs=[c.located for c in ckpts]) as writer:
        writer.reserve(0, spec["size"])
        work.write(writer, spec["pieces"], progress)
        if spec["graph"]:
            import numpy as np

            graph = np.empty((), dtype=object)
            graph[()] = base64.b64decode(plan["graph"])
            writer.add_array(naming.OBJECT_GRAPH_KEY, graph, shard=0)
        writer.finish(state_file=False, fsync=options["fsync"])
    problem = part_problem(spec, staging, shard)
    if problem:  # the planned layout and what was written disagree: a bug, never committed
        raise PlanError(f"shard {shard} does not match its plan: {problem}", path=part)
    staging.write_receipt(
        shard, {"shard": shard, "index_sha256": _sha256(naming.index_path(part)), "data_size": spec["size"]}
    )


# -- checks ------------------------------------------------------------------------------------


def shard_problem(plan: dict, staging: Staging, shard: int) -> str | None:
    """Why a shard is not done (no receipt, changed part), or None when it is complete and verified."""
    receipt = staging.read_receipt(shard)
    if receipt is None:
        return "not written yet"
    index = naming.index_path(staging.part(shard))
    if not os.path.exists(index) or _sha256(index) != receipt.get("index_sha256"):
        return "its index changed after it was written"
    return part_problem(plan["shards"][shard], staging, shard)


def part_problem(spec: dict, staging: Staging, shard: int) -> str | None:
    """Compare a written part with its planned fragment: keys, dtypes, shapes, offsets, sizes, copied crc32c."""
    entries = part_entries(staging.part(shard))
    if entries is None:
        return "its index is missing or unreadable"
    if set(entries) != {bytes.fromhex(k) for k in spec["fragment"]}:
        return "its keys differ from the plan"
    for key_hex, want in spec["fragment"].items():
        e = entries[bytes.fromhex(key_hex)]
        got = {
            "dtype": e.dtype,
            "shape": list(e.shape),
            "offset": e.offset,
            "size": e.size,
            "crc32c": e.crc32c if want["crc32c"] is not None else None,
        }
        if e.shard_id != 0 or got != want:
            return f"entry {naming.decode_key(bytes.fromhex(key_hex))!r} differs from the plan"
    data = staging.part_data(shard)
    size = os.path.getsize(data) if os.path.exists(data) else None
    if size != spec["size"]:
        return f"its data file has {size} bytes, the plan {spec['size']}"
    return None


def part_entries(prefix: str) -> dict[bytes, Entry] | None:
    """A part's index entries by raw key (None when it cannot be read)."""
    from .bundle.reader import BundleReader

    try:
        reader = BundleReader(prefix)
    except (CkptioError, OSError):
        return None
    try:
        if reader.header.num_shards != 1:
            return None
        return {k: Entry.parse(v, path=reader.path, key=k) for k, v in reader.table if k}
    except CkptioError:
        return None
    finally:
        reader.close()


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# -- commit ------------------------------------------------------------------------------------


def status(plan: dict) -> dict[int, str | None]:
    """Each shard's problem (None when done)."""
    staging = Staging(plan)
    return {s["shard"]: shard_problem(plan, staging, s["shard"]) for s in plan["shards"]}


def commit(plan: dict) -> str:
    """Check every shard, merge the fragments into OUT's index (written last), state file, clean up."""
    from .bundle.writer import check_output

    out, num_shards = plan["out"], plan["num_shards"]
    staging = Staging(plan)
    missing = {s: why for s, why in status(plan).items() if why is not None}
    if missing:
        first = min(missing)
        raise PlanError(
            f"{len(missing)} of {num_shards} shards are not done (shard {first}: {missing[first]}); "
            f"run every `ckptio run-plan PLAN --task I/N` first",
            path=out,
        )
    check_inputs(plan)
    check_output(out, force=plan["options"]["force"], inputs=[i["prefix"] for i in plan["inputs"]])
    entries = merged_entries(plan, staging)
    _write_output(plan, staging, entries)
    if plan["options"]["state_file"]:
        from .bundle.writer import write_state_file  # the one state-file writer

        # Never moves the latest of a directory whose state file lists other checkpoints, unless asked.
        write_state_file(out, make_latest=plan["options"].get("make_latest", False))
    staging.remove()
    return out


def merged_entries(plan: dict, staging: Staging) -> dict[bytes, Entry]:
    """Every part's entries with shard id = its part number, plus the sliced tensors' metadata."""
    entries: dict[bytes, Entry] = {}
    for spec in plan["shards"]:
        part = part_entries(staging.part(spec["shard"]))
        assert part is not None  # commit() found every part readable
        for key, e in part.items():
            if key in entries:
                raise PlanError("two shards write the same key", key=naming.decode_key(key))
            entries[key] = replace(e, shard_id=spec["shard"])
    for key_hex, encoded in plan["metadata"].items():
        key = bytes.fromhex(key_hex)
        if key in entries:
            raise PlanError("a sliced tensor's metadata key is also a data key", key=naming.decode_key(key))
        entries[key] = Entry.parse(base64.b64decode(encoded), key=key)
    from .bundle.slices import encode_key

    for key, e in entries.items():
        for s in e.slices:
            if encode_key(key, s) not in entries:
                raise PlanError(f"slice {s.spec()} has no data entry", key=naming.decode_key(key))
    return entries


def _write_output(plan: dict, staging: Staging, entries: dict[bytes, Entry]) -> None:
    """Rename the data files into place, then write the index (removing a replaced one first)."""
    from .bundle.writer import ShardFile, _existing_shards
    from .io import AtomicFiles
    from .sstable import TableBuilder

    out, num_shards = plan["out"], plan["num_shards"]
    finals = [naming.data_path(out, i, num_shards) for i in range(num_shards)]
    files = AtomicFiles(os.path.dirname(out))
    _, fd = files.create(naming.index_path(out))
    try:
        index = ShardFile(fd, naming.index_path(out))
        builder = TableBuilder(index.write)
        builder.add(b"", Header(num_shards=num_shards).encode())
        for key in sorted(entries):
            builder.add(key, entries[key].encode())
        builder.finish()
        if plan["options"]["fsync"]:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        files.abort()
        raise
    os.close(fd)
    stale = [p for p in _existing_shards(out) if p not in finals]
    try:
        # A replaced checkpoint's index goes first: a crash below leaves no checkpoint, never a mix.
        if os.path.exists(naming.index_path(out)):
            os.unlink(naming.index_path(out))
        for i, final in enumerate(finals):
            os.replace(staging.part_data(i), final)
        files.commit(fsync=plan["options"]["fsync"])
    except OSError as exc:
        files.abort()
        from .errors import WriteError

        raise WriteError(f"cannot commit output: {exc.strerror or exc}", path=out) from None
    except BaseException:
        files.abort()
        raise
    for p in stale:
        try:
            os.unlink(p)
        except OSError:
            pass


# -- inputs: what a plan records of them, and the check that they have not changed ----------------


def fingerprint(ckpt) -> dict:
    """An input as a plan records it: prefix, index sha256 and size, every data file's size."""
    index = naming.index_path(ckpt.prefix)
    digest = hashlib.sha256()
    with open(index, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    data = []
    for i in range(ckpt.num_shards):
        path = ckpt.reader.shard_path(i)
        data.append({"path": os.path.abspath(path), "size": os.path.getsize(path) if os.path.exists(path) else None})
    return {
        "prefix": os.path.abspath(ckpt.prefix),
        "index": os.path.abspath(index),
        "index_size": os.path.getsize(index),
        "index_sha256": digest.hexdigest(),
        "data": data,
    }


def check_inputs(plan: dict) -> None:
    """Refuse when an input differs from what the plan recorded (MismatchError)."""
    from .checkpoint import Checkpoint

    for recorded in plan["inputs"]:
        try:
            with Checkpoint(recorded["prefix"]) as ckpt:
                now = fingerprint(ckpt)
        except FileNotFoundError:
            raise MismatchError("an input of the plan is gone", path=recorded["prefix"]) from None
        for field, what in (("index_sha256", "index checksum"), ("index_size", "index size"), ("data", "data files")):
            if now[field] != recorded[field]:
                raise MismatchError(
                    f"input changed since the plan was made ({what} differs); make a new plan", path=recorded["prefix"]
                )
