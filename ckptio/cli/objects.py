"""`ckptio ls --objects`: the TF2 object graph as a tree of paths, attributes, keys and slots.

Paths are printed in key form with a trailing `/` (`model/layer_with_weights-0/`), exactly as
`ckptio rename` takes them. Only the graph tensor is read; dtypes and shapes come from the index.
"""

from __future__ import annotations

import json


def describe_objects(ckpt) -> dict:
    """The object graph as JSON-able data: nodes in tree order, with keys, dtypes and shapes."""
    from ..bundle import dtypes, naming
    from ..objgraph import ObjectGraph, find_optimizers, graph_problems, owned_keys, path_string

    doc = {"path": ckpt.path, "object_based": False, "nodes": [], "problems": []}
    data = ckpt.object_graph_bytes
    if data is None:
        return doc
    graph = ObjectGraph.parse(data, path=ckpt.path)
    entries = ckpt.entries()
    owned = owned_keys(graph, set(entries) - {naming.OBJECT_GRAPH_KEY})
    paths, tree = graph.spanning_tree()
    prefixes = graph.key_prefixes()
    optimizers = set(find_optimizers(graph))
    shown = lambda nid: (path_string(paths[nid]) + "/") if nid in paths else None  # noqa: E731
    aliases: dict[int, list[str]] = {}
    for nid in paths:
        for c in graph.nodes[nid].children:
            if paths.get(c.node_id) != paths[nid] + (c.local_name,):
                aliases.setdefault(c.node_id, []).append(path_string(paths[nid] + (c.local_name,)) + "/")

    def tensor(key: str) -> dict:
        # A legacy saveable's key is a prefix of its tensors (`.../table` -> `.../table-keys`, `-values`).
        found = [
            {"key": k, "dtype": dtypes.name_of(entries[k].dtype), "shape": list(entries[k].shape)}
            for k, _ in owned.get(key, ())
        ]
        return {"checkpoint_key": key, "in_bundle": bool(found), "tensors": found}

    def node_doc(nid: int, depth: int, slot_of=None) -> dict:
        node = graph.nodes[nid]
        return {
            "id": nid,
            "depth": depth,
            "path": shown(nid),
            "key_prefix": prefixes.get(nid),
            "aliases": aliases.get(nid, []),
            "optimizer": nid in optimizers,
            "slot_of": slot_of,
            "children": [{"name": c.local_name, "id": c.node_id} for c in node.children],
            "attributes": [
                {"name": a.name, "full_name": a.full_name, **tensor(a.checkpoint_key)} for a in node.attributes
            ],
            "slot_variables": [
                {
                    "slot_name": s.slot_name,
                    "variable_id": s.original_node,
                    "variable_path": shown(s.original_node),
                    "slot_id": s.slot_node,
                }
                for s in node.slot_variables
            ],
            "registered_saver": list(node.registered_saver) if node.registered_saver else None,
            "has_checkpoint_values": node.has_checkpoint_values,
        }

    order, seen = [], set()

    def walk(nid: int, depth: int) -> None:  # iterative DFS in child order, for a readable tree
        stack = [(nid, depth)]
        while stack:
            n, d = stack.pop()
            seen.add(n)
            order.append(node_doc(n, d))
            for s in graph.nodes[n].slot_variables:
                if s.slot_node not in seen:
                    seen.add(s.slot_node)
                    order.append(
                        node_doc(
                            s.slot_node,
                            d + 1,
                            slot_of={"optimizer_id": n, "slot_name": s.slot_name, "variable_id": s.original_node},
                        )
                    )
            stack.extend((c.node_id, d + 1) for c in reversed(tree.get(n, [])))

    walk(0, 0)
    order += [node_doc(i, 0) for i in range(len(graph.nodes)) if i not in seen]  # unreachable: TF ignores them
    doc.update(object_based=True, nodes=order, problems=graph_problems(graph, set(entries) - {naming.OBJECT_GRAPH_KEY}))
    return doc


