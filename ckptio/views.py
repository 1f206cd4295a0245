"""Views of a checkpoint for comparing two of them: each tensor's key, object paths, full_name and slot owner.

A TF2 object graph is a DAG, so one variable can be reached by several paths (Keras 3 stores a model
weight under `optimizer/_trainable_variables/0/...` and also reaches it as `model/dense/_kernel`). Each
path is written in key form, `<path>/.ATTRIBUTES/<attribute>`, so that a path, a key and a rename rule all
speak one language. Paths through an optimizer are kept only for nodes nothing else reaches: an
optimizer's `_trainable_variables/i` is a list position that shifts when the model changes.

    view(ckpt) -> View            every tensor as a TensorView
    match(a, b, rules) -> Match   pairs of tensors that are the same variable, and how they were paired
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, replace

from .bundle.naming import OBJECT_GRAPH_KEY
from .errors import PlanError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (type checkers honour the name)
if TYPE_CHECKING:
    from .bundle.entry import Entry

MAX_PATHS = 8  # alternative paths kept per node; real graphs have two or three
ATTRIBUTES = "/.ATTRIBUTES/"  # between an object path and its attribute in key-form names


@dataclass(frozen=True, slots=True)
class TensorView:
    """One tensor as the matcher sees it."""

    key: str
    entry: Entry
    paths: tuple[str, ...]  # key-form object paths (none for name-based tensors)
    full_name: str
    slot_of: tuple[str, str] | None  # (variable key, slot name) when an optimizer slot of a known variable

    def names(self) -> set[str]:
        """What it may be matched by: its paths, and its key unless that is an alias through an optimizer
        (`optimizer/_trainable_variables/2` names whatever weight is third, in either checkpoint)."""
        return set(self.paths) | ({self.key} if not self.paths or self.key in self.paths else set())


class View:
    """The tensors of one checkpoint (the object graph tensor excluded), keyed by bundle key."""

    def __init__(self, ckpt, tensors: dict[str, TensorView], object_based: bool):
        self.ckpt, self.tensors, self.object_based = ckpt, tensors, object_based

    def find(self, name: str) -> list[str]:
        """Keys of the tensors that `name` names: a key, an object path (with or without
        `/.ATTRIBUTES/...`, trailing `/` allowed) or a full_name."""
        name = name.rstrip("/")
        out = []
        for key, t in self.tensors.items():
            forms = {key, t.full_name} | set(t.paths)
            forms |= {p.partition(ATTRIBUTES)[0] for p in t.paths}
            if name in forms:
                out.append(key)
        return out


def view(ckpt) -> View:
    """Build the view of an open Checkpoint; reads only the index and the object graph."""
    entries = {k: e for k, e in ckpt.entries().items() if k != OBJECT_GRAPH_KEY}
    data = ckpt.object_graph_bytes
    if data is None:
        return View(ckpt, _name_based(entries), False)
    return View(ckpt, _object_based(ckpt, entries, data), True)


def _name_based(entries: dict) -> dict[str, TensorView]:
    from .optimizer_keys import SLOT, classify

    roles = classify(entries)
    out = {}
    for key, entry in entries.items():
        role, var = roles[key]
        slot_of = (var, key[len(var) + 1 :]) if role == SLOT and var is not None and key.startswith(var + "/") else None
        out[key] = TensorView(key, entry, (), key, slot_of)
    return out


def _object_based(ckpt, entries: dict, data: bytes) -> dict[str, TensorView]:
    from .objgraph import ObjectGraph, attribute_key, find_optimizers, owned_keys, path_string

    graph = ObjectGraph.parse(data, path=ckpt.path)
    owned = owned_keys(graph, set(entries))
    node_paths = _all_paths(graph, set(find_optimizers(graph)))
    slots = _slots(graph)
    key_of_node: dict[int, str] = {}
    out = {}
    for nid, a in graph.attributes():
        for key, suffix in owned.get(a.checkpoint_key, ()):
            if key in out:
                continue
            paths = [attribute_key(path_string(p), a.name) + suffix for p in node_paths.get(nid, ())]
            out[key] = TensorView(key, entries[key], tuple(dict.fromkeys(paths)), a.full_name, None)
            key_of_node.setdefault(nid, key)
    for key, entry in entries.items():  # tensors no attribute names: known by their key only
        out.setdefault(key, TensorView(key, entry, (), "", None))
    for var_node, slot_name, slot_node in slots:
        var_key = "" if var_node is None else key_of_node.get(var_node, "")
        slot_key = key_of_node.get(slot_node)
        if slot_key:  # an unknown variable ("") pairs with nothing
            out[slot_key] = replace(out[slot_key], slot_of=(var_key, slot_name))
    return out


def _all_paths(graph, optimizers: set[int]) -> dict[int, list[tuple[str, ...]]]:
    """Up to MAX_PATHS paths from the root to each node; paths through an optimizer only if no other exists."""
    found: dict[int, list[tuple[tuple[str, ...], bool]]] = {0: [((), False)]}
    queue: deque[tuple[int, tuple[str, ...], bool]] = deque([(0, (), False)])
    while queue:
        nid, path, via_opt = queue.popleft()
        for c in graph.nodes[nid].children:
            have = found.setdefault(c.node_id, [])
            item = (path + (c.local_name,), via_opt or c.node_id in optimizers)
            # Capped per kind, so that short optimizer aliases cannot crowd out the model's own paths;
            # the caps also end cycles.
            if sum(via == item[1] for _, via in have) >= MAX_PATHS or len(path) >= 64:
                continue
            have.append(item)
            queue.append((c.node_id, *item))
    out = {}
    for nid, items in found.items():
        direct = [p for p, via in items if not via]
        out[nid] = direct or [p for p, _ in items]
    return out


def _slots(graph) -> list[tuple[int | None, str, int]]:
    """(variable node or None if unknown, slot name, slot node) from slot_variables and Keras optimizers' slot lists."""
    out = [(s.original_node, s.slot_name, s.slot_node) for n in graph.nodes for s in n.slot_variables]
    by_full_name: dict[str, list[int]] = {}
    for nid, a in graph.attributes():
        if a.full_name:
            by_full_name.setdefault(a.full_name, []).append(nid)
    for node in graph.nodes:
        # Keras optimizers keep slots in lists (`_momentums/i`, `_velocities/i`, ...). Keras 3 also lists
        # the variables (`_trainable_variables/i`, in step); tf_keras names each slot after its variable
        # (`Adam/m/dense/kernel`). A slot whose variable cannot be told is still a slot: it must not be
        # paired by its list position.
        children = {c.local_name: c.node_id for c in node.children}
        if "_variables" not in children or "_iterations" not in children:
            continue
        variables = _list_items(graph, children["_trainable_variables"]) if "_trainable_variables" in children else []
        for name, nid in children.items():
            if name in ("_trainable_variables", "_variables", "_trainable_variables_indices"):
                continue
            items = _list_items(graph, nid)
            if not items or not all(graph.nodes[i].attributes for i in items):
                continue
            if len(items) == len(variables):
                out.extend((v, name, s) for v, s in zip(variables, items))
                continue
            for s in items:
                owner = graph.nodes[s].attributes[0].full_name.split("/", 2)[2:]  # `Adam/m/<variable>`
                found = by_full_name.get(owner[0], []) if owner else []
                out.append((found[0] if len(found) == 1 else None, name, s))
    return out


