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
from dataclasses import replace

from .bundle import naming
from .bundle.entry import Entry, Header
from .errors import CheckpointNotFoundError, CkptioError, MismatchError, PlanError, UnsupportedError

RECEIPT = "done.json"


class Staging:
    """The staging area next to OUT (a directory, or a URL prefix): per shard a part and a receipt."""

    def __init__(self, plan: dict):
        self.root, self.plan_id = plan["staging"], plan["plan_id"]
        self.store = store_of(self.root)

    def _path(self, shard: int, name: str) -> str:
        return self.store.join(self.store.join(self.root, f"{shard:05d}"), name)

    def part(self, shard: int) -> str:
        return self._path(shard, "part")

    def part_data(self, shard: int) -> str:
        return naming.data_path(self.part(shard), 0, 1)

    def receipt_path(self, shard: int) -> str:
        return self._path(shard, RECEIPT)

    def read_receipt(self, shard: int) -> dict | None:
        try:
            receipt = json.loads(self.store.read_file(self.receipt_path(shard)).decode("utf-8"))
        except (CkptioError, OSError, ValueError):
            return None
        return receipt if isinstance(receipt, dict) and receipt.get("plan_id") == self.plan_id else None

    def write_receipt(self, shard: int, receipt: dict) -> None:
        data = json.dumps({**receipt, "plan_id": self.plan_id}, sort_keys=True).encode("utf-8")
        self.store.write_file(self.receipt_path(shard), data)

    def forget(self, shard: int) -> None:
        self.store.remove(self.receipt_path(shard))

    def remove(self) -> None:
        self.store.remove_tree(self.root)


def store_of(path: str):
    """The store holding a plan's path (OUT, its staging area, an input): the local disk or a URL's."""
    from .store import for_path

    store, _ = for_path(path)
    if store is None:
        raise UnsupportedError("remote paths need fsspec: pip install 'ckptio[remote]'", path=path)
    return store


# -- tasks -------------------------------------------------------------------------------------


def run_shards(plan: dict, shards: list[int], *, progress=None) -> list[int]:
    """Write the given shards (skipping those done and verified); return the ones written."""
    from contextlib import ExitStack

    from .plan_work import worker
    from .sources import open as open_checkpoint

    check_inputs(plan)
    staging = Staging(plan)
    written = []
    with ExitStack() as stack:
        ckpts = [stack.enter_context(open_checkpoint(i["prefix"])) for i in plan["inputs"]]
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

    spec, options = plan["shards"][shard], plan["options"]
    staging.forget(shard)  # from here until the new receipt, this shard is not done
    part = staging.part(shard)
    # Two runs of one shard at once (a retry while the first still runs) write the same bytes, so
    # whichever renames last leaves a consistent part.
    with BundleWriter(staging.store, part, 1, force=True, inputs=[c.located for c in ckpts]) as writer:
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
        shard,
        {"shard": shard, "index_sha256": _sha256(staging.store, naming.index_path(part)), "data_size": spec["size"]},
    )


# -- checks ------------------------------------------------------------------------------------


def shard_problem(plan: dict, staging: Staging, shard: int) -> str | None:
    """Why a shard is not done (no receipt, changed part), or None when it is complete and verified."""
    receipt = staging.read_receipt(shard)
    if receipt is None:
        return "not written yet"
    index = naming.index_path(staging.part(shard))
    if not staging.store.is_file(index) or _sha256(staging.store, index) != receipt.get("index_sha256"):
        return "its index changed after it was written"
    return part_problem(plan["shards"][shard], staging, shard)


def part_problem(spec: dict, staging: Staging, shard: int) -> str | None:
    """Compare a written part with its planned fragment: keys, dtypes, shapes, offsets, sizes, copied crc32c."""
    entries = part_entries(staging.store, staging.part(shard))
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
    size = staging.store.size(staging.part_data(shard))
    if size != spec["size"]:
        return f"its data file has {size} bytes, the plan {spec['size']}"
    return None


