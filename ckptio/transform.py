"""Rewrite steps: small frozen values, validated when built, applied to a plan of names.

A plan is a list of Items (source name -> output name, output dtype). Each step maps a
plan to a new plan; nothing is read or written here, so a bad rule fails before any I/O.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from .bundle import dtypes
from .errors import PlanError, Remedy
from .optimizer_keys import (  # re-exported: key roles were defined here before the split (issue 13)
    AMBIGUOUS,
    EMA,
    EMA_NAME,
    KERAS_SLOTS,
    OPTIMIZER,
    SLOT,
    SLOT_OPTIMIZERS,
    STEP,
    WEIGHT,
    classify,
)

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (type checkers honour the name)
if TYPE_CHECKING:
    from .bundle.entry import Entry

# Value types, here and throughout ckptio, are declared one way: an immutable value is a
# @dataclass(frozen=True, slots=True); a mutable record filled in as work proceeds (a report, stats)
# is a @dataclass(slots=True), with eq=False only where identity is the point (objgraph's nodes).
# No named tuples, no hand-written __slots__ or frozen bases; tests/test_value_types.py checks.


@dataclass(frozen=True, slots=True)
class Item:
    """One output tensor: where it comes from, its name and dtype in the output."""

    src: str
    dst: str
    dtype: int
    promoted_from: str | None = None  # for EMA promotion, the source whose bytes are written instead of src's


@dataclass(frozen=True, slots=True)
class Context:
    """What steps may consult: the source's entries (name -> Entry) and, on object-based checkpoints,
    each source key's object paths as `ls --objects` shows them (names; None for name-based ones)."""

    entries: dict[str, Entry]
    names: dict[str, list[str]] | None = None


# Steps are frozen dataclasses: equal when of one type with equal fields, hashable, and pickled
# for batch's workers. Derived values (compiled patterns) are fields left out of __init__, repr
# and comparison, set once in __post_init__.
@dataclass(frozen=True, slots=True)
class Step:
    """Base of the rewrite steps: frozen once built, equal when of one type with equal fields."""

    def apply(self, items: list[Item], ctx: Context) -> list[Item]:
        raise NotImplementedError


def _derived():
    """A field computed from the others in __post_init__: not an argument, not shown, not compared."""
    return field(init=False, repr=False, compare=False)


def _compile(patterns: Iterable[str], glob: bool) -> tuple[re.Pattern[str], ...]:
    out = []
    for p in patterns:
        try:
            if glob:
                import fnmatch

                out.append(re.compile(fnmatch.translate(p)))
            else:
                out.append(re.compile(p))
        except re.error as exc:
            raise PlanError(f"bad pattern {p!r}: {exc}") from None
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Select(Step):
    """Keep names matching any include (all if none) and no exclude; regex search or full glob.

    On TF2 object-based checkpoints a variable is known by every object path to it (as `ls --objects`
    shows them), not by its storage key: see ckptio/objgraph_select.py and keeps_any.
    """

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    glob: bool = False
    _inc: tuple[re.Pattern[str], ...] = _derived()  # the compiled patterns
    _exc: tuple[re.Pattern[str], ...] = _derived()

    def __post_init__(self) -> None:
        object.__setattr__(self, "_inc", _compile(self.include, self.glob))
        object.__setattr__(self, "_exc", _compile(self.exclude, self.glob))

    def keeps(self, name: str) -> bool:
        match = (lambda r: r.match(name)) if self.glob else (lambda r: r.search(name))
        if self._inc and not any(match(r) for r in self._inc):
            return False
        return not any(match(r) for r in self._exc)

    def keeps_any(self, names: Iterable[str]) -> bool:
        """For a tensor known by several names (TF2 object paths): kept when one name is included (or there
        are no includes) and none is excluded."""
        names = list(names)
        match = (lambda r, n: r.match(n)) if self.glob else (lambda r, n: r.search(n))
        if self._inc and not any(match(r, n) for r in self._inc for n in names):
            return False
        return not any(match(r, n) for r in self._exc for n in names)

    def apply(self, items: list[Item], ctx: Context) -> list[Item]:
        return [i for i in items if self.keeps(i.dst)]