def _list_items(graph, nid: int) -> list[int]:
    """The elements of a list node (children named 0, 1, ...), or [] if it is not one."""
    children = graph.nodes[nid].children
    if not children or [c.local_name for c in children] != [str(i) for i in range(len(children))]:
        return []
    return [c.node_id for c in children]


# -- matching -------------------------------------------------------------------------------------

MAP, PATH, KEY, FULL_NAME, SLOT = "map", "path", "key", "full_name", "slot"


class Match:
    """Pairs (a key, b key, how) found between two views, and what was left on each side."""

    def __init__(self, pairs: list[tuple[str, str, str]], a: View, b: View, shadowed=()):
        self.pairs = pairs
        used_a, used_b = {p[0] for p in pairs}, {p[1] for p in pairs}
        self.only_a = sorted(k for k in a.tensors if k not in used_a)
        self.only_b = sorted(k for k in b.tensors if k not in used_b)
        # (a key, b key, how): an a tensor left unpaired that would have matched (how) a b tensor a --map
        # rule gave to another a tensor; fit refuses these rather than drop the a tensor without a word.
        self.shadowed = list(dict.fromkeys(s for s in shadowed if s[0] not in used_a))  # in tier order


def match(a: View, b: View, rules=None, *, a_label: str = "A", b_label: str = "B") -> Match:
    """Pair each tensor of b with at most one tensor of a; the first way that finds a partner wins:
    a's names renamed by `rules` (a transform.Rename), a shared object path, the same key, a's key equal to
    b's full_name (a name-based a into an object-based b, or the reverse); an optimizer slot pairs with the
    slot of the same name of its variable's partner. Two candidates for one tensor raise PlanError."""
    pairs: dict[str, tuple[str, str]] = {}  # b key -> (a key, how)
    used: set[str] = set()
    shadowed: list[tuple[str, str, str]] = []
    renamed = _renamed(a, rules)
    plain_a = [k for k, t in a.tensors.items() if t.slot_of is None and k not in renamed]
    plain_b = [k for k, t in b.tensors.items() if t.slot_of is None]

    def tier(how: str, a_names: dict[str, set[str]], b_names) -> None:
        index: dict[str, set[str]] = {}
        for ak, names in a_names.items():
            if ak not in used:
                for n in names:
                    index.setdefault(n, set()).add(ak)
        claims: dict[str, str] = {}
        for bk in plain_b:
            if bk in pairs:
                if pairs[bk][1] == MAP:  # a rule took it: another a tensor matching it would be dropped
                    shadowed.extend((ak, bk, how) for n in b_names(bk) for ak in index.get(n, ()))
                continue
            found = sorted({ak for n in b_names(bk) for ak in index.get(n, ())})
            if len(found) > 1:
                raise PlanError(
                    f"{b_label} tensor {bk!r} is matched ({how}) by two {a_label} tensors: "
                    f"{found[0]!r} and {found[1]!r}; add --map rules to choose",
                    key=bk,
                )
            if found:
                if found[0] in claims:
                    raise PlanError(
                        f"{a_label} tensor {found[0]!r} matches ({how}) both {claims[found[0]]!r} and "
                        f"{bk!r}; add --map rules to choose",
                        key=found[0],
                    )
                claims[found[0]] = bk
        for ak, bk in claims.items():
            pairs[bk] = (ak, how)
            used.add(ak)

    bt = b.tensors
    if renamed:  # a rule's NEW may name a b tensor by its object path, without `/.ATTRIBUTES/...`
        tier(MAP, renamed, lambda bk: bt[bk].names() | {p.partition(ATTRIBUTES)[0] for p in bt[bk].paths})
    tier(PATH, {k: set(a.tensors[k].paths) for k in plain_a}, lambda bk: set(bt[bk].paths))
    tier(KEY, {k: {k} & a.tensors[k].names() for k in plain_a}, lambda bk: {bk} & bt[bk].names())
    if a.object_based != b.object_based:
        if a.object_based:  # b name-based: a's full_names against b's keys
            names = _unique_full_names(a)
            tier(FULL_NAME, {k: {n} for n, k in names.items() if k in plain_a}, lambda bk: {bk})
        else:
            names = {k: n for n, k in _unique_full_names(b).items()}
            tier(FULL_NAME, {k: {k} for k in plain_a}, lambda bk: {names[bk]} if bk in names else set())
    _pair_slots(a, b, pairs, used)
    return Match([(ak, bk, how) for bk, (ak, how) in sorted(pairs.items())], a, b, shadowed)


