"""The TF2 object graph as values: nodes, children, attributes, slot variables; its paths and keys;
parse and serialize (byte-identical round trip of an unedited graph). See objgraph.py for the map.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

from .bundle.naming import OBJECT_GRAPH_KEY
from .errors import CorruptCheckpointError, PlanError

OBJECT_ATTRIBUTES = ".ATTRIBUTES"
OPTIMIZER_SLOT = ".OPTIMIZER_SLOT"
SERIALIZE_TO_TENSORS = ".TENSORS"
ATTRIBUTES_SEP = f"/{OBJECT_ATTRIBUTES}/"

Path = tuple[str, ...]  # local names from the root, unescaped


# -- key naming (tensorflow/python/trackable/trackable_utils.py) --------------------------------


def escape_path_element(name: str) -> str:
    """Escape one local name as TF does in keys: `.` -> `..`, `/` -> `.S`."""
    return name.replace(".", "..").replace("/", ".S")


def unescape_path_element(text: str) -> str:
    """Inverse of escape_path_element (a lone `.` is kept as typed)."""
    out, i = [], 0
    while i < len(text):
        pair = text[i : i + 2]
        if pair in ("..", ".S"):
            out.append("." if pair == ".." else "/")
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def path_string(path: Sequence[str]) -> str:
    """A node path in key form: escaped local names joined by `/` (the root is "")."""
    return "/".join(escape_path_element(p) for p in path)


def parse_path(text: str) -> Path:
    """Key form back to local names; a trailing `/` is allowed (`encoder/` is node `encoder`)."""
    text = text.strip("/")
    return tuple(unescape_path_element(p) for p in text.split("/")) if text else ()


def attribute_key(prefix: str, name: str) -> str:
    """Bundle key of attribute `name` of the node at `prefix` (`.TENSORS` has an empty suffix)."""
    suffix = "" if name == SERIALIZE_TO_TENSORS else escape_path_element(name)
    return f"{prefix}{ATTRIBUTES_SEP}{suffix}"


def slot_prefix(variable_prefix: str, optimizer_prefix: str, slot_name: str) -> str:
    """Key prefix of a slot variable: `var/.OPTIMIZER_SLOT/opt/slot` (then `/.ATTRIBUTES/...`)."""
    return f"{variable_prefix}/{OPTIMIZER_SLOT}/{optimizer_prefix}/{escape_path_element(slot_name)}"


# -- the graph as plain values ---------------------------------------------------------------------
# `extra` holds a message's unknown fields verbatim (e.g. the retired `optional_restore`), so that
# re-serializing an unedited graph gives back the input bytes.


@dataclass(eq=False, slots=True)
class Child:
    """An edge: `local_name` is the attribute / tracking name on the parent."""

    node_id: int
    local_name: str
    extra: bytes = b""


@dataclass(eq=False, slots=True)
class Attribute:
    """A saved tensor of a node (SerializedTensor); `source` is the bundle key it was read from."""

    name: str
    full_name: str
    checkpoint_key: str
    extra: bytes = b""
    source: str = field(default="", repr=False)


@dataclass(eq=False, slots=True)
class SlotVariable:
    """An optimizer's slot for one variable (SlotVariableReference)."""

    original_node: int
    slot_name: str
    slot_node: int
    extra: bytes = b""


@dataclass(eq=False, slots=True)
class Node:
    """A TrackableObject. Compared by identity, so nodes can key dicts across renumbering."""

    children: list[Child] = field(default_factory=list)
    attributes: list[Attribute] = field(default_factory=list)
    slot_variables: list[SlotVariable] = field(default_factory=list)
    registered_saver: tuple[str, str] | None = None  # (saver name, object_name)
    has_checkpoint_values: bool | None = None  # None: the field is absent (older TF wrote none)
    extra: bytes = b""

    @property
    def has_own_values(self) -> bool:
        """What TF counts as "has checkpoint values" for the node itself."""
        return bool(self.attributes or self.slot_variables or self.registered_saver)


def _pb():
    from ._proto import trackable_object_graph_pb2

    return trackable_object_graph_pb2


def _unknown(message) -> bytes:
    """The unknown fields of one message as bytes (upb writes them after the known ones)."""
    known = type(message)()
    known.CopyFrom(message)
    known.DiscardUnknownFields()
    full, head = message.SerializeToString(), known.SerializeToString()
    return full[len(head) :] if full.startswith(head) else b""


