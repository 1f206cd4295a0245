"""diff(a, b): what differs between two checkpoints, by key and by object path, optionally by value.

Values are compared a chunk at a time (Tensor.iter_chunks, or Tensor.read_rows for sliced tensors), so
memory stays bounded by the chunk size; string tensors, and sliced ones of V1 or archived checkpoints,
are read whole.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .bundle import dtypes
from .checkpoint import Checkpoint
from .views import match, view

CHUNK_BYTES = 1 << 20  # per side; the float64 working copies take a few times this


@dataclass(frozen=True, slots=True)
class Mismatch:
    """A tensor in both checkpoints whose dtype or shape differs."""

    a: str
    b: str
    a_dtype: str
    b_dtype: str
    a_shape: tuple[int, ...]
    b_shape: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Change:
    """A tensor in both checkpoints whose values differ."""

    a: str
    b: str
    max_abs: float | None  # None when not a number (strings, or an infinite or NaN difference)
    rel_l2: float | None


@dataclass(slots=True)
class DiffResult:
    """What diff found; `equal` counts common tensors of equal values (with values) or of equal dtype and shape."""

    a: str
    b: str
    only_a: list[str]
    only_b: list[str]
    mismatched: list[Mismatch]
    changed: list[Change]
    equal: int
    pairs: list
    values: bool

    @property
    def identical(self) -> bool:
        return not (self.only_a or self.only_b or self.mismatched or self.changed)

    def to_json(self) -> dict:
        return {
            "only_a": self.only_a,
            "only_b": self.only_b,
            "mismatched": [
                {
                    "a": m.a,
                    "b": m.b,
                    "a_dtype": m.a_dtype,
                    "b_dtype": m.b_dtype,
                    "a_shape": list(m.a_shape),
                    "b_shape": list(m.b_shape),
                }
                for m in self.mismatched
            ],
            "changed": [{"a": c.a, "b": c.b, "max_abs": c.max_abs, "rel_l2": c.rel_l2} for c in self.changed],
            "equal": self.equal,
        }

    def __repr__(self):
        return (
            f"DiffResult(only_a={len(self.only_a)}, only_b={len(self.only_b)}, "
            f"mismatched={len(self.mismatched)}, changed={len(self.changed)}, equal={self.equal})"
        )


def diff(
    a, b, *, rules=None, regex: bool = False, values: bool = False, atol: float = 0.0, rtol: float = 0.0
) -> DiffResult:
    """Compare checkpoints a and b (paths or open Checkpoints); rules rename a's names first, as in fit()."""
    from .fit import _rules
    from .sources import open as open_checkpoint

    rules = _rules(rules, regex)

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
    # Integers above 2**53 are not exact in float64: without tolerances, compare those natively.
    native = atol == 0 and rtol == 0 and ta.entry.dtype == tb.entry.dtype and ta.dtype.kind in "iub"
    same, top, diff2, norm2 = True, 0.0, 0.0, 0.0
    for x, y in _paired(_flat(ta), _flat(tb)):
        if not x.size:
            continue
        if native:
            same = same and bool(np.array_equal(x, y))
        wide = np.complex128 if "c" in (x.dtype.kind, y.dtype.kind) else np.float64
        x, y = x.astype(wide), y.astype(wide)
        d = np.subtract(x, y)
        d = np.abs(d, out=d) if wide is np.float64 else np.abs(d)
        peak = float(d.max())  # NaN if any element is: max propagates it
        if math.isnan(peak):  # NaN against NaN, or equal infinities, differ by 0; NaN against a number by inf
            d[(x == y) | (np.isnan(x) & np.isnan(y))] = 0.0
            d[np.isnan(d)] = np.inf
            peak = float(d.max())
        if not native:  # within atol everywhere decides it without another pass; else check element-wise
            same = same and (peak <= atol or (rtol > 0 and bool(np.all((d == 0) | (d <= atol + rtol * np.abs(y))))))
        top = max(top, peak)
        diff2 += float(np.dot(d, d))
        norm2 += float(np.vdot(x, x).real)
    rel = 0.0 if diff2 == 0 else (math.sqrt(diff2) / math.sqrt(norm2) if norm2 else math.inf)
    return same, _finite(top), _finite(rel)


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _numeric(t) -> bool:
    info = t.entry.dtype_info
    return info is not None and info.fixed_width and info.numpy_name is not None


def _flat(t):
    """The tensor's elements as 1-D arrays, a chunk at a time (whole when V1 or read from an archive)."""
    if t.slices and t.ranged_rows:  # partitioned: rows gathered from the slices that hold them
        step = max(1, CHUNK_BYTES // max(1, t.entry.dtype_info.itemsize * math.prod(t.shape[1:])))
        for start in range(0, t.shape[0], step):
            yield t.read_rows(start, min(t.shape[0], start + step)).reshape(-1)
        return
    for chunk in t.iter_chunks(CHUNK_BYTES):
        yield chunk.reshape(-1)


def _paired(xs, ys):
    """Pieces of equal length from two streams of 1-D arrays that hold the same number of elements."""
    x = y = None
    while True:
        while x is None or not len(x):
            x = next(xs, None)
            if x is None:
                _drain(ys)
                return
        while y is None or not len(y):
            y = next(ys, None)
            if y is None:
                _drain(xs)
                return
        n = min(len(x), len(y))
        yield x[:n], y[:n]
        x, y = x[n:], y[n:]


def _drain(chunks) -> None:
    """Run a chunk stream to its end: its checksum is checked only once its last bytes are read."""
    for _ in chunks:
        pass
