"""A V2 checkpoint's index: header, entries, slices and the object graph, each checked on its own."""

from __future__ import annotations

from ..bundle import naming
from ..bundle.entry import Entry, Header, parse_proto
from ..bundle.slices import SliceKeyError, key_label, tiling_problem
from ..bundle.slices import decode_key as decode_slice_key
from ..bundle.slices import encode_key as slice_key
from ..errors import CkptioError
from ..sstable.recovery import TableScan
from .files import lfs, read_table
from .inputs import Files, data_files
from .report import Diagnosis, Piece
from .shards import check_data


def diagnose_v2(d: Diagnosis, store: Files, prefix: str) -> None:
    """Index, then data shards in order (each read forward, as an archive member must be), then the graph."""
    index_path = naming.index_path(prefix)
    if lfs(store, index_path):
        d.problem(
            "lfs-pointer",
            "this .index is a Git LFS pointer, not the file itself; run 'git lfs pull' to fetch it",
            path=index_path,
        )
        for p in data_files(store, prefix):
            if lfs(store, p):
                d.problem("lfs-pointer", "this data shard is a Git LFS pointer too", path=p)
        return
    scan = read_table(d, store, index_path, "index")
    if scan is None:
        return
    header = _v2_header(d, store, scan, prefix, index_path)
    d.num_shards, d.big_endian = header.num_shards, header.big_endian
    entries, slices = _v2_entries(d, scan, index_path)
    _v2_lost_keys(d, scan)
    pieces = _v2_pieces(d, entries, slices, index_path)
    check_data(d, store, prefix, header, pieces)  # keeps the object graph's bytes when they check out
    d._entries = entries
    d._pieces = pieces
    graph = d._graph_bytes
    _v2_lost_names(d, scan, entries, graph)
    _v2_graph(d, entries, prefix, graph, scan)


def _v2_header(d: Diagnosis, store: Files, scan: TableScan, prefix: str, index_path: str) -> Header:
    if scan.items and scan.items[0][0] == b"":
        try:
            return Header.parse(scan.items[0][1], path=index_path)
        except CkptioError as exc:
            d.problem("bad-header", f"the bundle header is damaged ({exc.message})", path=index_path, key="")
    elif (scan.items or scan.complete) and not any(after is None for after, _ in scan.lost):
        d.problem(
            "bad-header",
            'the bundle header (the entry with key "") is missing; TensorFlow would misread '
            "the first tensor as the header",
            path=index_path,
        )
    counts = sorted({split[2] for p in data_files(store, prefix) if (split := naming.split_data_path(p))})
    n = counts[0] if len(counts) == 1 and counts[0] > 0 else 1
    d.note("shard-count-inferred", f"assuming {n} data shard(s) from the data files present", path=index_path)
    return Header(num_shards=n)


def _v2_entries(d: Diagnosis, scan: TableScan, index_path: str) -> tuple[dict[str, Entry], dict[bytes, Entry]]:
    entries: dict[str, Entry] = {}
    slices: dict[bytes, Entry] = {}
    values: dict[bytes, bytes] = {}
    last = None
    out_of_order = 0
    for key, value in scan.items:
        if key == b"":
            continue
        name = naming.decode_key(key) if key[:1] != b"\x00" else key_label(key)
        if last is not None and key <= last and key not in values:
            out_of_order += 1
            if out_of_order == 1:
                d.problem(
                    "keys-out-of-order",
                    f"index keys are not in sorted order ({name!r} comes after "
                    f"{naming.decode_key(last)!r}); TensorFlow's lookups would miss tensors",
                    path=index_path,
                )
        last = key if last is None or key > last else last
        if key in values:
            if values[key] != value:
                d.problem("duplicate-key", "stored twice with different entries", path=index_path, key=name)
                d.damage(naming.decode_key(key) if key[:1] != b"\x00" else name, "stored twice with different entries")
            else:
                d.problem("duplicate-key", "stored twice (identical entries)", path=index_path, key=name)
            continue
        values[key] = value
        try:
            entry = Entry.parse(value, path=index_path, key=name)
        except CkptioError as exc:
            d.problem("bad-entry", exc.message, path=index_path, key=name)
            if key[:1] == b"\x00":
                base = slice_base(key)
                if base is not None:
                    d.damage(base, f"the index entry of slice {name} is unparsable")
            else:
                d.damage(name, f"its index entry is unparsable ({exc.message})")
            continue
        if key[:1] == b"\x00":
            slices[key] = entry
        else:
            entries[name] = entry
    return entries, slices


