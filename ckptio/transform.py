"""Rewrite steps: small frozen values, validated when built, applied to a plan of names.

A plan is a list of Items (source name -> output name, output dtype). Each step maps a
plan to a new plan; nothing is read or written here, so a bad rule fails before any I/O.
"""

from __future__ import annotations

import json
import re
from collections import namedtuple
from collections.abc import Callable, Iterable

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

# Named tuples and plain classes, not dataclasses: importing dataclasses and building each
# @dataclass would cost every CLI command milliseconds at start-up.


# promoted_from: for EMA promotion, the source whose bytes are written instead of src's.
class Item(namedtuple("Item", "src dst dtype promoted_from", defaults=(None,))):
    """One output tensor: where it comes from, its name and dtype in the output."""

    __slots__ = ()


class Context(namedtuple("Context", "entries names", defaults=(None,))):
    """What steps may consult: the source's entries (name -> Entry) and, on object-based checkpoints,
    each source key's object paths as `ls --objects` shows them (names; None for name-based ones)."""

    __slots__ = ()


class Step:
    """Base of the rewrite steps: frozen once built, equal when of one type with equal fields."""

    __slots__ = ()
    _fields: tuple[str, ...] = ()  # the constructor's arguments, in order

    def _init(self, **values: object) -> None:
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen; cannot assign to {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen; cannot delete {name!r}")

    def _values(self) -> tuple:
        return tuple(getattr(self, f) for f in self._fields)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, Step)  # narrowed by the type check above
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        args = ", ".join(f"{f}={v!r}" for f, v in zip(self._fields, self._values()))
        return f"{type(self).__name__}({args})"

    def __reduce__(self):  # pickle and copy through the constructor (batch ships steps to workers)
        return type(self), self._values()


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


class Select(Step):
    """Keep names matching any include (all if none) and no exclude; regex search or full glob.

    On TF2 object-based checkpoints a variable is known by every object path to it (as `ls --objects`
    shows them), not by its storage key: see ckptio/objgraph_select.py and keeps_any.
    """

    _fields = ("include", "exclude", "glob")
    __slots__ = _fields + ("_inc", "_exc")  # the compiled patterns
    include: tuple[str, ...]
    exclude: tuple[str, ...]
    glob: bool
    _inc: tuple[re.Pattern[str], ...]
    _exc: tuple[re.Pattern[str], ...]

    def __init__(self, include: tuple[str, ...] = (), exclude: tuple[str, ...] = (), glob: bool = False):
        self._init(
            include=include, exclude=exclude, glob=glob, _inc=_compile(include, glob), _exc=_compile(exclude, glob)
        )

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


class StripOptimizer(Step):
    """Drop optimizer slots and state; keep global_step unless asked; EMA keep/drop/promote."""

    __slots__ = _fields = ("keep_global_step", "ema", "optimizer_names")
    keep_global_step: bool
    ema: str
    optimizer_names: tuple[str, ...]

    def __init__(self, keep_global_step: bool = True, ema: str = "keep", optimizer_names: tuple[str, ...] = ()):
        if ema not in ("keep", "drop", "promote"):
            raise PlanError(f"ema must be keep, drop or promote, not {ema!r}")
        self._init(keep_global_step=keep_global_step, ema=ema, optimizer_names=optimizer_names)

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
                item = item._replace(promoted_from=shadow)
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


class Rename(Step):
    """Rename by rules, first match wins: 'scope/'='new/' (prefix; '/' is the root), exact, or regex."""

    _fields = ("rules", "regex", "allow_unmatched")
    __slots__ = _fields + ("_compiled",)  # the rules' patterns, if regex
    rules: tuple[tuple[str, str], ...]
    regex: bool
    allow_unmatched: bool
    _compiled: tuple[re.Pattern[str], ...]

    def __init__(self, rules: tuple[tuple[str, str], ...], regex: bool = False, allow_unmatched: bool = False):
        if not rules:
            raise PlanError("rename needs at least one rule")
        for old, new in rules:
            if not regex and old.endswith("/") != new.endswith("/"):
                raise PlanError(f"rule {old}={new}: a scope must map to a scope (both end with '/')")
        self._init(
            rules=rules,
            regex=regex,
            allow_unmatched=allow_unmatched,
            _compiled=_compile([r for r, _ in rules], False) if regex else (),
        )

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
            out.append(item._replace(dst=new))
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


class Cast(Step):
    """Cast float64/float32/bfloat16/float16 tensors to `to`; optionally only names matching `only`."""

    _fields = ("to", "only")
    __slots__ = _fields + ("_only",)  # the compiled patterns
    to: str
    only: tuple[str, ...]
    _only: tuple[re.Pattern[str], ...]

    def __init__(self, to: str, only: tuple[str, ...] = ()):
        target = dtypes.BY_NAME.get(to)
        if target is None or target.name not in CASTABLE:
            raise PlanError(f"cast target must be one of {', '.join(CASTABLE)}, not {to!r}")
        self._init(to=target.name, only=only, _only=_compile(only, False))

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
            item if self.left_as_is(item, paths.get(item.src, ())) else item._replace(dtype=target) for item in items
        ]


class MapNames(Step):
    """A user callable: name -> new name, or None to drop the tensor."""

    __slots__ = _fields = ("fn",)
    fn: Callable[[str], str | None]

    def __init__(self, fn: Callable[[str], str | None]):
        self._init(fn=fn)

    def apply(self, items: list[Item], ctx: Context) -> list[Item]:
        out = []
        for item in items:
            new = self.fn(item.dst)
            if new is None:
                continue
            if not isinstance(new, str) or not new:
                raise PlanError(f"name function returned {new!r} for {item.dst!r}")
            out.append(item._replace(dst=new))
        return out


def check_collisions(items: list[Item]) -> None:
    """Two sources may not land on one output name."""
    seen: dict[str, str] = {}
    for item in items:
        if item.dst in seen:
            raise PlanError(f"{seen[item.dst]!r} and {item.src!r} would both be written as {item.dst!r}")
        seen[item.dst] = item.src
