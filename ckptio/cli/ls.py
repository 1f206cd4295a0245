"""ckptio ls PATH: list tensors with dtype, shape and size; optimizer state marked apart."""

from __future__ import annotations

import gc
import json
import re
import sys

from .common import human

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (type checkers honour the name)
if TYPE_CHECKING:
    from collections.abc import Mapping


def add_arguments(name, p) -> None:
    p.add_argument("path", help="checkpoint prefix, .index/.data file, directory, SavedModel or V1 file")
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object (entries with name, dtype, shape, nbytes, role and storage)",
    )
    p.add_argument("--match", metavar="REGEX", help="only names matching REGEX (re.search)")
    p.add_argument("--objects", action="store_true", help="print the TF2 object graph as a tree instead")


def roles_of(ckpt) -> dict[str, str]:
    """name -> weight | optimizer | step | ema | graph, from the object graph when there is one."""
    from ..bundle import naming
    from ..transform import OPTIMIZER, SLOT, classify

    entries = ckpt.entries()
    own = getattr(ckpt, "roles", None)
    if own is not None:  # another weight format that knows its own optimizer state (Keras)
        return own()
    if naming.OBJECT_GRAPH_KEY in entries:
        found: Mapping[str, str | None]
        if ckpt.sequential:
            # An archive: the graph sits at the end of the data, and reading it would decompress
            # everything; ls reads only the index, so it goes by TF2 key patterns instead.
            found = {n: _tf2_role_by_key(n) for n in entries}
        else:
            # The graph, not key patterns, says what is optimizer state (FORMAT §9.5); a role is
            # what strip drops (a step: what --drop-global-step adds to that).
            from ..objgraph import object_roles

            found = object_roles(ckpt)
        return {n: "graph" if n == naming.OBJECT_GRAPH_KEY else found.get(n) or "weight" for n in entries}
    return {n: "optimizer" if role in (SLOT, OPTIMIZER) else role for n, (role, _) in classify(entries).items()}


def _tf2_role_by_key(key: str) -> str | None:
    """TF2 key patterns: a slot or a path through an object named *optimizer; a root step counter."""
    if "/.OPTIMIZER_SLOT/" in key:
        return "optimizer"
    parts = key.split("/.ATTRIBUTES/")[0].split("/")
    if any(p.lower().endswith("optimizer") for p in parts) and "_trainable_variables" not in parts:
        return "optimizer"
    from ..objgraph_edit import STEP_EDGES

    return "step" if len(parts) == 1 and parts[0] in STEP_EDGES else None


def run(args) -> int:
    if args.objects and args.match:
        from .main import UsageError

        raise UsageError("--match filters tensors; it does not apply to --objects")
    # A listing builds a few objects per entry and no cycles: the collector would only rescan the
    # growing heap again and again (a quarter of `ls --json` on 100,000 entries).
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _list(args)
    finally:
        if collecting:
            gc.enable()


def _sorted_names(entries) -> list[str]:
    """Names in key order: the bytewise order of their UTF-8 (surrogateescape) bytes."""
    names = list(entries)
    try:
        # Without surrogates (undecodable bytes), code point order is UTF-8 byte order, and a plain
        # sort needs no key per name; the check itself is one pass in C.
        "".join(names).encode("utf-8")
    except UnicodeEncodeError:
        names.sort(key=lambda n: n.encode("utf-8", "surrogateescape"))
    else:
        names.sort()
    return names