def summarize_objects(ckpt) -> dict:
    """Counts that describe the object graph in a few words (for `show _CHECKPOINTABLE_OBJECT_GRAPH`)."""
    doc = describe_objects(ckpt)
    nodes = doc["nodes"]
    return {
        "objects": len(nodes),
        "unreachable": sum(1 for n in nodes if n["path"] is None and not n["slot_of"]),
        "attributes": sum(len(n["attributes"]) for n in nodes),
        "tensors": sum(len(a["tensors"]) for n in nodes for a in n["attributes"]),
        "optimizers": [n["path"] for n in nodes if n["optimizer"]],
        "slot_variables": sum(len(n["slot_variables"]) for n in nodes),
        "problems": len(doc["problems"]),
    }


def summary_line(s: dict) -> str:
    """One line for a summarize_objects() dict."""
    opts = ", ".join(p or "?" for p in s["optimizers"])
    return (
        f"{s['objects']} objects"
        + (f" ({s['unreachable']} unreachable)" if s["unreachable"] else "")
        + f", {s['attributes']} attributes naming {s['tensors']} tensors, "
        + (
            f"{len(s['optimizers'])} optimizer{'s' if len(s['optimizers']) != 1 else ''} ({opts})"
            if s["optimizers"]
            else "no optimizer"
        )
        + f", {s['slot_variables']} slot variables; "
        + (f"{s['problems']} problems" if s["problems"] else "graph and bundle agree")
    )


def print_objects(ckpt, out, as_json: bool, err=None) -> int:
    """Write the object tree of an open Checkpoint to `out` (text, or one JSON object); the exit code.

    A checkpoint without an object graph (TF1, name-based) has no tree: a note goes to `err`
    (stderr by default), nothing to `out`, and the exit code is 1.
    """
    doc = describe_objects(ckpt)
    if not doc["object_based"]:
        import sys

        (err or sys.stderr).write(
            f"ckptio: {ckpt.path}: not an object-based checkpoint (no "
            "_CHECKPOINTABLE_OBJECT_GRAPH), so it has no object tree; `ckptio ls` lists its "
            "tensors\n"
        )
        return 1
    if as_json:
        json.dump(doc, out)
        out.write("\n")
        return 0
    from ..errors import show_name as shown  # names from a crafted graph must not forge lines

    lines = []
    for n in doc["nodes"]:
        pad = "  " * n["depth"]
        if n["slot_of"]:
            s = n["slot_of"]
            var = next((m["path"] for m in doc["nodes"] if m["id"] == s["variable_id"]), None)
            head = f"slot {s['slot_name']!r} of {shown(var) if var else 'node %d' % s['variable_id']}"
        elif n["path"] is None:
            head = "(unreachable)"
        else:
            head = shown(n["path"]) if n["path"] != "/" else "(root)"
        tags = [f"#{n['id']}"]
        if n["optimizer"]:
            tags.append("[optimizer]")
        if n["aliases"]:
            tags.append("also " + ", ".join(map(shown, n["aliases"])))
        if n["registered_saver"]:
            tags.append(f"[registered saver {shown(n['registered_saver'][0])}]")
        if n["has_checkpoint_values"] is False and (n["attributes"] or n["slot_variables"]):
            tags.append("[has_checkpoint_values=false]")
        lines.append(f"{pad}{head}  {' '.join(tags)}")
        for a in n["attributes"]:
            full = f"  ({shown(a['full_name'])})" if a["full_name"] else ""
            if not a["tensors"]:
                lines.append(f"{pad}  = {shown(a['name'])}  MISSING  {shown(a['checkpoint_key'])}{full}")
            for t in a["tensors"]:
                lines.append(f"{pad}  = {shown(a['name'])}  {t['dtype']}{t['shape']}  {shown(t['key'])}{full}")
    problems = doc["problems"]
    lines.append(
        f"{sum(1 for n in doc['nodes'])} objects, "
        f"{sum(len(n['attributes']) for n in doc['nodes'])} attributes; "
        + (f"{len(problems)} problems:" if problems else "graph and bundle agree")
    )
    lines += [f"  ! {p if p.isprintable() else shown(p)}" for p in problems]
    out.write("\n".join(lines) + "\n")
    return 0