@dataclass(frozen=True, slots=True)
class StripOptimizer(Step):
    """Drop optimizer slots and state; keep global_step unless asked; EMA keep/drop/promote."""

    keep_global_step: bool = True
    ema: str = "keep"
    optimizer_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.ema not in ("keep", "drop", "promote"):
            raise PlanError(f"ema must be keep, drop or promote, not {self.ema!r}")

    def apply(self, items: list[Item], ctx: Context) -> list[Item]:
        # Roles belong to the source, not to what earlier steps kept: a slot stays a slot when a
        # filter before this step dropped its variable.
        source = dict.fromkeys(i.src for i in items)
        source.update(ctx.entries)
        roles = classify(source, self.optimizer_names)
        shadows = {var: name for name, (role, var) in roles.items() if role == EMA}
        out = []
        for item in items:
            role, _ = roles[item.src]
            if role == AMBIGUOUS:
                raise PlanError(
                    "looks like a tf_keras optimizer slot, but no variable in the checkpoint has its "
                    "dtype and shape: cannot tell optimizer state from a weight (drop it with an "
                    "exclude filter, or keep it by not stripping)",
                    key=item.src,
                )
            if role in (SLOT, OPTIMIZER) or (role == STEP and not self.keep_global_step):
                continue
            if role == EMA and self.ema != "keep":
                continue
            if role == WEIGHT and self.ema == "promote" and item.src in shadows:
                shadow = shadows[item.src]
                src_entry, shadow_entry = ctx.entries[item.src], ctx.entries[shadow]
                if (src_entry.dtype, src_entry.shape, src_entry.slices) != (
                    shadow_entry.dtype,
                    shadow_entry.shape,
                    shadow_entry.slices,
                ):
                    raise PlanError("EMA shadow differs in dtype, shape or slicing from its variable", key=shadow)
                item = replace(item, promoted_from=shadow)
            out.append(item)
        return out


# -- renaming ------------------------------------------------------------------------------------


def parse_map(text: str) -> tuple[str, str]:
    """'OLD=NEW' -> (OLD, NEW)."""
    old, sep, new = text.partition("=")
    if not sep:
        raise PlanError(f"rename rule {text!r} is not OLD=NEW")
    return old, new


