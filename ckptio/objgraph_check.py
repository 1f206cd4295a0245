"""Reading an object graph against a bundle: which nodes are optimizers, which bundle keys each
attribute owns, and what does not match (as verify and doctor report it)."""

from __future__ import annotations

import re
from collections.abc import Sequence

from .bundle.naming import OBJECT_GRAPH_KEY
from .errors import CorruptCheckpointError, PlanError
from .objgraph_model import ATTRIBUTES_SEP, Node, ObjectGraph, parse_path

# -- finding optimizers ------------------------------------------------------------------------------

_OPTIMIZER_EDGE = re.compile(r"(?:.+_)?optimizer")  # optimizer, generator_optimizer, ...


def _looks_like_optimizer(node: Node, names: set[str]) -> bool:
    if node.slot_variables:  # Keras 2 legacy / TF1-eager / OptimizerV2 slots
        return True
    if "_iterations" in names and ("_variables" in names or "_learning_rate" in names):
        return True  # tf_keras >= 2.11 and Keras 3 optimizers (FORMAT §9.3, §9.4)
    return "iter" in names and bool(names & {"learning_rate", "lr", "decay"})  # OptimizerV2 without slots


def find_optimizers(graph: ObjectGraph, paths: Sequence[str] = ()) -> list[int]:
    """Node ids of optimizers, found through the graph, never by key pattern (FORMAT §9.5).

    An optimizer is a node behind an edge `optimizer` / `*_optimizer` from the root or from one of
    its children (Keras models track theirs as `optimizer`), a node that owns slot_variables, or
    one with the children of a Keras optimizer (`_iterations` + `_variables`, `iter` + hypers).
    With `paths` (edge paths in key form, e.g. "optimizer" or "model/optimizer") exactly those
    nodes are returned; a path that names nothing raises PlanError.
    """
    if paths:
        chosen = []
        for text in paths:
            nid = resolve_user_path(graph, text)
            if nid is None:
                raise PlanError(f"no object at path {text!r} (see `ckptio ls --objects`)", key=text)
            if nid == 0:
                raise PlanError("the root object cannot be stripped as an optimizer", key=text)
            chosen.append(nid)
        return sorted(set(chosen))
    found: set[int] = set()
    for nid, path in graph.first_paths().items():
        node = graph.nodes[nid]
        if len(path) <= 1:
            found.update(c.node_id for c in node.children if _OPTIMIZER_EDGE.fullmatch(c.local_name))
        if _looks_like_optimizer(node, {c.local_name for c in node.children}):
            found.add(nid)
    found.discard(0)
    return sorted(found)


def resolve_user_path(graph: ObjectGraph, text: str) -> int | None:
    """A path as `ls --objects` prints it; a leading `root/` names node 0 unless a real edge is called so."""
    path = parse_path(text)
    nid = graph.resolve(path)
    if nid is None and path[:1] == ("root",):
        nid = graph.resolve(path[1:])
    return nid


# -- consistency ------------------------------------------------------------------------------------

# Legacy SaveableObjects name their tensors `<checkpoint_key>-<spec>` (MutableHashTable: -keys, -values).
# A saveable's tensors are keyed checkpoint_key + spec suffix: "-keys"/"-values" for tables,
# "_STATE" for tf.data iterators (ITERATOR -> ITERATOR_STATE).
_SPEC_SUFFIX = re.compile(r"[-_][^/]*")


def owned_keys(graph: ObjectGraph, keys: set[str]) -> dict[str, list[tuple[str, str]]]:
    """checkpoint_key -> [(bundle key, suffix)] of the tensors each attribute stands for."""
    exact = {a.checkpoint_key for _, a in graph.attributes()}
    out: dict[str, list[tuple[str, str]]] = {k: ([(k, "")] if k in keys else []) for k in exact}
    for key in sorted(keys - exact):
        # `a-b-keys` may belong to `a-b` or to `a`: try every cut, longest head first.
        for cut in (i for i in range(len(key) - 1, 0, -1) if key[i] in "-_"):
            head = key[:cut]
            if head in out and head not in keys and _SPEC_SUFFIX.fullmatch(key[cut:]):
                out[head].append((key, key[cut:]))
                break
    return out


def graph_problems(graph: ObjectGraph, keys: set[str]) -> list[str]:
    """What does not match between the graph and a bundle's keys (the graph's own key excluded)."""
    paths = graph.first_paths()
    owned = owned_keys(graph, keys)
    out = []
    for nid, a in graph.attributes():
        where = f"{graph.describe(nid, paths)} attribute {a.name!r}"
        if not owned[a.checkpoint_key]:
            out.append(f"{where}: checkpoint_key {a.checkpoint_key!r} is not in the bundle")
        if ATTRIBUTES_SEP[1:] not in a.checkpoint_key:
            out.append(f"{where}: checkpoint_key {a.checkpoint_key!r} lacks '.ATTRIBUTES/' (TF cannot restore it)")
    referenced = {k for pairs in owned.values() for k, _ in pairs}
    savers = tuple(n.registered_saver[1] + "/" for n in graph.nodes if n.registered_saver)
    for key in sorted(keys - referenced):
        if not (savers and key.startswith(savers)):  # a registered saver names its own tensors
            out.append(f"tensor {key!r} is in the bundle but no object graph attribute names it")
    for nid, (node, value) in enumerate(zip(graph.nodes, graph.checkpoint_values())):
        if node.has_checkpoint_values is False and value:
            out.append(
                f"{graph.describe(nid, paths)}: has_checkpoint_values is false but it has values "
                "(TF would silently skip restoring it)"
            )
    return out


def check_consistency(ckpt) -> list[str]:
    """Problems between an open Checkpoint's object graph and its tensors; [] if it has no graph."""
    data = ckpt.object_graph_bytes
    if data is None:
        return []
    try:
        graph = ObjectGraph.parse(data, path=ckpt.path)
    except CorruptCheckpointError as exc:
        return [exc.message]
    return graph_problems(graph, set(ckpt.entries()) - {OBJECT_GRAPH_KEY})