def _list(args) -> int:
    import ckptio

    from ..bundle import dtypes

    with ckptio.open(args.path) as ckpt:
        if args.objects:
            from .objects import print_objects

            return print_objects(ckpt, sys.stdout, args.json)
        entries = ckpt.entries()
        names = _sorted_names(entries)
        if args.match:
            try:
                pattern = re.compile(args.match)
            except re.error as exc:
                from .main import UsageError

                raise UsageError(f"bad --match pattern: {exc}") from None
            names = [n for n in names if pattern.search(n)]
        roles = roles_of(ckpt)
        rows = []
        dtype_names = {enum: d.name for enum, d in dtypes.BY_ENUM.items()}
        stored_size = ckpt.reader.stored_size
        for n in names:
            e = entries[n]
            nbytes = stored_size(n, e) if e.slices else e.size
            d = dtype_names.get(e.dtype) or dtypes.name_of(e.dtype)
            shape = e.shape if type(e.shape) is tuple else tuple(e.shape)  # a hashable key for the caches below
            rows.append((n, d, shape, nbytes, roles.get(n, "weight"), e))
        totals: dict[str, list[int]] = {}
        for _, _, _, nbytes, role, _ in rows:
            t = totals.setdefault(role, [0, 0])
            t[0] += 1
            t[1] += nbytes
        # The object graph is bookkeeping that every rewrite regenerates: it is listed, but counted
        # apart from the tensors, as the rewrite report counts it.
        graph = totals.pop("graph", None)
        count = len(rows) - (1 if graph else 0)
        if args.json:
            doc = {
                "path": ckpt.path,
                "prefix": ckpt.prefix,
                "format": ckpt.format,
                "num_shards": ckpt.num_shards,
                "num_tensors": count,
                "object_graph": {"bytes": graph[1]} if graph else None,
                "total_bytes": sum(r[3] for r in rows),
                "totals": {k: {"tensors": v[0], "bytes": v[1]} for k, v in totals.items()},
            }
            # json.dumps(doc with "entries" last) would give these bytes, from a dict per entry;
            # formatting each entry straight into its JSON text takes a fraction of that.
            head = json.dumps(doc)
            sys.stdout.write(head[:-1] + ', "entries": [' + ", ".join(_json_entries(rows)) + "]}\n")
            return 0
        from ..errors import show_name

        out = []
        shown = [show_name(r[0]) for r in rows]  # a crafted name must not forge lines or drive the terminal
        width = min(max((len(n) for n in shown), default=4), 80)
        dwidth = max([9] + [len(r[1]) for r in rows])  # float8_e4m3b11fnuz is 18 wide
        shapes: dict[tuple, str] = {}  # shapes and sizes repeat: format each once
        sizes: dict[int, str] = {}
        for n, (_, d, s, b, r, e) in zip(shown, rows):
            mark = "" if r == "weight" else f"  [{r}]"
            sliced = f"  ({len(e.slices)} slices)" if e.slices else ""
            shape_text = shapes.get(s) or shapes.setdefault(s, f"{str(list(s)):<16}")
            size = sizes.get(b) or sizes.setdefault(b, f"{human(b):>10}")
            out.append(f"{n:<{width}}  {d:<{dwidth}} {shape_text} {size}{mark}{sliced}")
        summary = ", ".join(f"{k} {v[0]} ({human(v[1])})" for k, v in sorted(totals.items()))
        out.append(
            f"{count} tensors"
            + (f" and the object graph ({human(graph[1])})" if graph else "")
            + f", {human(sum(r[3] for r in rows))} in {ckpt.format} checkpoint "
            f"{show_name(ckpt.prefix)} ({ckpt.num_shards} shard{'s' if ckpt.num_shards != 1 else ''})"
            + (f": {summary}" if summary else "")
        )
        sys.stdout.write("\n".join(out) + "\n")
    return 0


_ENTRY_JSON = (
    '{"name": %s, "dtype": %s, "shape": %s, "nbytes": %d, "role": %s, "shard": %d, "offset": %d, "size": %d, '
    '"crc32c": %d, "slices": %s}'
)


def _json_entries(rows) -> list[str]:
    """Each row as json.dumps writes its entry dict: same keys, order, separators and escapes."""
    from json.encoder import encode_basestring_ascii as string  # what dumps uses (ensure_ascii)

    strings: dict[str, str] = {}  # dtype and role names repeat
    shapes: dict[tuple, str] = {}
    out = []
    for n, d, s, b, r, e in rows:
        dj = strings.get(d) or strings.setdefault(d, string(d))
        rj = strings.get(r) or strings.setdefault(r, string(r))
        sj = shapes.get(s)
        if sj is None:
            sj = shapes[s] = "[" + ", ".join([int.__repr__(x) for x in s]) + "]"
        slices = "[" + ", ".join([string(sl.spec()) for sl in e.slices]) + "]" if e.slices else "[]"
        out.append(_ENTRY_JSON % (string(n), dj, sj, b, rj, e.shard_id, e.offset, e.size, e.crc32c, slices))
    return out
