"""An object graph under edit and the bundle keys it is consistent with: structural changes, then re-keying.

Every edit changes the structure first and then re-keys: a node whose key prefix (its first BFS
path) moved gets its attributes' keys moved with it, so bundle keys are always what TensorFlow
would write for the new structure (FORMAT.md §8, §10.6). Each attribute remembers the bundle key
it was read from, which is how the final {source key: output key} mapping comes out.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from .bundle.naming import OBJECT_GRAPH_KEY
from .errors import PlanError
from .objgraph_check import find_optimizers, owned_keys
from .objgraph_model import ATTRIBUTES_SEP, Attribute, Node, ObjectGraph

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (type checkers honour the name)
if TYPE_CHECKING:
    from typing import Any


class KeyedGraph:
    """An object graph being edited, and the bundle keys it is consistent with."""

    def __init__(self, graph: ObjectGraph, entries: dict[str, Any]):
        self.graph = graph
        self.entries = entries  # source name -> Entry (for EMA promotion checks)
        keys = set(entries) - {OBJECT_GRAPH_KEY}
        self.owned = owned_keys(graph, keys)
        claimed = {k for pairs in self.owned.values() for k, _ in pairs}
        self.loose = {k: k for k in sorted(keys - claimed)}  # tensors no attribute names: plain renames
        self.new_nodes_have_field = any(n.has_checkpoint_values is not None for n in graph.nodes)
        # Optimizers as the source graph shows them, so that a step before a strip (a select that
        # drops `_iterations`, a rename of the `optimizer` edge) does not hide one from it.
        self.optimizers = {graph.nodes[i] for i in find_optimizers(graph)}
        self.stranded: set[str] = set()  # source keys of model weights a strip would have lost

    def result(self) -> tuple[dict[str, str], bytes]:
        """({source key: output key} of every kept tensor, serialized graph), checked for collisions."""
        g = self.graph
        order = g.canonical_order()
        if order != list(range(len(g.nodes))):
            g.keep_only(order)  # number nodes as TF would for this structure
        g.recompute_checkpoint_values()
        mapping: dict[str, str] = {}
        for _nid, a in g.attributes():
            if a.checkpoint_key != a.source and ATTRIBUTES_SEP[1:] not in a.checkpoint_key:
                raise PlanError("TensorFlow restores only keys containing '.ATTRIBUTES/'", key=a.checkpoint_key)
            for src, suffix in self.owned.get(a.source, ()):
                # Several attributes may share one tensor; the first (BFS order) decides its name.
                if src in mapping and mapping[src] != a.checkpoint_key + suffix:
                    a.checkpoint_key = mapping[src][: len(mapping[src]) - len(suffix)]
                mapping.setdefault(src, a.checkpoint_key + suffix)
        mapping.update(self.loose)
        seen: dict[str, str] = {}
        for src, dst in mapping.items():
            if dst in seen:
                raise PlanError(f"{seen[dst]!r} and {src!r} would both be written as {dst!r}", key=dst)
            if dst == OBJECT_GRAPH_KEY or not dst:
                raise PlanError(f"invalid output name {dst!r}", key=src)
            seen[dst] = src
        return mapping, g.serialize()

    def dropped_sources(self) -> set[str]:
        """Source keys that the edits so far have removed."""
        live = {a.source for _, a in self.graph.attributes()}
        return {k for src, pairs in self.owned.items() if src not in live for k, _ in pairs}

    # -- structure edits, then re-keying ------------------------------------------------------------

    def edit(self, change: Callable[[], None], *, may_lose_values: bool = True) -> None:
        """Run a structural change, drop what it made unreachable, and move keys with their nodes."""
        g = self.graph
        before = g.prefixes_by_node()
        live_before = {g.nodes[i] for i in g.live()}
        change()
        live = g.live()
        gone = [i for i, n in enumerate(g.nodes) if i not in live and n in live_before]
        if gone and not may_lose_values:
            lost = [a.checkpoint_key for i in gone for a in g.nodes[i].attributes]
            if lost:
                raise PlanError(
                    f"this would drop {len(lost)} tensors no longer reachable from the root, e.g. "
                    f"{lost[0]!r}; drop them with a select step first",
                    key=lost[0],
                )
        if gone:
            drop = set(gone)
            g.keep_only([i for i in range(len(g.nodes)) if i not in drop])
        self._rekey(before)

    def _rekey(self, before: dict[Node, str]) -> None:
        """Move canonical keys of every node whose key prefix changed; opaque keys stay verbatim."""
        after = self.graph.prefixes_by_node()
        for node in self.graph.nodes:
            old, new = before.get(node), after.get(node)
            if old is None or new is None or old == new:
                continue
            if node.registered_saver:
                raise PlanError(
                    f"object {old!r} has registered saver {node.registered_saver[0]!r}, which names "
                    "its own tensors; ckptio cannot move it",
                    key=old,
                )
            head = old + ATTRIBUTES_SEP
            for a in node.attributes:
                if a.checkpoint_key.startswith(head):  # canonical: follows the node; else opaque, kept
                    a.checkpoint_key = new + a.checkpoint_key[len(old) :]

    def remove(self, doomed: set[int]) -> None:
        """Delete nodes with every edge and slot reference into them (ids are compacted)."""
        if 0 in doomed:
            raise PlanError("the root object cannot be removed")
        g = self.graph
        g.keep_only([i for i in range(len(g.nodes)) if i not in doomed])

    def new_node(self) -> Node:
        return Node(has_checkpoint_values=False if self.new_nodes_have_field else None)

    def tensors(self, a: Attribute) -> list[tuple[str, str]]:
        """(current bundle name, suffix) of the tensors behind an attribute."""
        return [(a.checkpoint_key + suffix, suffix) for _, suffix in self.owned.get(a.source, ())]

    def optimizer_ids(self) -> set[int]:
        """Optimizers of the source graph still present, and any the graph shows now."""
        g = self.graph
        return {i for i, n in enumerate(g.nodes) if n in self.optimizers} | set(find_optimizers(g))

    def owning_optimizers(self) -> set[Node]:
        """Optimizers that hold values of their own: values no other path reaches."""
        g = self.graph
        live = g.live()
        out = set()
        for opt in self.optimizer_ids():
            if opt in live and any(g.nodes[i].has_own_values for i in live - g.live({opt})):
                out.add(g.nodes[opt])
        return out

    def drop_attributes(self, drop: set[Attribute]) -> None:
        """Remove attributes, then nodes left empty by that (and their edges), then unreachable nodes."""
        if not drop:
            return
        emptied = set()
        for node in self.graph.nodes:
            if any(a in drop for a in node.attributes):
                node.attributes = [a for a in node.attributes if a not in drop]
                if not node.attributes:
                    emptied.add(node)
        self.edit(lambda: self._prune(emptied))

    def _prune(self, emptied: set[Node]) -> None:
        """Remove emptied nodes that hold nothing else, then parents left empty by that, with their edges."""
        g = self.graph
        for node in g.nodes:  # a slot whose value is gone is no slot
            node.slot_variables = [s for s in node.slot_variables if g.nodes[s.slot_node] not in emptied]
        slotted = {s.original_node for n in g.nodes for s in n.slot_variables}  # a kept slot needs its variable
        parents = g.parents()
        doomed: set[int] = set()
        queue = deque(i for i, n in enumerate(g.nodes) if n in emptied)
        while queue:
            i = queue.popleft()
            node = g.nodes[i]
            if (
                i == 0
                or i in doomed
                or i in slotted
                or node.has_own_values
                or any(c.node_id not in doomed for c in node.children)
            ):
                continue
            doomed.add(i)
            # Only containers that lose their last child here go; ones empty in the source stay.
            queue.extend(p for p, _ in parents.get(i, ()) if not g.nodes[p].has_own_values)
        self.remove(doomed)
