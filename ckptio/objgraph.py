"""TF2 object graph (`_CHECKPOINTABLE_OBJECT_GRAPH`): parse, edit, re-key, check against the bundle.

TensorFlow names every object in an object-based checkpoint by the edges leading to it from the
root (FORMAT.md §8). A tensor's bundle key is the escaped *first breadth-first path* to its node
plus `/.ATTRIBUTES/<name>`, so any edit of the structure changes keys elsewhere; this module makes
such edits and re-derives the keys the way TensorFlow's saver would, so that the graph and the
bundle stay consistent (FORMAT.md §10.6).

    ObjectGraph.parse(bytes) / .serialize()    byte-identical round trip of an unedited graph
    find_optimizers(graph)                     optimizer node ids, found through the graph
    plan_object_based(ckpt, steps)             {source key: output key} and the new graph bytes
    check_consistency(ckpt)                    graph keys vs bundle keys, as messages

This module is the front: the pieces live below it, each importing only the ones under it:
objgraph_model (values, paths, parse/serialize) <- objgraph_check (optimizers, ownership,
consistency), objgraph_select (names for selection) and objgraph_moves (edge moves) <- objgraph_rekey
(the graph under edit, re-keyed after each change) <- objgraph_strip and objgraph_rename <-
objgraph_edit (GraphPlan: the steps applied, select by object path).
"""

from __future__ import annotations

from collections.abc import Sequence

from .errors import PlanError
from .objgraph_check import check_consistency, find_optimizers, graph_problems, owned_keys, resolve_user_path  # noqa: F401
from .objgraph_edit import GraphPlan
from .objgraph_model import (  # noqa: F401
    ATTRIBUTES_SEP,
    OBJECT_ATTRIBUTES,
    OPTIMIZER_SLOT,
    SERIALIZE_TO_TENSORS,
    Attribute,
    Child,
    Node,
    ObjectGraph,
    Path,
    SlotVariable,
    attribute_key,
    escape_path_element,
    parse_path,
    path_string,
    slot_prefix,
    unescape_path_element,
)

_ATTRIBUTES_SEP = ATTRIBUTES_SEP  # old names, for callers not yet moved
_resolve_user_path = resolve_user_path


# -- planning a rewrite -------------------------------------------------------------------------------


def plan_object_based(ckpt, steps: Sequence, data: bytes | None = None) -> tuple[dict[str, str], bytes]:
    """Apply pipeline steps to the object graph: ({source key: output key} to keep, new graph bytes).

    Steps are the frozen values of ckptio.transform (Select, StripOptimizer, Rename, Cast, MapNames),
    matched by class name so that this module does not import the pipeline. Anything that cannot be
    done while keeping graph and bundle consistent raises PlanError naming the key.
    """
    data = ckpt.object_graph_bytes if data is None else data  # callers that read it already pass it
    if data is None:
        raise PlanError("not an object-based checkpoint (no _CHECKPOINTABLE_OBJECT_GRAPH)", path=ckpt.path)
    plan = GraphPlan(ObjectGraph.parse(data, path=ckpt.path), ckpt.entries())
    for step in steps:
        plan.apply(step)
    return plan.result()


def object_roles(ckpt) -> dict[str, str]:
    """Bundle key -> "optimizer" or "step" for what a strip drops (a step only with --drop-global-step);
    keys absent here are weights. Empty without a graph. A strip that would refuse to lose model weights
    still gives them as weights."""
    from .transform import StripOptimizer

    data = ckpt.object_graph_bytes
    if data is None:
        return {}
    dropped = []
    for keep_step in (True, False):
        plan = GraphPlan(ObjectGraph.parse(data, path=ckpt.path), ckpt.entries())
        plan.strip(StripOptimizer(keep_global_step=keep_step), refuse_weight_loss=False)
        dropped.append(plan.dropped_sources() - plan.stranded)
    roles = dict.fromkeys(dropped[1] - dropped[0], "step")
    roles.update(dict.fromkeys(dropped[0], "optimizer"))
    return roles


def optimizer_keys(ckpt) -> set[str]:
    """Bundle keys that stripping the optimizer would drop (for `ls` roles); empty without a graph."""
    return {k for k, role in object_roles(ckpt).items() if role == "optimizer"}


__all__ = [
    "ObjectGraph",
    "Node",
    "Child",
    "Attribute",
    "SlotVariable",
    "escape_path_element",
    "unescape_path_element",
    "path_string",
    "parse_path",
    "attribute_key",
    "slot_prefix",
    "find_optimizers",
    "graph_problems",
    "check_consistency",
    "plan_object_based",
    "optimizer_keys",
    "object_roles",
]
