"""The arithmetic of `merge`: one method's rule, applied to aligned chunks of one tensor from every input.

Every floating tensor is combined in float64 (complex ones in complex128) and cast back to its
dtype at the end. Inputs are read in aligned runs of CHUNK_ELEMENTS elements, so memory holds one
chunk per input, never a whole tensor. The rules, for inputs x_1 .. x_n (in merge order):

    mean             (x_1 + x_2 + ... + x_n) / n          (summed in order, then divided)
    weighted         sum_i w_i x_i / sum_i w_i           (weights normalised to sum 1)
    ema              m_1 = x_1;  m_k = d m_(k-1) + (1 - d) x_k;  result m_n   (decay d)
    task-arithmetic  B + sum_i w_i (x_i - B)              (base B; weights not normalised, default 1)
    slerp            c_0 x_1 + c_1 x_2, per tensor, flattened, with t = the weight:
                       cos(theta) = <x_1, x_2> / (|x_1| |x_2|)
                       c_0 = sin((1 - t) theta) / sin(theta),  c_1 = sin(t theta) / sin(theta)
                     and plain linear interpolation c_0 = 1 - t, c_1 = t when either vector is
                     zero or |cos(theta)| > PARALLEL (near-parallel or opposite: sin(theta) ~ 0).
"""
from __future__ import annotations

import math

import numpy as np

from .bundle import dtypes
from .bundle.decode import from_bytes, to_bytes
from .errors import CorruptCheckpointError

CHUNK_ELEMENTS = 1 << 20  # per input: 4 MiB of float32 read, 8 MiB as float64
PARALLEL = 0.9995  # above this |cos(theta)| slerp interpolates linearly (as mergekit does)

METHODS = ("mean", "weighted", "ema", "task-arithmetic", "slerp")


def is_combined(dtype: int) -> bool:
    """Whether merge combines tensors of this dtype (floating and complex); the rest are copied."""
    name = dtypes.name_of(dtype)
    return name.startswith(("float", "bfloat", "complex"))


def accumulator(dtype: int):
    """The numpy dtype a tensor of this dtype is combined in."""
    return np.complex128 if dtypes.name_of(dtype).startswith("complex") else np.float64


def flat_chunks(ckpt, name: str, entry, slice_=None, elements: int | None = None):
    """A tensor's (or one stored slice's) elements as flat arrays of `elements` (the last shorter).

    V2 bundles stream their bytes, the crc32c checked after the last chunk; V1 tables hold a
    tensor inline in one protobuf, so a V1 tensor is read whole and then cut.
    """
    elements = elements or CHUNK_ELEMENTS
    info = dtypes.lookup(entry.dtype)
    if ckpt.format == "v2":
        reader = ckpt._reader
        big = reader.header.big_endian
        for data in reader.iter_raw(name, entry, elements * info.itemsize):
            yield from_bytes(data, info, (len(data) // info.itemsize,), big_endian=big)
        return
    reader = ckpt._reader
    array = reader.read_entry(name, entry) if slice_ is None else reader.read_slice(name, slice_, entry.shape)
    flat = np.asarray(array).reshape(-1)
    for start in range(0, flat.size, elements):
        yield flat[start:start + elements]


def aligned(streams, name: str):
    """Zip chunk streams that must be of one length; drain them all, so each one checks its crc32c."""
    while True:
        chunks = [next(s, None) for s in streams]
        if all(c is None for c in chunks):
            return
        if any(c is None for c in chunks) or len({c.size for c in chunks}) != 1:
            # Entries of equal dtype and shape always give equal chunks; this is a short tensor.
            raise CorruptCheckpointError("inputs gave this tensor's elements in unequal runs", key=name)
        yield chunks


def combine(method: str, chunks, acc_dtype, *, weights=None, decay=None, coefficients=None):
    """One output chunk (in acc_dtype) from aligned input chunks, per the method's rule."""
    xs = chunks
    if method == "mean":
        acc = xs[0].astype(acc_dtype)
        for x in xs[1:]:
            acc += x.astype(acc_dtype)
        acc /= len(xs)
        return acc
    if method == "ema":
        acc = xs[0].astype(acc_dtype)
        for x in xs[1:]:
            acc *= decay
            acc += (1.0 - decay) * x.astype(acc_dtype)
        return acc
    if method == "task-arithmetic":  # chunks[0] is the base
        base = xs[0].astype(acc_dtype)
        acc = base.copy()
        for w, x in zip(weights, xs[1:]):
            acc += w * (x.astype(acc_dtype) - base)
        return acc
    if method in ("weighted", "slerp"):
        coef = weights if method == "weighted" else coefficients
        acc = xs[0].astype(acc_dtype) * coef[0]
        for c, x in zip(coef[1:], xs[1:]):
            acc += c * x.astype(acc_dtype)
        return acc
    raise ValueError(method)


def slerp_coefficients(dot: float, norm0: float, norm1: float, t: float) -> tuple[float, float, bool]:
    """(c_0, c_1, linear) for slerp at t from the whole tensors' dot product and norms."""
    if norm0 == 0.0 or norm1 == 0.0:
        return 1.0 - t, t, True
    cos = dot / (norm0 * norm1)
    if abs(cos) > PARALLEL:
        return 1.0 - t, t, True
    theta = math.acos(max(-1.0, min(1.0, cos)))
    s = math.sin(theta)
    return math.sin((1.0 - t) * theta) / s, math.sin(t * theta) / s, False


class SlerpStats:
    """First slerp pass over one tensor: running dot product and squared norms (float64)."""

    __slots__ = ("dot", "sq0", "sq1")

    def __init__(self):
        self.dot = self.sq0 = self.sq1 = 0.0

    def add(self, a, b) -> None:
        a, b = a.astype(np.float64), b.astype(np.float64)
        self.dot += float(np.dot(a, b))
        self.sq0 += float(np.dot(a, a))
        self.sq1 += float(np.dot(b, b))

    def coefficients(self, t: float) -> tuple[float, float, bool]:
        return slerp_coefficients(self.dot, math.sqrt(self.sq0), math.sqrt(self.sq1), t)


def cast_back(acc, dtype: int) -> bytes:
    """The stored bytes of a combined chunk in the tensor's own dtype (round to nearest)."""
    info = dtypes.lookup(dtype)
    return to_bytes(acc.astype(info.numpy()), info)
