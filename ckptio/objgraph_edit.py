"""Edits of a TF2 object graph for a rewrite: select, strip optimizer, rename paths, map names.

The graph and its re-keying are objgraph_rekey's; strip and rename are in objgraph_strip and
objgraph_rename; selection by object path is here.
"""

from __future__ import annotations

from .errors import PlanError
from .objgraph_model import Attribute, ObjectGraph
from .objgraph_rekey import KeyedGraph
from .objgraph_rename import map_keys, rename
from .objgraph_select import attribute_names
from .objgraph_strip import STEP_EDGES, strip  # STEP_EDGES: re-exported (cli/ls.py)
from .transform import Cast, MapNames, Rename, Select, Step, StripOptimizer

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (type checkers honour the name)
if TYPE_CHECKING:
    from typing import Any


class GraphPlan(KeyedGraph):
    """An object graph being edited by rewrite steps, and the bundle keys it is consistent with."""

    def apply(self, step: Step) -> None:
        """Apply one ckptio.transform step."""
        if isinstance(step, Cast):  # dtypes only; the graph does not record them
            return
        if isinstance(step, Select):
            self.select(step)
        elif isinstance(step, StripOptimizer):
            self.strip(step)
        elif isinstance(step, Rename):
            self.rename(step)
        elif isinstance(step, MapNames):
            self.map_names(step)
        else:
            raise PlanError(f"step {type(step).__name__} is not supported on object-based (TF2) checkpoints")

    def select(self, step: Select) -> None:
        """Keep what step keeps by object path (objgraph_select); emptied nodes and optimizers go too."""
        g = self.graph
        current = {a: [n for n, _ in self.tensors(a)] for _, a in g.attributes()}
        named = attribute_names(g, self.optimizer_ids(), current)
        source = {a: [k for k, _ in self.owned.get(a.source, ())] for a in current}  # keys as `ls` showed them
        _check_patterns(step, named, current, source, list(self.loose.values()))
        self.loose = {s: d for s, d in self.loose.items() if step.keeps(d)}
        drop: set[Attribute] = set()
        for a, per_tensor in named.items():
            kept = [all(step.keeps_any(names) for names in groups) for groups in per_tensor]
            if not any(kept):
                drop.add(a)
            elif not all(kept):
                raise PlanError(f"{current[a]} are one saved object; select all of them or none", key=current[a][0])
        owning = self.owning_optimizers()
        self.drop_attributes(drop)
        # An optimizer whose own state is all gone holds only references to model weights (Keras 3
        # `_trainable_variables`): it goes, as a strip would remove it, so keys follow the model.
        emptied = owning - self.owning_optimizers()
        if emptied:
            self.edit(lambda: self.remove({i for i, n in enumerate(self.graph.nodes) if n in emptied}))

    def strip(self, step: StripOptimizer, *, refuse_weight_loss: bool = True) -> None:
        """Remove optimizers (and the step counter or EMA if asked); keep what the model also reaches."""
        strip(self, step, refuse_weight_loss=refuse_weight_loss)

    def rename(self, step: Rename) -> None:
        """Scope rules move edges; exact and regex rules rename keys and the structure follows."""
        rename(self, step)

    def map_names(self, step: MapNames) -> None:
        """MapNames(fn): fn renames (or drops, with None) bundle keys; objects move to match."""
        map_keys(self, step.fn)


def _check_patterns(
    step: Select,
    names: dict[Attribute, list[list[list[str]]]],
    current: dict[Attribute, list[str]],
    source: dict[Attribute, list[str]],
    loose: list[str],
) -> None:
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


def object_names(data: bytes, entries: dict[str, Any]) -> dict[str, list[str]]:
    """Source key -> the names a filter sees for its tensor (its object paths, as `ls --objects` shows them)."""
    plan = GraphPlan(ObjectGraph.parse(data), entries)
    g = plan.graph
    current = {a: [n for n, _ in plan.tensors(a)] for _, a in g.attributes()}
    out: dict[str, list[str]] = {}
    for a, per_tensor in attribute_names(g, plan.optimizer_ids(), current).items():
        for key, groups in zip(current[a], per_tensor):
            out[key] = groups[0]
    return out