class ObjectGraph:
    """A TrackableObjectGraph as plain Python values. Node ids are list indices; node 0 is the root."""

    def __init__(self, nodes: list[Node] | None = None):
        self.nodes: list[Node] = nodes if nodes is not None else [Node()]

    # -- bytes ---------------------------------------------------------------------------------

    @classmethod
    def parse(cls, data: bytes, *, path=None) -> ObjectGraph:
        """Decode and validate (every node id in range); CorruptCheckpointError if it is not a graph."""
        from .bundle.entry import parse_proto

        proto = _pb().TrackableObjectGraph()
        if not parse_proto(proto, bytes(data)):
            raise CorruptCheckpointError(
                "the object graph is not a TrackableObjectGraph", path=path, key=OBJECT_GRAPH_KEY
            )
        # Per-message unknown fields cost a copy each, so look for them only when there are any.
        check = proto.ByteSize() != _known_size(proto)
        extra = _unknown if check else (lambda m: b"")
        nodes = []
        for p in proto.nodes:
            nodes.append(
                Node(
                    children=[Child(c.node_id, c.local_name, extra(c)) for c in p.children],
                    attributes=[
                        Attribute(a.name, a.full_name, a.checkpoint_key, extra(a), a.checkpoint_key)
                        for a in p.attributes
                    ],
                    slot_variables=[
                        SlotVariable(s.original_variable_node_id, s.slot_name, s.slot_variable_node_id, extra(s))
                        for s in p.slot_variables
                    ],
                    registered_saver=(
                        (p.registered_saver.name, p.registered_saver.object_name)
                        if p.HasField("registered_saver")
                        else None
                    ),
                    has_checkpoint_values=(
                        p.has_checkpoint_values.value if p.HasField("has_checkpoint_values") else None
                    ),
                    extra=extra(p),
                )
            )
        graph = cls(nodes)
        problems = graph.structure_problems()
        if problems:
            raise CorruptCheckpointError(f"bad object graph: {problems[0]}", path=path, key=OBJECT_GRAPH_KEY)
        return graph

    def serialize(self) -> bytes:
        """Encode with protobuf (fields in number order, defaults omitted), unknown fields appended."""
        pb = _pb()
        proto = pb.TrackableObjectGraph()
        for n in self.nodes:
            p = proto.nodes.add()
            for c in n.children:
                _add(p.children, c.extra, node_id=c.node_id, local_name=c.local_name)
            for a in n.attributes:
                _add(p.attributes, a.extra, name=a.name, full_name=a.full_name, checkpoint_key=a.checkpoint_key)
            for s in n.slot_variables:
                _add(
                    p.slot_variables,
                    s.extra,
                    original_variable_node_id=s.original_node,
                    slot_name=s.slot_name,
                    slot_variable_node_id=s.slot_node,
                )
            if n.registered_saver is not None:
                p.registered_saver.name, p.registered_saver.object_name = n.registered_saver
                p.registered_saver.SetInParent()
            if n.has_checkpoint_values is not None:
                p.has_checkpoint_values.SetInParent()  # present even when false: `2a 00`
                p.has_checkpoint_values.value = n.has_checkpoint_values
            if n.extra:
                p.MergeFromString(n.extra)
        return proto.SerializeToString()

    # -- structure -----------------------------------------------------------------------------

    def structure_problems(self) -> list[str]:
        """Node ids out of range, as messages."""
        count, out = len(self.nodes), []
        if not count:
            return ["it has no nodes (node 0 must be the root)"]
        for i, n in enumerate(self.nodes):
            for c in n.children:
                if not 0 <= c.node_id < count:
                    out.append(f"node {i} child {c.local_name!r} points at node {c.node_id} of {count}")
            for s in n.slot_variables:
                for what, nid in (("variable", s.original_node), ("slot", s.slot_node)):
                    if not 0 <= nid < count:
                        out.append(f"node {i} slot {s.slot_name!r} names {what} node {nid} of {count}")
        return out

    def first_paths(self) -> dict[int, Path]:
        """Breadth-first from the root over children in listed order: the path TF names each node by."""
        return self.spanning_tree()[0]

    def spanning_tree(self) -> tuple[dict[int, Path], dict[int, list[Child]]]:
        """(first path of each reachable node, the edges that first reached each node's children)."""
        paths: dict[int, Path] = {0: ()}
        tree: dict[int, list[Child]] = {}
        queue = deque([0])
        while queue:
            nid = queue.popleft()
            for c in self.nodes[nid].children:
                if c.node_id not in paths:
                    paths[c.node_id] = paths[nid] + (c.local_name,)
                    tree.setdefault(nid, []).append(c)
                    queue.append(c.node_id)
        return paths, tree

    def key_prefixes(self) -> dict[int, str]:
        """Each nameable node's key prefix: its first path, or for a slot node the slot naming."""
        out = {nid: path_string(p) for nid, p in self.first_paths().items()}
        for nid in sorted(out):
            for s in self.nodes[nid].slot_variables:
                if s.slot_node not in out and s.original_node in out:
                    out[s.slot_node] = slot_prefix(out[s.original_node], out[nid], s.slot_name)
        return out

    def live(self, blocked: AbstractSet[int] = frozenset()) -> set[int]:
        """Nodes TF can reach on restore: children from the root, plus slots of reachable variables
        (never entering `blocked` nodes)."""
        seen = {0}
        queue = deque([0])
        while queue:
            nid = queue.popleft()
            node = self.nodes[nid]
            nexts = [c.node_id for c in node.children]
            nexts += [s.slot_node for s in node.slot_variables if s.original_node in seen]
            for nxt in nexts:
                if nxt not in seen and nxt not in blocked:
                    seen.add(nxt)
                    queue.append(nxt)
            if not queue:  # a slot whose variable was found after its optimizer
                late = (
                    {s.slot_node for i in seen for s in self.nodes[i].slot_variables if s.original_node in seen}
                    - seen
                    - blocked
                )
                seen |= late
                queue.extend(late)
        return seen

    def resolve(self, path: Sequence[str]) -> int | None:
        """The node reached by following these local names from the root (any path, not only the first)."""
        nid = 0
        for name in path:
            child = next((c.node_id for c in self.nodes[nid].children if c.local_name == name), None)
            if child is None:
                return None
            nid = child
        return nid

    def parents(self) -> dict[int, list[tuple[int, str]]]:
        """node id -> [(parent id, local name)] for every edge into it."""
        out: dict[int, list[tuple[int, str]]] = {}
        for i, n in enumerate(self.nodes):
            for c in n.children:
                out.setdefault(c.node_id, []).append((i, c.local_name))
        return out

    def checkpoint_values(self) -> list[bool]:
        """has_checkpoint_values as TF computes it: the node or anything below it has values."""
        values = [n.has_own_values for n in self.nodes]
        parents = self.parents()
        queue = deque(i for i, v in enumerate(values) if v)
        while queue:
            for parent, _ in parents.get(queue.popleft(), ()):
                if not values[parent]:
                    values[parent] = True
                    queue.append(parent)
        return values

    def recompute_checkpoint_values(self) -> None:
        """Refresh has_checkpoint_values where the field is present (a stale false skips restores)."""
        for node, value in zip(self.nodes, self.checkpoint_values()):
            if node.has_checkpoint_values is not None:
                node.has_checkpoint_values = value

    def canonical_order(self) -> list[int]:
        """Node ids in the order TF numbers them: BFS, then slot nodes by optimizer, then the rest."""
        order = list(self.first_paths())  # dict order is discovery order
        placed = set(order)
        for nid in list(order):
            for s in self.nodes[nid].slot_variables:
                if s.slot_node not in placed:
                    placed.add(s.slot_node)
                    order.append(s.slot_node)
        return order + [i for i in range(len(self.nodes)) if i not in placed]

    def keep_only(self, keep: Sequence[int]) -> None:
        """Keep these nodes in this order (node 0 first), dropping edges and slot references to the rest."""
        new_id = {old: new for new, old in enumerate(keep)}
        if new_id.get(0) != 0:
            raise PlanError("the root object cannot be removed")
        nodes = [self.nodes[old] for old in keep]
        for n in nodes:
            n.children = [Child(new_id[c.node_id], c.local_name, c.extra) for c in n.children if c.node_id in new_id]
            n.slot_variables = [
                SlotVariable(new_id[s.original_node], s.slot_name, new_id[s.slot_node], s.extra)
                for s in n.slot_variables
                if s.original_node in new_id and s.slot_node in new_id
            ]
        self.nodes = nodes

    def prefixes_by_node(self) -> dict[Node, str]:
        return {self.nodes[i]: p for i, p in self.key_prefixes().items()}

    def attributes(self) -> Iterable[tuple[int, Attribute]]:
        for i, n in enumerate(self.nodes):
            for a in n.attributes:
                yield i, a

    def describe(self, nid: int, paths: dict[int, Path] | None = None) -> str:
        """`node 7 (model/dense/kernel)` for messages."""
        paths = self.first_paths() if paths is None else paths
        return f"node {nid} ({path_string(paths[nid]) or '(root)'})" if nid in paths else f"node {nid}"


def _known_size(proto) -> int:
    known = type(proto)()
    known.CopyFrom(proto)
    known.DiscardUnknownFields()
    return known.ByteSize()


def _add(repeated, extra: bytes, **fields) -> None:
    message = repeated.add(**fields)
    if extra:
        message.MergeFromString(extra)
