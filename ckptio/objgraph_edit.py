"""Edits of a TF2 object graph for a rewrite: select, strip optimizer, rename paths, map names.

Every edit changes the structure first and then re-keys: a node whose key prefix (its first BFS
path) moved gets its attributes' keys moved with it, so bundle keys are always what TensorFlow
would write for the new structure (FORMAT.md §8, §10.6). Each attribute remembers the bundle key
it was read from, which is how the final {source key: output key} mapping comes out.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from .bundle.naming import OBJECT_GRAPH_KEY
from .errors import PlanError, Remedy, UnsupportedError
from .objgraph_check import find_optimizers, owned_keys, resolve_user_path
from .objgraph_model import ATTRIBUTES_SEP, Attribute, Node, ObjectGraph, Path, parse_path
from .objgraph_moves import derive_moves, edge_at, move_edges, reroot_at, reroot_under
from .objgraph_select import attribute_names
from .transform import Rename

# Root-level step counters that --drop-global-step removes (TF1-eager `optimizer_step`, TF-Agents `train_step`).
STEP_EDGES = {"global_step", "step", "train_step", "optimizer_step"}


class GraphPlan:
    """An object graph being edited, and the bundle keys it is consistent with."""

    def __init__(self, graph: ObjectGraph, entries: dict):
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

    # -- dispatch ------------------------------------------------------------------------------

    def apply(self, step) -> None:
        """Apply one ckptio.transform step (matched by class name: this module does not import it)."""
        kind = type(step).__name__
        if kind == "Cast":  # dtypes only; the graph does not record them
            return
        handler = {
            "Select": self.select,
            "StripOptimizer": self.strip,
            "Rename": self.rename,
            "MapNames": self.map_names,
        }.get(kind)
        if handler is None:
            raise PlanError(f"step {kind} is not supported on object-based (TF2) checkpoints")
        handler(step)

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

    def _edit(self, change: Callable[[], None], *, may_lose_values: bool = True) -> None:
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

    def _remove(self, doomed: set[int]) -> None:
        """Delete nodes with every edge and slot reference into them (ids are compacted)."""
        if 0 in doomed:
            raise PlanError("the root object cannot be removed")
        g = self.graph
        g.keep_only([i for i in range(len(g.nodes)) if i not in doomed])

    def _new_node(self) -> Node:
        return Node(has_checkpoint_values=False if self.new_nodes_have_field else None)

    # -- select ---------------------------------------------------------------------------------

    def _tensors(self, a: Attribute) -> list[tuple[str, str]]:
        """(current bundle name, suffix) of the tensors behind an attribute."""
        return [(a.checkpoint_key + suffix, suffix) for _, suffix in self.owned.get(a.source, ())]

    def select(self, step) -> None:
        """Keep what step keeps by object path (objgraph_select); emptied nodes and optimizers go too."""
        g = self.graph
        current = {a: [n for n, _ in self._tensors(a)] for _, a in g.attributes()}
        named = attribute_names(g, self._optimizer_ids(), current)
        source = {a: [k for k, _ in self.owned.get(a.source, ())] for a in current}  # keys as `ls` showed them
        _check_patterns(step, named, current, source, list(self.loose.values()))
        self.loose = {s: d for s, d in self.loose.items() if step.keeps(d)}
        drop = set()
        for a, per_tensor in named.items():
            kept = [all(step.keeps_any(names) for names in groups) for groups in per_tensor]
            if not any(kept):
                drop.add(a)
            elif not all(kept):
                raise PlanError(f"{current[a]} are one saved object; select all of them or none", key=current[a][0])
        owning = self._owning_optimizers()
        self._drop_attributes(drop)
        # An optimizer whose own state is all gone holds only references to model weights (Keras 3
        # `_trainable_variables`): it goes, as a strip would remove it, so keys follow the model.
        emptied = owning - self._owning_optimizers()
        if emptied:
            self._edit(lambda: self._remove({i for i, n in enumerate(self.graph.nodes) if n in emptied}))

    def _optimizer_ids(self) -> set[int]:
        """Optimizers of the source graph still present, and any the graph shows now."""
        g = self.graph
        return {i for i, n in enumerate(g.nodes) if n in self.optimizers} | set(find_optimizers(g))

    def _owning_optimizers(self) -> set[Node]:
        """Optimizers that hold values of their own: values no other path reaches."""
        g = self.graph
        live = g.live()
        out = set()
        for opt in self._optimizer_ids():
            if opt in live and any(g.nodes[i].has_own_values for i in live - g.live({opt})):
                out.add(g.nodes[opt])
        return out

    def _drop_attributes(self, drop: set[Attribute]) -> None:
        """Remove attributes, then nodes left empty by that (and their edges), then unreachable nodes."""
        if not drop:
            return
        emptied = set()
        for node in self.graph.nodes:
            if any(a in drop for a in node.attributes):
                node.attributes = [a for a in node.attributes if a not in drop]
                if not node.attributes:
                    emptied.add(node)
        self._edit(lambda: self._prune(emptied))

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
        self._remove(doomed)

    # -- strip ----------------------------------------------------------------------------------

    def strip(self, step, *, refuse_weight_loss: bool = True) -> None:
        """Remove optimizers (and the step counter or EMA if asked); keep what the model also reaches."""
        g = self.graph
        doomed = self._optimizer_ids()
        extra = tuple(getattr(step, "optimizer_names", ()) or ())
        if extra:
            doomed |= set(find_optimizers(g, extra))
        if not getattr(step, "keep_global_step", True):
            doomed |= {c.node_id for c in g.nodes[0].children if c.local_name in STEP_EDGES}
            doomed |= {i for i, a in g.attributes() if a.full_name == "global_step"}
        self._check_stranded(doomed, refuse_weight_loss)
        if getattr(step, "ema", "keep") == "promote":
            self._promote_ema(doomed)
        if doomed:
            self._edit(lambda: self._remove(doomed))

    def _check_stranded(self, doomed: set[int], refuse: bool) -> None:
        """Refuse to lose a model weight that only an optimizer's `_trainable_variables` list reaches.

        Keras 3 leaves layers held in Python lists or dicts out of tf.train.Checkpoint's graph; the
        optimizer's list of trainable variables is then the only way to them (FORMAT-models.md §2.1).
        """
        g = self.graph
        lost = g.live() - g.live(doomed)
        weights = [
            a
            for opt in doomed
            for c in g.nodes[opt].children
            if c.local_name == "_trainable_variables"
            for w in g.nodes[c.node_id].children
            if w.node_id in lost
            for a in g.nodes[w.node_id].attributes
        ]
        self.stranded = {k for a in weights for k, _ in self.owned.get(a.source, ())}
        if weights and refuse:
            raise UnsupportedError(
                f"stripping the optimizer would lose {len(weights)} model weights (this one among them) that only "
                "the optimizer's list of trainable variables reaches (Keras 3 leaves layers held in Python lists "
                "or dicts out of tf.train.Checkpoint); keep the optimizer, or drop what you choose with --exclude",
                key=weights[0].checkpoint_key,
            )

    def _promote_ema(self, optimizers: set[int]) -> None:
        """Take each model weight's value from its optimizer-kept moving average (Keras use_ema)."""
        g = self.graph
        pairs = []
        for opt in optimizers:
            kids = {c.local_name: c.node_id for c in g.nodes[opt].children}
            if "_model_variables_moving_average" not in kids or "_trainable_variables" not in kids:
                continue
            # Keras 3 builds both lists from the same variable list, so index i pairs with index i.
            averages = {c.local_name: c.node_id for c in g.nodes[kids["_model_variables_moving_average"]].children}
            for c in g.nodes[kids["_trainable_variables"]].children:
                if c.local_name in averages:
                    pairs.append((c.node_id, averages[c.local_name]))
        if not pairs:
            raise PlanError(
                "--ema promote: this object graph has no optimizer-kept moving averages that "
                "ckptio can pair with model weights"
            )
        for weight, average in pairs:
            w, m = _value(g.nodes[weight]), _value(g.nodes[average])
            if w is None or m is None:
                continue
            ew, em = self.entries.get(w.source), self.entries.get(m.source)
            if ew is None or em is None or (ew.dtype, ew.shape) != (em.dtype, em.shape):
                raise PlanError("moving average differs in dtype or shape from its weight", key=m.source)
            w.source = m.source  # the weight's key now carries the average's bytes

    # -- rename ---------------------------------------------------------------------------------

    def rename(self, step) -> None:
        """Scope rules move edges; exact and regex rules rename keys and the structure follows."""
        used: set[int] = set()
        new_loose = {}
        for src, name in self.loose.items():
            new, rule = step.rename(name)
            if rule is not None:
                used.add(rule)
            new_loose[src] = new
        self.loose = new_loose
        scopes = [] if step.regex else [(i, o, n) for i, (o, n) in enumerate(step.rules) if o.endswith("/")]
        if scopes:
            used |= self._move_scopes(scopes)
        singles = _single_rules(step, [i for i in range(len(step.rules)) if i not in {s[0] for s in scopes}])
        if singles:

            def fn(name: str) -> str:  # first matching rule wins, as for plain names
                for i, single in singles:
                    out, rule = single.rename(name)
                    if rule is not None:
                        used.add(i)
                        return out
                return name

            self._map_keys(fn)
        unused = [f"{o}={n}" for i, (o, n) in enumerate(step.rules) if i not in used]
        if unused and not step.allow_unmatched:
            raise PlanError(
                "rename rule matches no object or tensor: " + ", ".join(unused),
                remedy=Remedy("allow_unmatched", "accept"),
            )

    def _move_scopes(self, scopes) -> set[int]:  # returns the indices of the rules that matched
        """Literal `old/=new/` rules: move the edge at path old to path new (any path, aliases too)."""
        g = self.graph
        used, moves, reroot = set(), [], None
        for i, old, new in scopes:
            if ".OPTIMIZER_SLOT" in old:
                raise PlanError("slot variables are named after their variable and optimizer; rename those", key=old)
            if old == "/" or new == "/":
                if reroot is not None or len(scopes) > 1:
                    raise PlanError("moving the root ('/') must be the only rule of its rename step")
                reroot = (i, old, new)
                continue
            found = edge_at(g, old)
            if found is None or any(found[1] is m[1] for m in moves):
                continue  # unmatched, or an earlier rule moves this edge already (first match wins)
            parent, edge, via_alias = found
            target = parse_path(new)
            if via_alias and target[:1] == ("root",):
                target = target[1:]  # `root/` meant node 0 on both sides
            used.add(i)
            moves.append((parent, edge, target))
        if reroot is not None:
            i, old, new = reroot
            if old == "/":
                self._edit(lambda: reroot_under(g, parse_path(new), self._new_node), may_lose_values=False)
                used.add(i)
            else:
                nid = resolve_user_path(g, old)
                if nid is not None:
                    self._edit(lambda: reroot_at(g, nid), may_lose_values=False)
                    used.add(i)
        if moves:
            self._edit(lambda: move_edges(g, moves, self._new_node), may_lose_values=False)
        return used

    # -- map names (and exact / regex renames) -----------------------------------------------------

    def map_names(self, step) -> None:
        """MapNames(fn): fn renames (or drops, with None) bundle keys; objects move to match."""
        self._map_keys(step.fn)

    def _map_keys(self, fn: Callable[[str], str | None]) -> None:
        """Rename tensors by a function of their names and move objects so TF would write those names.

        Each object whose keys all move the same way moves as a whole (its edge is renamed); the
        result is checked by re-deriving every key, and PlanError names one that cannot be had.
        """
        new_loose = {}
        for src, name in self.loose.items():
            new = _call(fn, name)
            if new is not None:
                new_loose[src] = new
        self.loose = new_loose
        g = self.graph
        drop, target = set(), {}
        for _, a in g.attributes():
            tensors = self._tensors(a)
            if not tensors:
                continue  # names nothing in the bundle: leave it alone
            news = [_call(fn, name) for name, _ in tensors]
            if all(n is None for n in news):
                drop.add(a)
                continue
            heads = {
                n[: len(n) - len(s)] if n is not None and n.endswith(s) else None for n, (_, s) in zip(news, tensors)
            }
            if len(heads) != 1 or None in heads:
                raise PlanError(
                    f"{[t for t, _ in tensors]} are one saved object and must be renamed alike", key=tensors[0][0]
                )
            head = heads.pop()
            if head != a.checkpoint_key:
                target[a] = head
        self._drop_attributes(drop)
        if not target:
            return
        prefixes, paths = g.key_prefixes(), g.first_paths()
        want: dict[int, Path] = {}
        canonical = set()
        for nid, a in g.attributes():
            prefix = prefixes.get(nid)
            if prefix is None or not a.checkpoint_key.startswith(prefix + ATTRIBUTES_SEP):
                continue  # an opaque key: it is renamed verbatim below
            canonical.add(a)
            if nid not in paths:
                continue  # slot keys follow their variable and optimizer
            tail = a.checkpoint_key[len(prefix) :]
            new = target.get(a, a.checkpoint_key)
            if not new.endswith(tail):
                raise PlanError(
                    f"renaming {a.checkpoint_key!r} to {new!r} changes the attribute part {tail!r}; "
                    "only object paths can be renamed",
                    key=a.checkpoint_key,
                )
            path = parse_path(new[: len(new) - len(tail)])
            if want.setdefault(nid, path) != path:
                raise PlanError(
                    f"the attributes of object {prefix!r} would be renamed to different objects", key=a.checkpoint_key
                )
        moves = derive_moves(g, want)
        if moves:
            self._edit(lambda: move_edges(g, moves, self._new_node), may_lose_values=False)
        for a, new in target.items():
            if a.checkpoint_key == new:
                continue
            if a in canonical:
                raise PlanError(
                    f"no object structure makes TensorFlow write {new!r} here (it would write "
                    f"{a.checkpoint_key!r}); rename whole object paths instead",
                    key=new,
                )
            a.checkpoint_key = new