def _renamed(a: View, rules) -> dict[str, set[str]]:
    """a key -> its names after the rules, for the tensors some rule applies to; unused rules raise."""
    if rules is None:
        return {}
    used, out = set(), {}
    for key, t in a.tensors.items():
        if t.slot_of is not None:
            continue
        names = set()
        for name in sorted(t.names()):
            new, i = rules.rename(name)
            path, sep, attribute = name.partition(ATTRIBUTES)
            if i is None and sep and not rules.regex:
                # An exact rule written as the object path `ls --objects` shows (no `/.ATTRIBUTES/...`):
                # scope rules already matched the key form, so only an exact rule can match here.
                new, i = rules.rename(path)
                if i is not None and ATTRIBUTES not in new:
                    new += ATTRIBUTES + attribute
            if i is not None:
                used.add(i)
                names.add(new)
        if names:
            out[key] = names
    unused = [f"{o}={n}" for i, (o, n) in enumerate(rules.rules) if i not in used]
    if unused and not rules.allow_unmatched:
        raise PlanError("rename rule matches no tensor: " + ", ".join(unused))
    return out


def _unique_full_names(v: View) -> dict[str, str]:
    """full_name -> key, for full_names only one tensor has (TF's own fallback lets the last one win)."""
    seen: dict[str, list[str]] = {}
    for key, t in v.tensors.items():
        if t.full_name and t.slot_of is None:
            seen.setdefault(t.full_name, []).append(key)
    return {n: keys[0] for n, keys in seen.items() if len(keys) == 1}


def _pair_slots(a: View, b: View, pairs: dict, used: set) -> None:
    """A slot of b's variable V pairs with the same-named slot of the a variable paired with V."""
    a_slots: dict[tuple[str | None, str], str] = {t.slot_of: k for k, t in a.tensors.items() if t.slot_of is not None}
    partner = {bk: ak for bk, (ak, _) in pairs.items()}
    for bk, t in b.tensors.items():
        if t.slot_of is None or bk in pairs:
            continue
        var, name = t.slot_of
        ak = a_slots.get((partner.get(var), name))
        if ak is not None and ak not in used:
            pairs[bk] = (ak, SLOT)
            used.add(ak)
