"""diff(a, b): what differs between two checkpoints, by key and by object path, optionally by value.

Values are compared a chunk at a time (Tensor.iter_chunks), so memory stays bounded by the chunk size
for unsliced tensors; sliced (partitioned) and string tensors are read whole.
"""
from __future__ import annotations

import math
from collections import namedtuple

from .bundle import dtypes
from .checkpoint import Checkpoint
from .views import match, view

CHUNK_BYTES = 8 << 20


class Mismatch(namedtuple("Mismatch", "a b a_dtype b_dtype a_shape b_shape")):
    """A tensor in both checkpoints whose dtype or shape differs."""

    __slots__ = ()


# max_abs / rel_l2 are None when not a number (strings, or an infinite or NaN difference).
class Change(namedtuple("Change", "a b max_abs rel_l2")):
    """A tensor in both checkpoints whose values differ."""

    __slots__ = ()


class DiffResult:
    """What diff found; `equal` counts common tensors of equal values (with values) or of equal dtype and shape."""

    __slots__ = ("a", "b", "only_a", "only_b", "mismatched", "changed", "equal", "pairs", "values")

    def __init__(self, a, b, only_a, only_b, mismatched, changed, equal, pairs, values):
        self.a, self.b, self.only_a, self.only_b = a, b, only_a, only_b
        self.mismatched, self.changed, self.equal, self.pairs, self.values = mismatched, changed, equal, pairs, values

    @property
    def identical(self) -> bool:
        return not (self.only_a or self.only_b or self.mismatched or self.changed)

    def to_json(self) -> dict:
        return {"only_a": self.only_a, "only_b": self.only_b,
                "mismatched": [{"a": m.a, "b": m.b, "a_dtype": m.a_dtype, "b_dtype": m.b_dtype,
                                "a_shape": list(m.a_shape), "b_shape": list(m.b_shape)} for m in self.mismatched],
                "changed": [c._asdict() for c in self.changed], "equal": self.equal}

    def __repr__(self):
        return (f"DiffResult(only_a={len(self.only_a)}, only_b={len(self.only_b)}, "
                f"mismatched={len(self.mismatched)}, changed={len(self.changed)}, equal={self.equal})")


def diff(a, b, *, rules=None, values: bool = False, atol: float = 0.0, rtol: float = 0.0) -> DiffResult:
    """Compare checkpoints a and b (paths or open Checkpoints); rules (a Rename) rename a's names first."""
    from .checkpoint import open as open_checkpoint

    ca = a if isinstance(a, Checkpoint) else open_checkpoint(a)
    try:
        cb = b if isinstance(b, Checkpoint) else open_checkpoint(b)
        try:
            return _diff(ca, cb, rules, values, atol, rtol)
        finally:
            if cb is not b:
                cb.close()
    finally:
        if ca is not a:
            ca.close()


def _diff(ca, cb, rules, values, atol, rtol) -> DiffResult:
    va, vb = view(ca), view(cb)
    m = match(va, vb, rules)
    mismatched, changed, equal = [], [], 0
    for ak, bk, _ in m.pairs:
        ea, eb = va.tensors[ak].entry, vb.tensors[bk].entry
        if ea.dtype != eb.dtype or ea.shape != eb.shape:
            mismatched.append(Mismatch(ak, bk, dtypes.name_of(ea.dtype), dtypes.name_of(eb.dtype), ea.shape, eb.shape))
        if not values:
            equal += ea.dtype == eb.dtype and ea.shape == eb.shape
            continue
        if ea.shape != eb.shape:
            continue
        same, max_abs, rel_l2 = compare(ca[ak], cb[bk], atol, rtol)
        if same:
            equal += 1
        else:
            changed.append(Change(ak, bk, max_abs, rel_l2))
    return DiffResult(ca.prefix, cb.prefix, m.only_a, m.only_b, mismatched, changed, equal, m.pairs, values)


def compare(ta, tb, atol: float = 0.0, rtol: float = 0.0) -> tuple[bool, float | None, float | None]:
    """(equal, max abs difference, ||a-b|| / ||a||) of two tensors of one shape, streamed."""
    import numpy as np

    if not (_numeric(ta) and _numeric(tb)):
        return bool(np.array_equal(ta.read(), tb.read())), None, None
    exact = atol == 0 and rtol == 0 and ta.entry.dtype == tb.entry.dtype
    same, top, diff2, norm2 = True, 0.0, 0.0, 0.0
    for x, y in _paired(_flat(ta), _flat(tb)):
        if exact:
            same = same and bool(np.array_equal(x, y, equal_nan=x.dtype.kind in "fc"))
        wide = np.complex128 if "c" in (x.dtype.kind, y.dtype.kind) else np.float64
        x, y = x.astype(wide), y.astype(wide)
        both = (x == y) | (np.isnan(x) & np.isnan(y))  # equal infinities and NaN pairs differ by 0
        d = np.where(both, 0.0, np.abs(x - y))
        d[np.isnan(d)] = np.inf
        if not exact:
            same = same and bool(np.all(d <= atol + rtol * np.abs(y)))
        if d.size:
            top = max(top, float(d.max()))
            diff2 += float(np.sum(d * d))
            norm2 += float(np.sum(np.abs(x) ** 2))
    rel = 0.0 if diff2 == 0 else (math.sqrt(diff2) / math.sqrt(norm2) if norm2 else math.inf)
    return same, _finite(top), _finite(rel)


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _numeric(t) -> bool:
    info = t.entry.dtype_info
    return info is not None and info.fixed_width and info.numpy_name is not None


def _flat(t):
    """The tensor's elements as 1-D arrays, a chunk at a time (whole when sliced or V1)."""
    for chunk in t.iter_chunks(CHUNK_BYTES):
        yield chunk.reshape(-1)


def _paired(xs, ys):
    """Pieces of equal length from two streams of 1-D arrays that hold the same number of elements."""
    x = y = None
    while True:
        while x is None or not len(x):
            x = next(xs, None)
            if x is None:
                return
        while y is None or not len(y):
            y = next(ys, None)
            if y is None:
                return
        n = min(len(x), len(y))
        yield x[:n], y[:n]
        x, y = x[n:], y[n:]
