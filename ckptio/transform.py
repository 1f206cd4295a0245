"""Rewrite steps: small frozen values, validated when built, applied to a plan of names.

A plan is a list of Items (source name -> output name, output dtype). Each step maps a
plan to a new plan; nothing is read or written here, so a bad rule fails before any I/O.
"""
from __future__ import annotations

import json
import re
from collections import namedtuple
from collections.abc import Callable

from .bundle import dtypes
from .errors import PlanError, Remedy

# Named tuples and plain classes, not dataclasses: importing dataclasses and building each
# @dataclass would cost every CLI command milliseconds at start-up.


# promoted_from: for EMA promotion, the source whose bytes are written instead of src's.
class Item(namedtuple("Item", "src dst dtype promoted_from", defaults=(None,))):
    """One output tensor: where it comes from, its name and dtype in the output."""

    __slots__ = ()


class Context(namedtuple("Context", "entries")):
    """What steps may consult: the source's entries (name -> Entry)."""

    __slots__ = ()


class _Step:
    """Base of the rewrite steps: frozen once built, equal when of one type with equal fields."""

    __slots__ = ()
    _fields: tuple[str, ...] = ()  # the constructor's arguments, in order

    def _init(self, **values) -> None:
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name, value):
        raise AttributeError(f"{type(self).__name__} is frozen; cannot assign to {name!r}")

    def __delattr__(self, name):
        raise AttributeError(f"{type(self).__name__} is frozen; cannot delete {name!r}")

    def _values(self) -> tuple:
        return tuple(getattr(self, f) for f in self._fields)

    def __eq__(self, other):
        if type(other) is not type(self):
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self):
        return hash(self._values())

    def __repr__(self):
        args = ", ".join(f"{f}={v!r}" for f, v in zip(self._fields, self._values()))
        return f"{type(self).__name__}({args})"

    def __reduce__(self):  # pickle and copy through the constructor (batch ships steps to workers)
        return type(self), self._values()


def _compile(patterns, glob: bool):
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


class Select(_Step):
    """Keep names matching any include (all if none) and no exclude; regex search or full glob.

    On TF2 object-based checkpoints a variable is known by every object path to it (as `ls --objects`
    shows them), not by its storage key: see ckptio/objgraph_select.py and keeps_any.
    """

    _fields = ("include", "exclude", "glob")
    __slots__ = _fields + ("_inc", "_exc")  # the compiled patterns

    def __init__(self, include: tuple[str, ...] = (), exclude: tuple[str, ...] = (), glob: bool = False):
        self._init(include=include, exclude=exclude, glob=glob,
                   _inc=_compile(include, glob), _exc=_compile(exclude, glob))

    def keeps(self, name: str) -> bool:
        match = (lambda r: r.match(name)) if self.glob else (lambda r: r.search(name))
        if self._inc and not any(match(r) for r in self._inc):
            return False
        return not any(match(r) for r in self._exc)

    def keeps_any(self, names) -> bool:
        """For a tensor known by several names (TF2 object paths): kept when one name is included (or there
        are no includes) and none is excluded."""
        names = list(names)
        match = (lambda r, n: r.match(n)) if self.glob else (lambda r, n: r.search(n))
        if self._inc and not any(match(r, n) for r in self._inc for n in names):
            return False
        return not any(match(r, n) for r in self._exc for n in names)

    def apply(self, items: list[Item], ctx: Context) -> list[Item]:
        return [i for i in items if self.keeps(i.dst)]


# -- optimizer state (name-based checkpoints, FORMAT §9.1) ----------------------------------------

# Slot suffixes TF1 optimizers append to a variable's name (`V/Adam`, `V/Adam_1`, ...).
SLOT_OPTIMIZERS = ("Adam", "Momentum", "RMSProp", "Adagrad", "AdagradDA", "Adadelta", "Ftrl",
                   "ProximalAdagrad", "LARSOptimizer", "Adafactor", "LazyAdam", "AdamW", "Nadam",
                   "adam_m", "adam_v", "lamb_m", "lamb_v", "GradientDescent", "Adamax")