def part_entries(store, prefix: str) -> dict[bytes, Entry] | None:
    """A part's index entries by raw key (None when it cannot be read)."""
    from .bundle.reader import BundleReader

    try:
        reader = BundleReader(prefix, store=store)
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


def _sha256(store, path: str) -> str:
    """sha256 of a file in a store, read in blocks."""
    digest = hashlib.sha256()
    source = store.open(path)
    try:
        for offset in range(0, source.size, 1 << 20):
            digest.update(source.read(offset, min(1 << 20, source.size - offset)))
    finally:
        source.close()
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
    check_output(out, force=plan["options"]["force"], inputs=[i["prefix"] for i in plan["inputs"]], store=store_of(out))
    entries = merged_entries(plan, staging)
    _write_output(plan, staging, entries)
    if plan["options"]["state_file"]:
        # Never moves the latest of a directory whose state file lists other checkpoints, unless asked.
        from .bundle.state import record_output  # the one state-file writer, on any store

        record_output(store_of(out), out, make_latest=plan["options"].get("make_latest", False))
    staging.remove()
    return out


def merged_entries(plan: dict, staging: Staging) -> dict[bytes, Entry]:
    """Every part's entries with shard id = its part number, plus the sliced tensors' metadata."""
    entries: dict[bytes, Entry] = {}
    for spec in plan["shards"]:
        part = part_entries(staging.store, staging.part(spec["shard"]))
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
    """Move the data files into place, then write the index last (removing a replaced one first)."""
    from .bundle.writer import _existing_shards as existing_shards
    from .sstable import TableBuilder

    out, num_shards = plan["out"], plan["num_shards"]
    store = store_of(out)
    finals = [naming.data_path(out, i, num_shards) for i in range(num_shards)]
    index = naming.index_path(out)
    stale = [p for p in existing_shards(out, store) if p not in finals]
    # A replaced checkpoint's index goes first: a failure below leaves no checkpoint, never a mix.
    store.remove(index)
    for i, final in enumerate(finals):
        store.move(staging.part_data(i), final)
    output = store.output()
    try:
        sink = output.create(index)
        builder = TableBuilder(sink.write)
        builder.add(b"", Header(num_shards=num_shards).encode())
        for key in sorted(entries):
            builder.add(key, entries[key].encode())
        builder.finish()
        sink.close()
        if plan["options"]["fsync"] and store.name == "<local>":
            output.commit(fsync=True)
        else:
            output.commit()
    except BaseException:
        output.abort()
        raise
    for p in stale:  # data files of the checkpoint replaced (--force) that the new one does not have
        try:
            store.remove(p)
        except CkptioError:
            pass


# -- inputs: what a plan records of them, and the check that they have not changed ----------------


def fingerprint(ckpt) -> dict:
    """An input as a plan records it: prefix, index sha256 and size, every data file's size."""
    from .store import is_url

    def where(path: str) -> str:
        return path if is_url(path) else os.path.abspath(path)

    store, index = ckpt.store, naming.index_path(ckpt.prefix)
    data = []
    for i in range(ckpt.num_shards):
        path = ckpt.reader.shard_path(i)
        data.append({"path": where(path), "size": store.size(path)})
    return {
        "prefix": where(ckpt.prefix),
        "index": where(index),
        "index_size": store.size(index),
        "index_sha256": _sha256(store, index),
        "data": data,
    }


def check_inputs(plan: dict) -> None:
    """Refuse when an input differs from what the plan recorded (MismatchError)."""
    from .sources import open as open_checkpoint

    for recorded in plan["inputs"]:
        try:
            with open_checkpoint(recorded["prefix"]) as ckpt:
                now = fingerprint(ckpt)
        except (FileNotFoundError, CheckpointNotFoundError):
            raise MismatchError("an input of the plan is gone", path=recorded["prefix"]) from None
        for field, what in (("index_sha256", "index checksum"), ("index_size", "index size"), ("data", "data files")):
            if now[field] != recorded[field]:
                raise MismatchError(
                    f"input changed since the plan was made ({what} differs); make a new plan", path=recorded["prefix"]
                )
