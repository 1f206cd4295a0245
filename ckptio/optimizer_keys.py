"""Roles of the keys of name-based checkpoints: weight, optimizer slot or state, step counter, EMA.

TF1 optimizers append a slot suffix to their variable's name (`V/Adam`); tf_keras graph-mode optimizers
write `<opt>/<var>/<slot>` beside `<opt>/iter` (FORMAT.md §9.1, FORMAT-models.md §4). Names only: no
reads, so `ls` can call this on 100,000-entry listings.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from .bundle import dtypes

# Slot suffixes TF1 optimizers append to a variable's name (`V/Adam`, `V/Adam_1`, ...).
SLOT_OPTIMIZERS = (
    "Adam",
    "Momentum",
    "RMSProp",
    "Adagrad",
    "AdagradDA",
    "Adadelta",
    "Ftrl",
    "ProximalAdagrad",
    "LARSOptimizer",
    "Adafactor",
    "LazyAdam",
    "AdamW",
    "Nadam",
    "adam_m",
    "adam_v",
    "lamb_m",
    "lamb_v",
    "GradientDescent",
    "Adamax",
)
EMA_NAME = "ExponentialMovingAverage"
_POWER_RE = re.compile(r"(^|/)beta[12]_power(_\d+)?$")
# Keras-in-TF1 and TF2 name-based optimizer variables: training/Adam/..., Adam/iter, ...
_KERAS_OPT_RE = re.compile(
    r"(^|/)training(_\d+)?/(Adam|SGD|RMSprop|Adagrad|Adadelta|Adamax|Nadam|Ftrl|"
    r"AdamW|Lion|Adafactor)(_\d+)?/"
)
_HYPER_RE = re.compile(
    r"^(Adam|SGD|RMSprop|Adagrad|Adadelta|Adamax|Nadam|Ftrl|AdamW)(_\d+)?/"
    r"(iter|iterations|learning_rate|lr|decay|beta_1|beta_2|rho|momentum|epsilon|"
    r"momentum_cache|l1_regularization_strength|l2_regularization_strength|"
    r"learning_rate_power|beta)$"
)
_MESH_SLOT_RE = re.compile(r"^(?P<var>.+)_slot_(vr|vc|v|m)$")

# tf_keras legacy optimizers (OptimizerV2) in graph mode: `<opt>/<var>/<slot>`, with hyperparameters
# `<opt>/<hyper>` and the step counter `<opt>/iter` beside them (FORMAT-models §4).
KERAS_SLOTS = {
    "SGD": ("momentum",),
    "Adam": ("m", "v", "vhat"),
    "Adamax": ("m", "v"),
    "Nadam": ("m", "v"),
    "RMSprop": ("rms", "momentum", "mg"),
    "Adagrad": ("accumulator",),
    "Adadelta": ("accum_grad", "accum_var"),
    "Ftrl": ("accumulator", "linear"),
}
_ALL_KERAS_SLOTS = frozenset(s for slots in KERAS_SLOTS.values() for s in slots)
_PART_RE = re.compile(r"^(?P<var>.+)/part_(?P<k>\d+)$")  # one part of a partitioned variable
_INT64 = dtypes.BY_NAME["int64"].enum  # the dtype of `<opt>/iter`

WEIGHT, SLOT, OPTIMIZER, STEP, EMA = "weight", "slot", "optimizer", "step", "ema"
# A name in a tf_keras optimizer's scope that looks like a slot, but of no variable in the checkpoint
# (missing, or of another shape or dtype): strip refuses it rather than guess.
AMBIGUOUS = "ambiguous"


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


def _optimizer_state(name: str, custom=()) -> bool:
    """Non-slot optimizer variables: beta powers, Keras optimizer scopes, hyperparameters, counters."""
    # Cheap substring tests first: this runs once per tensor on 100,000-entry listings.
    if "power" in name and _POWER_RE.search(name):
        return True
    if "training" in name and _KERAS_OPT_RE.search(name):
        return True
    if name.endswith(("learning_rate", "/lr")) or name == "lr":
        return True
    if "/" not in name:
        return False
    if _HYPER_RE.match(name) is not None:
        return True
    scope, _, hyper = name.rpartition("/")  # a custom-named tf_keras optimizer: MyOpt/iter, MyOpt_1/beta_1
    return bool(custom) and _strip_counter(scope) in custom and _HYPER_RE.match("Adam/" + hyper) is not None


def _same(a, b) -> bool:
    """Equal dtype and shape (what a slot shares with its variable); True when either is a bare name."""
    if a is None or b is None:
        return True
    return a.dtype == b.dtype and tuple(a.shape) == tuple(b.shape)


def _slot_owner(var: str, slot_entry, entries) -> str | None:
    """The tensor a tf_keras slot of `var` belongs to: var itself, or the partitioned variable of var = X/part_K."""
    if var in entries:
        return var if _same(entries[var], slot_entry) else None
    m = _PART_RE.match(var)
    if m is None or m["var"] not in entries:
        return None
    whole = entries[m["var"]]
    if whole is None:  # bare names: nothing to check the part against
        return m["var"]
    slices = sorted(whole.slices, key=lambda s: tuple(b for b, _ in s.bounds(whole.shape)))
    k = int(m["k"])
    if slot_entry is None or k >= len(slices):
        return None
    # Part K is the K-th slice in partition order; its slot has the part's shape and the dtype.
    if slot_entry.dtype == whole.dtype and tuple(slot_entry.shape) == slices[k].shape(whole.shape):
        return m["var"]
    return None


def _keras_slot(name: str, entries, custom) -> tuple[str, str | None] | None:
    """(SLOT, variable) or (AMBIGUOUS, None) for a tf_keras graph-mode slot `<scope>/<opt>/<var>/<slot>`."""
    parts = name.split("/")
    slot = parts[-1]
    for i in range(len(parts) - 2):
        opt = _strip_counter(parts[i])
        if not (slot in KERAS_SLOTS.get(opt, ()) or (opt in custom and slot in _ALL_KERAS_SLOTS)):
            continue
        owner = _slot_owner("/".join(parts[i + 1 : -1]), entries[name], entries)
        if owner is not None:
            return SLOT, owner
        # The scope is surely an optimizer's when its step counter is there (an int64 scalar).
        it = entries.get("/".join(parts[: i + 1]) + "/iter", False)
        if it is not False and (it is None or (it.dtype == _INT64 and tuple(it.shape) == ())):
            return AMBIGUOUS, None
    return None


Role = tuple[str, "str | None"]  # (role, the variable the key belongs to or None)


def classify(
    names: Iterable[str] | Mapping[str, object],
    optimizer_names: Iterable[str] = (),
    ema_names: Iterable[str] = (EMA_NAME,),
) -> dict[str, Role]:
    """Role of each name-based tensor: (role, variable it belongs to or None).

    names: the tensor names, or a mapping of them to their Entries, which lets a tf_keras slot be
    matched to its variable by dtype and shape too (FORMAT-models §4).
    """
    entries: dict[str, object]
    if isinstance(names, Mapping):  # values that are not Entries (or are None) say nothing about dtype and shape
        entries = {n: v if hasattr(v, "dtype") and hasattr(v, "shape") else None for n, v in names.items()}
    else:
        entries = dict.fromkeys(names)
    known = set(entries)
    custom = frozenset(optimizer_names)
    suffixes = set(SLOT_OPTIMIZERS) | custom
    emas = set(ema_names)
    out: dict[str, Role] = {}
    for name in known:
        if name == "global_step" or name.endswith("/global_step"):
            out[name] = (STEP, None)
            continue
        last = _strip_counter(name.rpartition("/")[2])
        if "/" in name and (last in emas or last in suffixes):
            var = _slot_base(name, known)
            if var:
                out[name] = (EMA if last in emas else SLOT, var)
                continue
        if last in _ALL_KERAS_SLOTS and name.count("/") >= 2:
            role = _keras_slot(name, entries, custom)
            if role is not None and not (role[0] == AMBIGUOUS and _optimizer_state(name, custom)):
                out[name] = role  # (an orphan under Keras-in-TF1's training/ scope is surely optimizer state)
                continue
        if "_slot_" in name:
            m = _MESH_SLOT_RE.match(name)
            if m and m["var"] in known:
                out[name] = (SLOT, m["var"])
                continue
        out[name] = (OPTIMIZER, None) if _optimizer_state(name, custom) else (WEIGHT, None)
    return out