EMA_NAME = "ExponentialMovingAverage"
_POWER_RE = re.compile(r"(^|/)beta[12]_power(_\d+)?$")
# Keras-in-TF1 and TF2 name-based optimizer variables: training/Adam/..., Adam/iter, ...
_KERAS_OPT_RE = re.compile(r"(^|/)training(_\d+)?/(Adam|SGD|RMSprop|Adagrad|Adadelta|Adamax|Nadam|Ftrl|"
                           r"AdamW|Lion|Adafactor)(_\d+)?/")
_HYPER_RE = re.compile(r"^(Adam|SGD|RMSprop|Adagrad|Adadelta|Adamax|Nadam|Ftrl|AdamW)(_\d+)?/"
                       r"(iter|iterations|learning_rate|lr|decay|beta_1|beta_2|rho|momentum|epsilon|"
                       r"momentum_cache|l1_regularization_strength|l2_regularization_strength|"
                       r"learning_rate_power|beta)$")
_MESH_SLOT_RE = re.compile(r"^(?P<var>.+)_slot_(vr|vc|v|m)$")

WEIGHT, SLOT, OPTIMIZER, STEP, EMA = "weight", "slot", "optimizer", "step", "ema"


def _strip_counter(last: str) -> str:
    """'Adam_1' -> 'Adam' (the suffix TF adds to make names unique)."""
    stem, sep, digits = last.rpartition("_")
    return stem if sep and digits.isdigit() else last


def _slot_base(name: str, names) -> str | None:
    """The variable a slot-like name `.../<var>/.../<suffix>` belongs to, if it is a known tensor."""
    parts = name.split("/")[:-1]
    # The variable may sit under an optimizer scope (training/V/Adam) or be followed by a
    # partition path (V/<garbled>/part_0/Adam): try every run of whole components.
    for start in range(len(parts)):
        for end in range(len(parts), start, -1):
            candidate = "/".join(parts[start:end])
            if candidate in names:
                return candidate
    return None


def _optimizer_state(name: str) -> bool:
    """Non-slot optimizer variables: beta powers, Keras optimizer scopes, hyperparameters, counters."""
    # Cheap substring tests first: this runs once per tensor on 100,000-entry listings.
    if "power" in name and _POWER_RE.search(name):
        return True
    if "training" in name and _KERAS_OPT_RE.search(name):
        return True
    if name.endswith(("learning_rate", "/lr")) or name == "lr":
        return True
    return "/" in name and _HYPER_RE.match(name) is not None


def classify(names, optimizer_names=(), ema_names=(EMA_NAME,)) -> dict[str, tuple[str, str | None]]:
    """Role of each name-based tensor: (role, variable it belongs to or None)."""
    names = set(names)
    suffixes = set(SLOT_OPTIMIZERS) | set(optimizer_names)
    emas = set(ema_names)
    out = {}
    for name in names:
        if name == "global_step" or name.endswith("/global_step"):
            out[name] = (STEP, None)
            continue
        last = _strip_counter(name.rpartition("/")[2])
        if "/" in name and (last in emas or last in suffixes):
            var = _slot_base(name, names)
            if var:
                out[name] = (EMA if last in emas else SLOT, var)
                continue
        if "_slot_" in name:
            m = _MESH_SLOT_RE.match(name)
            if m and m["var"] in names:
                out[name] = (SLOT, m["var"])
                continue
        out[name] = (OPTIMIZER, None) if _optimizer_state(name) else (WEIGHT, None)
    return out


