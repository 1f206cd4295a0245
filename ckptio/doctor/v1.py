"""A V1 checkpoint: every file's table walked, metadata and slices checked, tensors decoded."""

from __future__ import annotations

from ..bundle import naming
from ..bundle.entry import Entry
from ..bundle.slices import Slice, tiling_problem
from ..bundle.slices import encode_key as slice_key
from ..bundle.v1 import declared, parse_slices, slice_data, tensor_proto_to_array
from ..checkpoint import assemble
from ..errors import CkptioError
from .files import lfs, read_table
from .index import slice_base
from .inputs import Files
from .report import Diagnosis


def diagnose_v1(d: Diagnosis, store: Files, files: list[str], prefix: str) -> None:
    m = naming.V1_SHARD_RE.match(files[0]) if files else None
    d.num_shards = len(files)
    if m:
        count = int(m["count"])
        d.num_shards = count
        for i in range(count):
            p = f"{m['base']}-{i:05d}-of-{count:05d}"
            if p not in files:
                d.problem(
                    "missing-shard",
                    f"V1 file {store.basename(p)} of {count} is missing; the tensors (or slices) it held are lost",
                    path=p,
                )
    metas: dict[str, tuple[int, tuple, list]] = {}  # name -> (dtype, shape, [(slice, file)])
    values: dict[bytes, tuple[str, bytes]] = {}
    for path in files:
        if lfs(store, path):
            d.problem(
                "lfs-pointer", "this V1 file is a Git LFS pointer, not the file itself; run 'git lfs pull'", path=path
            )
            continue
        scan = read_table(d, store, path, "V1 file")
        if scan is None:
            continue
        if not scan.items or scan.items[0][0] != b"":
            if (scan.items or scan.complete) and not any(after is None for after, _ in scan.lost):
                d.problem(
                    "bad-header",
                    'the V1 metadata entry (key "") is missing or lost; the tensors this '
                    "file describes cannot be named",
                    path=path,
                )
        else:
            sts = parse_slices(scan.items[0][1])
            if sts is None:
                d.problem("bad-header", "the V1 metadata entry is not a SavedTensorSlices", path=path, key="")
            else:
                for name, dtype, shape, slices in declared(sts):
                    old = metas.get(name)
                    if old is not None and (old[0] != dtype or old[1] != shape):
                        d.problem(
                            "bad-header",
                            "tensor declared with different dtype or shape in two files",
                            path=path,
                            key=name,
                        )
                        d.damage(name, "declared with different dtypes or shapes in two files")
                        continue
                    meta = metas.setdefault(name, (dtype, shape, []))
                    meta[2].extend((s, path) for s in slices)
        for key, value in scan.items[1:] if scan.items and scan.items[0][0] == b"" else scan.items:
            values[key] = (path, value)
        for key in scan.lost_keys:
            base = slice_base(key)
            if base is not None:
                d.damage(base, "its data was in a damaged block")
    for name, (dtype, shape, stored) in metas.items():
        if name in d.damaged:
            continue
        entry = Entry(dtype, shape, slices=tuple(s for s, _ in stored))
        kind, problem = "bad-entry", Entry(dtype, shape).problem()  # dtype and shape alone
        if not problem:
            kind, problem = "bad-slices", entry.problem() or tiling_problem(shape, entry.slices)
        if not problem and not stored:
            problem = "the tensor lists no stored slice (its values are missing)"
        if problem:
            d.problem(kind, problem, path=prefix, key=name)
            d.damage(name, problem)
            continue
        parts = []
        for s, _path in stored:
            key = slice_key(name, s if shape else Slice(()))
            found = values.get(key)
            if found is None:
                d.damage(name, f"slice {s.spec() or '(scalar)'} is listed but its data is lost")
                break
            try:
                proto = slice_data(found[1], name, path=found[0])
            except CkptioError:
                d.problem(
                    "bad-entry", f"the data of slice {s.spec() or '(scalar)'} is unparsable", path=found[0], key=name
                )
                d.damage(name, f"the data of slice {s.spec() or '(scalar)'} is unparsable")
                break
            try:
                parts.append((s, tensor_proto_to_array(proto, dtype, s.shape(shape), path=found[0], key=name)))
            except CkptioError as exc:
                d.problem("corrupt-tensor", exc.message, path=found[0], key=name)
                d.damage(name, exc.message)
                break
        else:
            arrays = dict(parts)
            d._arrays[name] = assemble(name, entry, arrays.__getitem__, path=prefix)
            d._entries[name] = entry  # its dtype: numpy's cannot tell qint8 from int8