def slice_base(key: bytes) -> str | None:
    """The tensor name a slice key belongs to, or None if the key is not one."""
    try:
        return naming.decode_key(decode_slice_key(key)[0])
    except SliceKeyError:
        return None


def _v2_lost_keys(d: Diagnosis, scan: TableScan) -> None:
    """Name tensors whose keys were read from blocks that failed their checksum."""
    for key in scan.lost_keys:
        name = slice_base(key) if key[:1] == b"\x00" else naming.decode_key(key)
        if name is not None:
            d.damage(name, "its index entry was in a damaged block")


def _v2_lost_names(d: Diagnosis, scan: TableScan, entries, data: bytes | None) -> None:
    """Name tensors whose index entries were in lost blocks, from the object graph when it survived."""
    if not scan.lost and scan.complete or data is None:
        return
    from .._proto.trackable_object_graph_pb2 import TrackableObjectGraph

    graph = TrackableObjectGraph()
    if not parse_proto(graph, data):
        return
    keys = {a.checkpoint_key for node in graph.nodes for a in node.attributes if a.checkpoint_key}
    for key in sorted(keys - set(entries)):
        raw = naming.encode_key(key)
        where = next((r for r in scan.lost if (r[0] is None or raw > r[0]) and (r[1] is None or raw <= r[1])), None)
        if where is not None or not scan.complete:
            d.damage(key, "its index entry was in a lost block (named by the object graph)")


def _v2_graph(d: Diagnosis, entries, prefix: str, data: bytes | None, scan: TableScan) -> None:
    """The object graph against the tensors, as verify checks it (TF2 checkpoints only)."""
    if naming.OBJECT_GRAPH_KEY in d.damaged or data is None:
        return
    try:
        from ..objgraph_check import graph_problems
        from ..objgraph_model import ObjectGraph
    except ImportError:
        return
    try:
        graph = ObjectGraph.parse(data, path=naming.index_path(prefix))
    except CkptioError as exc:
        d.problem("object-graph", exc.message, path=naming.index_path(prefix), key=naming.OBJECT_GRAPH_KEY)
        return
    if d.damaged or scan.lost or not scan.complete:
        lost = len(set(d.damaged) - {naming.OBJECT_GRAPH_KEY})
        d.note(
            "object-graph",
            f"the object graph still names the {lost} lost tensor(s): TensorFlow restores "
            "the rest of a salvaged copy but fails on the objects they belong to",
            path=naming.index_path(prefix),
            key=naming.OBJECT_GRAPH_KEY,
        )
        return
    for message in graph_problems(graph, set(entries) - {naming.OBJECT_GRAPH_KEY}):
        d.problem("object-graph", message, path=naming.index_path(prefix), key=naming.OBJECT_GRAPH_KEY)


def _v2_pieces(
    d: Diagnosis, entries: dict[str, Entry], slices: dict[bytes, Entry], index_path: str
) -> dict[str, list[tuple[bytes, Piece]]]:
    """Each named tensor's stored pieces (one, or one per slice), with structural checks done."""
    pieces: dict[str, list[tuple[bytes, Piece]]] = {}
    referenced = set()
    for name, entry in entries.items():
        if not entry.slices:
            pieces[name] = [(naming.encode_key(name), Piece(name, entry.shard_id, entry))]
            continue
        problem = tiling_problem(entry.shape, entry.slices)
        if problem:
            d.problem("bad-slices", problem, path=index_path, key=name)
            d.damage(name, problem)
        parts = []
        for s in entry.slices:
            key = slice_key(name, s)
            referenced.add(key)
            piece = slices.get(key)
            label = f"{name}[{s.spec()}]"
            if piece is None:
                d.problem(
                    "missing-slice", f"slice {s.spec()} is listed but its entry is missing", path=index_path, key=name
                )
                d.damage(name, f"the entry of slice {s.spec()} is missing")
                continue
            why = entry.piece_problem(s, piece)
            if why:
                d.problem("bad-slices", why, path=index_path, key=name)
                d.damage(name, why)
                continue
            parts.append((key, Piece(label, piece.shard_id, piece)))
        pieces[name] = parts
    for key in slices:
        if key not in referenced:
            d.problem(
                "stray-slice",
                "slice entry that no tensor lists (TensorFlow would show it as an odd variable)",
                path=index_path,
                key=key_label(key),
            )
    return pieces