class StripOptimizer(_Step):
    """Drop optimizer slots and state; keep global_step unless asked; EMA keep/drop/promote."""

    __slots__ = _fields = ("keep_global_step", "ema", "optimizer_names")

    def __init__(self, keep_global_step: bool = True, ema: str = "keep", optimizer_names: tuple[str, ...] = ()):
        if ema not in ("keep", "drop", "promote"):
            raise PlanError(f"ema must be keep, drop or promote, not {ema!r}")
        self._init(keep_global_step=keep_global_step, ema=ema, optimizer_names=optimizer_names)

    def apply(self, items: list[Item], ctx: Context) -> list[Item]:
        roles = classify([i.src for i in items], self.optimizer_names)
        shadows = {var: name for name, (role, var) in roles.items() if role == EMA}
        out = []
        for item in items:
            role, _ = roles[item.src]
            if role in (SLOT, OPTIMIZER) or (role == STEP and not self.keep_global_step):
                continue
            if role == EMA and self.ema != "keep":
                continue
            if role == WEIGHT and self.ema == "promote" and item.src in shadows:
                shadow = shadows[item.src]
                src_entry, shadow_entry = ctx.entries[item.src], ctx.entries[shadow]
                if ((src_entry.dtype, src_entry.shape, src_entry.slices)
                        != (shadow_entry.dtype, shadow_entry.shape, shadow_entry.slices)):
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


class Rename(_Step):
    """Rename by rules, first match wins: 'scope/'='new/' (prefix; '/' is the root), exact, or regex."""

    _fields = ("rules", "regex", "allow_unmatched")
    __slots__ = _fields + ("_compiled",)  # the rules' patterns, if regex

    def __init__(self, rules: tuple[tuple[str, str], ...], regex: bool = False, allow_unmatched: bool = False):
        if not rules:
            raise PlanError("rename needs at least one rule")
        for old, new in rules:
            if not regex and old.endswith("/") != new.endswith("/"):
                raise PlanError(f"rule {old}={new}: a scope must map to a scope (both end with '/')")
        self._init(rules=rules, regex=regex, allow_unmatched=allow_unmatched,
                   _compiled=_compile([r for r, _ in rules], False) if regex else ())

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
                    return (name[len(old):] if new == "/" else new + name[len(old):]), i
            elif name == old:
                return new, i
        return name, None

    def apply(self, items: list[Item], ctx: Context) -> list[Item]:
        used, out = set(), []
        for item in items:
            new, rule = self.rename(item.dst)
            if rule is not None:
                used.add(rule)
            if not new:
                raise PlanError(f"rename gives an empty name for {item.dst!r}")
            out.append(item._replace(dst=new))
        unused = [f"{o}={n}" for i, (o, n) in enumerate(self.rules) if i not in used]
        if unused and not self.allow_unmatched:
            raise PlanError("rename rule matches no tensor: " + ", ".join(unused),
                            remedy=Remedy("allow_unmatched", "accept"))
        return out


# -- casting and callables --------------------------------------------------------------------------

CASTABLE = ("float32", "bfloat16", "float16")


class Cast(_Step):
    """Cast floating tensors (float32/bfloat16/float16) to `to`; optionally only names matching `only`."""

    _fields = ("to", "only")
    __slots__ = _fields + ("_only",)  # the compiled patterns

    def __init__(self, to: str, only: tuple[str, ...] = ()):
        target = dtypes.BY_NAME.get(to)
        if target is None or target.name not in CASTABLE:
            raise PlanError(f"cast target must be one of {', '.join(CASTABLE)}, not {to!r}")
        self._init(to=target.name, only=only, _only=_compile(only, False))

    def apply(self, items: list[Item], ctx: Context) -> list[Item]:
        target = dtypes.BY_NAME[self.to].enum
        out = []
        for item in items:
            if dtypes.name_of(item.dtype) in CASTABLE and (not self._only or any(r.search(item.dst) for r in self._only)):
                item = item._replace(dtype=target)
            out.append(item)
        return out


class MapNames(_Step):
    """A user callable: name -> new name, or None to drop the tensor."""

    __slots__ = _fields = ("fn",)

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