def load_map_file(path: str) -> tuple[tuple[str, str], ...]:
    """A JSON object {old: new} (scopes end with '/') as ordered rules."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError, RecursionError) as exc:  # RecursionError: JSON nested too deeply
        raise PlanError(f"cannot read map file {path}: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise PlanError(f"map file {path} must be a JSON object of strings")
    return tuple(data.items())


@dataclass(frozen=True, slots=True)
class Rename(Step):
    """Rename by rules, first match wins: 'scope/'='new/' (prefix; '/' is the root), exact, or regex."""

    rules: tuple[tuple[str, str], ...]
    regex: bool = False
    allow_unmatched: bool = False
    _compiled: tuple[re.Pattern[str], ...] = _derived()  # the rules' patterns, if regex

    def __post_init__(self) -> None:
        if not self.rules:
            raise PlanError("rename needs at least one rule")
        for old, new in self.rules:
            if not self.regex and old.endswith("/") != new.endswith("/"):
                raise PlanError(f"rule {old}={new}: a scope must map to a scope (both end with '/')")
        object.__setattr__(self, "_compiled", _compile([r for r, _ in self.rules], False) if self.regex else ())

    def rename(self, name: str) -> tuple[str, int | None]:
        """(new name, index of the rule used or None)."""
        for i, (old, new) in enumerate(self.rules):
            if self.regex:
                pattern = self._compiled[i]
                if pattern.search(name):
                    try:
                        return pattern.sub(new, name, count=1), i
                    except (re.error, IndexError) as exc:
                        raise PlanError(f"bad replacement {new!r}: {exc}") from None
            elif old == "/":
                return new + name if new != "/" else name, i
            elif old.endswith("/"):
                if name.startswith(old):
                    return (name[len(old) :] if new == "/" else new + name[len(old) :]), i
            elif name == old:
                return new, i
        return name, None

    def apply(self, items: list[Item], ctx: Context) -> list[Item]:
        used: set[int] = set()
        out = []
        for item in items:
            new, rule = self.rename(item.dst)
            if rule is not None:
                used.add(rule)
            if not new:
                raise PlanError(f"rename gives an empty name for {item.dst!r}")
            out.append(replace(item, dst=new))
        unused = [f"{o}={n}" for i, (o, n) in enumerate(self.rules) if i not in used]
        if unused and not self.allow_unmatched:
            raise PlanError(
                "rename rule matches no tensor: " + ", ".join(unused), remedy=Remedy("allow_unmatched", "accept")
            )
        return out


# -- casting and callables --------------------------------------------------------------------------

CASTABLE = ("float32", "bfloat16", "float16")  # cast targets
# What a cast changes: the usual floating widths. float8/float4 tensors were quantized on purpose and
# are left as they are, like every non-floating tensor; the report says which and why.
CAST_SOURCES = ("float64", "float32", "bfloat16", "float16")
LOW_PRECISION = (
    "float8_e5m2",
    "float8_e4m3fn",
    "float8_e4m3fnuz",
    "float8_e4m3b11fnuz",
    "float8_e5m2fnuz",
    "float4_e2m1fn",
)
# Why a Cast leaves a tensor as it was (the codes a Report lists).
NOT_FLOATING, NOT_SELECTED, ALREADY, LOW = "not-floating", "not-selected", "already-target", "low-precision"


@dataclass(frozen=True, slots=True)
class Cast(Step):
    """Cast float64/float32/bfloat16/float16 tensors to `to`; optionally only names matching `only`."""

    to: str
    only: tuple[str, ...] = ()
    _only: tuple[re.Pattern[str], ...] = _derived()  # the compiled patterns

    def __post_init__(self) -> None:
        target = dtypes.BY_NAME.get(self.to)
        if target is None or target.name not in CASTABLE:
            raise PlanError(f"cast target must be one of {', '.join(CASTABLE)}, not {self.to!r}")
        object.__setattr__(self, "to", target.name)  # the canonical name: "bf16" is "bfloat16"
        object.__setattr__(self, "_only", _compile(self.only, False))

    def left_as_is(self, item: Item, names: Iterable[str] = ()) -> str | None:
        """Why this step leaves item's dtype as it is (NOT_FLOATING, LOW, ALREADY, NOT_SELECTED), or None.

        `only` matches the output name or any of names (a TF2 tensor's object paths, as filters do)."""
        name = dtypes.name_of(item.dtype)
        if name == self.to:
            return ALREADY
        if name in LOW_PRECISION:
            return LOW
        if name not in CAST_SOURCES:
            return NOT_FLOATING
        if self._only and not any(r.search(n) for r in self._only for n in (item.dst, *names)):
            return NOT_SELECTED
        return None

    def apply(self, items: list[Item], ctx: Context) -> list[Item]:
        target = dtypes.BY_NAME[self.to].enum
        paths = ctx.names or {}
        return [
            item if self.left_as_is(item, paths.get(item.src, ())) else replace(item, dtype=target) for item in items
        ]


@dataclass(frozen=True, slots=True)
class MapNames(Step):
    """A user callable: name -> new name, or None to drop the tensor."""

    fn: Callable[[str], str | None]

    def apply(self, items: list[Item], ctx: Context) -> list[Item]:
        out = []
        for item in items:
            new = self.fn(item.dst)
            if new is None:
                continue
            if not isinstance(new, str) or not new:
                raise PlanError(f"name function returned {new!r} for {item.dst!r}")
            out.append(replace(item, dst=new))
        return out


def check_collisions(items: list[Item]) -> None:
    """Two sources may not land on one output name."""
    seen: dict[str, str] = {}
    for item in items:
        if item.dst in seen:
            raise PlanError(f"{seen[item.dst]!r} and {item.src!r} would both be written as {item.dst!r}")
        seen[item.dst] = item.src
