"""Names for selecting in a TF2 object graph: a variable is named by the object paths that reach it.

`--include` / `--exclude` on an object-based checkpoint mean what `ckptio ls --objects` shows, not
the storage keys: TF keys a variable by its *first* breadth-first path, and Keras 3 makes that
path run through the optimizer (`optimizer/_trainable_variables/0/...`, FORMAT.md §9.4), so a
key says little about where the user sees the weight. Instead every variable gets one name per
path to it (its key as if that path were first): it is kept when a name is included (or there
are no includes) and no name is excluded. Two rules keep this meaning stable whatever else the
plan does (strip before or after, renames):

- An optimizer's references to model weights (Keras 3 `_trainable_variables/i`, a compiled
  model's `optimizer` edge) do not name a variable that is reachable without passing through an
  optimizer: those weights are the model's, wherever TF happens to key them.
- Slot variables (`.OPTIMIZER_SLOT`) are named by their variable's paths and their optimizer's
  paths together, as TF keys them; and, living in their optimizer, they are kept only where the
  optimizer's own path (`optimizer/`) is kept too.
"""

from __future__ import annotations

from .errors import UnsupportedError
from .objgraph_model import ATTRIBUTES_SEP, Attribute, ObjectGraph, Path, attribute_key, path_string, slot_prefix

# Keras graphs have a handful of paths per node (aliases such as layer-0 / layer_with_weights-0);
# the cap only stops a crafted graph from making path enumeration exponential.
PATH_LIMIT = 200_000


def object_paths(
    graph: ObjectGraph, optimizers: set[int], limit: int = PATH_LIMIT
) -> tuple[dict[int, list[Path]], dict[int, list[Path]]]:
    """(the paths that name each node, every simple path to it from the root).

    A node's naming paths are those that pass through no optimizer, or all of them if there are none.
    """
    own: dict[int, list[Path]] = {0: [()]}
    via: dict[int, list[Path]] = {}  # paths that pass through an optimizer on the way
    stack: list[tuple[int, Path, tuple[int, ...], bool]] = [(0, (), (0,), False)]
    count = 0
    while stack:
        nid, names, ids, through = stack.pop()
        through = through or (nid in optimizers and nid != 0)
        for c in graph.nodes[nid].children:
            if c.node_id in ids:
                continue  # simple paths only: graphs may hold cycles (Checkpoint(root=m))
            count += 1
            if count > limit:
                raise UnsupportedError(
                    f"the object graph has more than {limit} object paths; ckptio cannot select by object path in it"
                )
            path = names + (c.local_name,)
            (via if through else own).setdefault(c.node_id, []).append(path)
            stack.append((c.node_id, path, ids + (c.node_id,), through))
    naming = dict(via)
    naming.update(own)  # the model's own paths win over an optimizer's references
    every = {nid: own.get(nid, []) + via.get(nid, []) for nid in set(own) | set(via)}
    return naming, every


def attribute_names(
    graph: ObjectGraph,
    optimizers: set[int],
    current: dict[Attribute, list[str]],
) -> dict[Attribute, list[list[list[str]]]]:
    """attribute -> for each of its tensors, groups of names; a tensor is kept when every group is.

    The first group holds the names a filter sees (see the module docstring). `current` gives each
    attribute's tensors under their present bundle names; a key that no path explains (renamed
    verbatim earlier, or on a node no path reaches) is one of the names too. A slot variable has a
    second group, its optimizer's paths (`optimizer/`): a slot lives in its optimizer, so that
    `--exclude '^optimizer/'` drops it and `--include '^model/'` keeps it only when the model
    holds the optimizer (as Keras 3 optimizers, which key slots under the optimizer, behave).
    """
    naming, every = object_paths(graph, optimizers)
    prefixes = graph.key_prefixes()
    stems = _stems(graph, naming)
    all_stems = _stems(graph, every)
    owners: dict[int, list[str]] = {}  # slot node -> its optimizers' paths
    for nid, node in enumerate(graph.nodes):
        for s in node.slot_variables:
            owners.setdefault(s.slot_node, []).extend(stem + "/" for stem in stems.get(nid, ()))
    out = {}
    for nid, a in graph.attributes():
        tensors = current.get(a)
        if not tensors:
            continue
        tail = _tail(a, prefixes.get(nid))
        groups = []
        for tensor in tensors:
            suffix = tensor[len(a.checkpoint_key) :] if tensor.startswith(a.checkpoint_key) else ""
            own = [stem + tail + suffix for stem in stems.get(nid, ())]
            if tensor not in own and not any(tensor == stem + tail + suffix for stem in all_stems.get(nid, ())):
                own.append(tensor)  # an opaque key: the user sees it in `ls`, so it names the tensor
            groups.append([own, owners[nid]] if owners.get(nid) else [own])
        out[a] = groups
    return out


def _stems(graph: ObjectGraph, paths: dict[int, list[Path]]) -> dict[int, list[str]]:
    """node id -> its paths in key form; slot nodes get `var/.OPTIMIZER_SLOT/opt/slot` for each pair."""
    stems = {nid: [path_string(p) for p in ps] for nid, ps in paths.items()}
    for nid, node in enumerate(graph.nodes):  # slot nodes are reached through slot_variables only
        for s in node.slot_variables:
            have = stems.setdefault(s.slot_node, [])
            have.extend(
                n
                for n in (
                    slot_prefix(v, o, s.slot_name) for v in stems.get(s.original_node, ()) for o in stems.get(nid, ())
                )
                if n not in have
            )
    return stems


def _tail(a: Attribute, prefix: str | None) -> str:
    """The `/.ATTRIBUTES/...` part of an attribute's key."""
    if prefix is not None and a.checkpoint_key.startswith(prefix + ATTRIBUTES_SEP):
        return a.checkpoint_key[len(prefix) :]
    return attribute_key("", a.name)