def _value(node: Node) -> Attribute | None:
    return next((a for a in node.attributes if a.name == "VARIABLE_VALUE"), None)


def _call(fn, name: str) -> str | None:
    new = fn(name)
    if new is not None and (not isinstance(new, str) or not new):
        raise PlanError(f"name function returned {new!r}", key=name)
    return new


def _single_rules(step, indices) -> list[tuple[int, object]]:
    """One-rule copies of a Rename step, so each rule keeps the step's own matching semantics."""
    return [(i, Rename((step.rules[i],), step.regex, allow_unmatched=True)) for i in indices]


def _check_patterns(step, names: dict, current: dict, source: dict, loose: list[str]) -> None:
    """Refuse a pattern that selects nothing by object path but matches a storage key or variable name.

    Filters mean object paths (`ls --objects`). A Keras 3 weight's key (`optimizer/_trainable_variables/0/...`,
    what plain `ls` shows) is not one of its paths, nor is its variable name (`encoder/kernel`, shown in
    parentheses by `ls --objects`): a pattern written from either would silently select nothing.
    """
    visible = set(loose)
    keyed: dict[str, str] = {}  # storage key -> the object path that names its tensor
    full: dict[str, str] = {}  # variable name -> the same
    for a, per_tensor in names.items():
        for key, src, groups in zip(current[a], source[a], per_tensor):
            for group in groups:
                visible.update(group)
            keyed[key] = keyed[src] = groups[0][0]  # the source key too: a strip before may have re-keyed it
            if a.full_name:
                full.setdefault(a.full_name, groups[0][0])
    for kind, patterns, compiled in (("include", step.include, step._inc), ("exclude", step.exclude, step._exc)):
        for pattern, regex in zip(patterns, compiled):
            hits = regex.match if step.glob else regex.search
            if any(hits(n) for n in visible):
                continue
            by_key = {path for key, path in keyed.items() if hits(key)}
            by_name = {path for name, path in full.items() if hits(name)}
            paths = sorted(by_key | by_name)
            if not paths:
                continue
            what = " and ".join(w for w, hit in (("storage keys", by_key), ("variable names", by_name)) if hit)
            target = (
                f"its object path is {paths[0]!r}"
                if len(paths) == 1
                else f"the {len(paths)} tensors it matches have object paths such as {paths[0]!r}"
            )
            raise PlanError(
                f"{kind} pattern {pattern!r} matches only {what}, no object path (filters on an "
                "object-based checkpoint match object paths, as `ckptio ls --objects` shows them); "
                f"{target}"
            )


def object_names(data: bytes, entries: dict) -> dict[str, list[str]]:
    """Source key -> the names a filter sees for its tensor (its object paths, as `ls --objects` shows them)."""
    plan = GraphPlan(ObjectGraph.parse(data), entries)
    g = plan.graph
    current = {a: [n for n, _ in plan._tensors(a)] for _, a in g.attributes()}
    out: dict[str, list[str]] = {}
    for a, per_tensor in attribute_names(g, plan._optimizer_ids(), current).items():
        for key, groups in zip(current[a], per_tensor):
            out[key] = groups[0]
    return out
