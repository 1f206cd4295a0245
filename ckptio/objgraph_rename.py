"""Rename in an object graph: scope rules move edges; exact, regex and callable renames move objects to match."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .errors import PlanError, Remedy
from .objgraph_check import resolve_user_path
from .objgraph_model import ATTRIBUTES_SEP, Attribute, Child, Path, parse_path
from .objgraph_moves import derive_moves, edge_at, move_edges, reroot_at, reroot_under
from .objgraph_rekey import KeyedGraph
from .transform import Rename


def rename(plan: KeyedGraph, step: Rename) -> None:
    """Scope rules move edges; exact and regex rules rename keys and the structure follows."""
    used: set[int] = set()
    new_loose: dict[str, str] = {}
    for src, name in plan.loose.items():
        new, rule = step.rename(name)
        if rule is not None:
            used.add(rule)
        new_loose[src] = new
    plan.loose = new_loose
    scopes: list[tuple[int, str, str]] = (
        [] if step.regex else [(i, o, n) for i, (o, n) in enumerate(step.rules) if o.endswith("/")]
    )
    if scopes:
        used |= _move_scopes(plan, scopes)
    singles = _single_rules(step, [i for i in range(len(step.rules)) if i not in {s[0] for s in scopes}])
    if singles:

        def fn(name: str) -> str:  # first matching rule wins, as for plain names
            for i, single in singles:
                out, rule = single.rename(name)
                if rule is not None:
                    used.add(i)
                    return out
            return name

        map_keys(plan, fn)
    unused = [f"{o}={n}" for i, (o, n) in enumerate(step.rules) if i not in used]
    if unused and not step.allow_unmatched:
        raise PlanError(
            "rename rule matches no object or tensor: " + ", ".join(unused),
            remedy=Remedy("allow_unmatched", "accept"),
        )


def _move_scopes(plan: KeyedGraph, scopes: list[tuple[int, str, str]]) -> set[int]:
    """Literal `old/=new/` rules: move the edge at path old to path new (any path, aliases too).

    Returns the indices of the rules that matched."""
    g = plan.graph
    used: set[int] = set()
    moves: list[tuple[int, Child, Path]] = []
    reroot: tuple[int, str, str] | None = None
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
            plan.edit(lambda: reroot_under(g, parse_path(new), plan.new_node), may_lose_values=False)
            used.add(i)
        else:
            nid = resolve_user_path(g, old)
            if nid is not None:
                plan.edit(lambda: reroot_at(g, nid), may_lose_values=False)
                used.add(i)
    if moves:
        plan.edit(lambda: move_edges(g, moves, plan.new_node), may_lose_values=False)
    return used


def map_keys(plan: KeyedGraph, fn: Callable[[str], str | None]) -> None:
    """Rename tensors by a function of their names and move objects so TF would write those names.

    Each object whose keys all move the same way moves as a whole (its edge is renamed); the
    result is checked by re-deriving every key, and PlanError names one that cannot be had.
    """
    new_loose: dict[str, str] = {}
    for src, name in plan.loose.items():
        new = _call(fn, name)
        if new is not None:
            new_loose[src] = new
    plan.loose = new_loose
    g = plan.graph
    drop: set[Attribute] = set()
    target: dict[Attribute, str] = {}
    for _, a in g.attributes():
        tensors = plan.tensors(a)
        if not tensors:
            continue  # names nothing in the bundle: leave it alone
        news = [_call(fn, name) for name, _ in tensors]
        if all(n is None for n in news):
            drop.add(a)
            continue
        heads = {n[: len(n) - len(s)] if n is not None and n.endswith(s) else None for n, (_, s) in zip(news, tensors)}
        if len(heads) != 1 or None in heads:
            raise PlanError(
                f"{[t for t, _ in tensors]} are one saved object and must be renamed alike", key=tensors[0][0]
            )
        head = heads.pop()
        assert head is not None  # None was refused above
        if head != a.checkpoint_key:
            target[a] = head
    plan.drop_attributes(drop)
    if not target:
        return
    prefixes, paths = g.key_prefixes(), g.first_paths()
    want: dict[int, Path] = {}
    canonical: set[Attribute] = set()
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
        plan.edit(lambda: move_edges(g, moves, plan.new_node), may_lose_values=False)
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


def _call(fn: Callable[[str], object], name: str) -> str | None:
    new = fn(name)
    if new is None:
        return None
    if not isinstance(new, str) or not new:
        raise PlanError(f"name function returned {new!r}", key=name)
    return new


def _single_rules(step: Rename, indices: Sequence[int]) -> list[tuple[int, Rename]]:
    """One-rule copies of a Rename step, so each rule keeps the step's own matching semantics."""
    return [(i, Rename((step.rules[i],), step.regex, allow_unmatched=True)) for i in indices]
