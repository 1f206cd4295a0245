"""Moving objects in a TF2 object graph: edges moved to new paths, containers made on the way, the
root moved under a path or replaced by a node. Structure only: re-keying is objgraph_edit's job.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from .errors import PlanError
from .objgraph_model import Child, Node, ObjectGraph, Path, parse_path, path_string


def edge_at(g: ObjectGraph, text: str) -> tuple[int, Child, bool] | None:
    """(parent id, edge, whether `root/` was read as node 0) for a user path; a real edge wins."""
    path = parse_path(text)
    for p, alias in ((path, False), (path[1:] if path[:1] == ("root",) else (), True)):
        if p:
            parent = g.resolve(p[:-1])
            if parent is not None:
                edge = next((c for c in g.nodes[parent].children if c.local_name == p[-1]), None)
                if edge is not None:
                    return parent, edge, alias
    return None


def move_edges(g: ObjectGraph, moves: list[tuple[int, Child, Path]], new_node: Callable[[], Node]) -> None:
    """Detach every edge first, then attach each at its new path (so swaps work)."""
    slots = {}
    for parent, edge, _ in moves:
        siblings = g.nodes[parent].children
        slots[id(edge)] = (parent, siblings.index(edge))
        siblings.remove(edge)
    for _parent, edge, new in moves:
        if not new:
            raise PlanError(
                "an object cannot be moved onto the root; use '/' as the old scope instead", key=path_string(new)
            )
        target = ensure(g, new[:-1], new_node)
        # Graphs may already hold cycles (Checkpoint(root=m) has an edge `root` to itself); only
        # refuse one this move would make.
        if reaches(g, edge.node_id, target):
            raise PlanError("this would put an object inside itself", key=path_string(new) + "/")
        siblings = g.nodes[target].children
        clash = next((c for c in siblings if c.local_name == new[-1]), None)
        if clash is not None:
            if clash.node_id == edge.node_id:
                continue
            raise PlanError("an object already exists at this path", key=path_string(new) + "/")
        moved = Child(edge.node_id, new[-1], edge.extra)
        old_parent, index = slots[id(edge)]
        # Renamed in place keeps its position, so BFS order (and with it every key) stays as TF's.
        siblings.insert(min(index, len(siblings)) if target == old_parent else len(siblings), moved)


def ensure(g: ObjectGraph, path: Path, new_node: Callable[[], Node]) -> int:
    """The node at path, creating empty container nodes on the way."""
    nid = 0
    for name in path:
        nxt = next((c.node_id for c in g.nodes[nid].children if c.local_name == name), None)
        if nxt is None:
            g.nodes.append(new_node())
            nxt = len(g.nodes) - 1
            g.nodes[nid].children.append(Child(nxt, name))
        nid = nxt
    return nid


def reroot_under(g: ObjectGraph, path: Path, new_node: Callable[[], Node]) -> None:
    """`/=model/`: a new root whose path `model` leads to the old root (save_weights -> Checkpoint)."""
    if not path:
        return
    g.nodes.append(g.nodes[0])
    g.nodes[0] = new_node()
    swap_ids(g, 0, len(g.nodes) - 1)
    old_root = len(g.nodes) - 1
    g.nodes[ensure(g, path[:-1], new_node)].children.append(Child(old_root, path[-1]))


def reroot_at(g: ObjectGraph, nid: int) -> None:
    """`model/=/`: the node at model becomes the root (Checkpoint -> save_weights layout)."""
    g.nodes[0], g.nodes[nid] = g.nodes[nid], g.nodes[0]
    swap_ids(g, 0, nid)


def swap_ids(g: ObjectGraph, a: int, b: int) -> None:
    """Exchange the ids of nodes a and b in every edge and slot reference."""
    swap = {a: b, b: a}
    for n in g.nodes:
        for c in n.children:
            c.node_id = swap.get(c.node_id, c.node_id)
        for s in n.slot_variables:
            s.original_node = swap.get(s.original_node, s.original_node)
            s.slot_node = swap.get(s.slot_node, s.slot_node)


def reaches(g: ObjectGraph, start: int, goal: int) -> bool:
    """Whether goal can be reached from start along edges."""
    seen, todo = {start}, [start]
    while todo:
        nid = todo.pop()
        if nid == goal:
            return True
        for c in g.nodes[nid].children:
            if c.node_id not in seen:
                seen.add(c.node_id)
                todo.append(c.node_id)
    return False


def derive_moves(g: ObjectGraph, want: dict[int, Path]) -> list[tuple[int, Child, Path]]:
    """Edge moves that put every node of `want` at its wanted path, moving whole subtrees when they agree.

    Bottom-up over the first-path spanning tree, each node learns the one path its subtree asks
    for (or that it is torn); top-down, the highest agreeing node whose path changes is moved.
    """
    paths, tree = g.spanning_tree()
    torn = ("\x00torn",)  # no real path: local names never reach here with a NUL-only marker
    ask: dict[int, Path] = {}  # node -> the path its subtree wants, or torn; absent: no opinion
    for nid in sorted(paths, key=lambda n: -len(paths[n])):
        votes = {want[nid]} if nid in want else set()
        for edge in tree.get(nid, ()):
            v = ask.get(edge.node_id)
            if v is not None:
                votes.add(v[:-1] if v is not torn and v and v[-1] == edge.local_name else torn)
        if votes:
            ask[nid] = votes.pop() if len(votes) == 1 else torn
    moves = []
    queue: deque[tuple[int, Child, Path]] = deque((0, edge, (edge.local_name,)) for edge in tree.get(0, ()))
    while queue:
        parent, edge, where = queue.popleft()
        v = ask.get(edge.node_id)
        if v is torn:
            queue.extend((edge.node_id, e, where + (e.local_name,)) for e in tree.get(edge.node_id, ()))
        elif v is not None and v != where:
            moves.append((parent, edge, v))
    return moves
