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
                     zero or |cos(theta)| > PARALLEL (near-parallel or opposite: sin(theta) ~ 0),
                     or the angle is undefined (NaN or infinite values).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .bundle import dtypes
from .bundle.decode import _SUB_BYTE, from_bytes, to_bytes
from .errors import CorruptCheckpointError

# Elements per run: a run is what one thread combines at a time and what is written at once (2 MiB
# of float32 out). The threaded path reads and combines a run in cache-sized blocks (merge_stream).
CHUNK_ELEMENTS = 1 << 19
PARALLEL = 0.9995  # above this |cos(theta)| slerp interpolates linearly (as mergekit does)

METHODS = ("mean", "weighted", "ema", "task-arithmetic", "slerp")


def is_combined(dtype: int) -> bool:
    """Whether merge combines tensors of this dtype (floating and complex); the rest are copied."""
    name = dtypes.name_of(dtype)
    return name.startswith(("float", "bfloat", "complex"))


def accumulator(dtype: int):
    """The numpy dtype a tensor of this dtype is combined in."""
    return np.complex128 if dtypes.name_of(dtype).startswith("complex") else np.float64


def flat_chunks(ckpt, name: str, entry, slice_=None, buffers=()):
    """A tensor's (or one stored slice's) elements as flat arrays of CHUNK_ELEMENTS (the last shorter).

    Byte ranges (V2 bundles) stream (into the buffers in turn, when given), the crc32c checked after
    the last chunk; a value stored otherwise (inline in a V1 table's protobuf) is read whole and
    then cut.
    """
    elements = CHUNK_ELEMENTS
    info = dtypes.require(entry.dtype)
    reader = ckpt.reader
    if reader.stores_ranges(name, entry):
        big = reader.big_endian
        size = elements * info.itemsize
        views = [memoryview(b) for b in buffers if len(b) >= size]
        for data in reader.iter_raw(name, entry, size, buffers=views):
            yield from_bytes(data, info, (len(data) // info.itemsize,), big_endian=big)
        return
    array = reader.read_entry(name, entry) if slice_ is None else reader.read_slice(name, slice_)
    flat = np.asarray(array).reshape(-1)
    for start in range(0, flat.size, elements):
        yield flat[start : start + elements]


def aligned(streams, name: str):
    """Zip chunk streams that must be of one length; drain them all, so each one checks its crc32c."""
    while True:
        chunks = [next(s, None) for s in streams]
        if all(c is None for c in chunks):
            return
        if any(c is None for c in chunks) or len({c.size for c in chunks if c is not None}) != 1:
            # Entries of equal dtype and shape always give equal chunks; this is a short tensor.
            raise CorruptCheckpointError("inputs gave this tensor's elements in unequal runs", key=name)
        yield chunks


class Combiner:
    """One tensor's rule applied chunk by chunk into buffers reused from chunk to chunk.

    Every step is a ufunc in the accumulator's dtype (float64, or complex128), in the same order
    as the rule above, so the result is what numpy computes on whole float64 arrays.
    """

    def __init__(self, method: str, dtype: int, *, weights=None, decay=None, coefficients=None, buffers=None):
        self.method, self.weights, self.decay, self.coefficients = method, weights, decay, coefficients
        self.info = dtypes.require(dtype)
        self.acc_dtype = np.dtype(accumulator(dtype))
        self._buffers = {} if buffers is None else buffers  # may be shared by the combiners of a merge

    def _buffer(self, name: str, size: int, dtype) -> np.ndarray:
        key = (name, np.dtype(dtype))
        buf = self._buffers.get(key)
        if buf is None or buf.size < size:
            buf = self._buffers[key] = np.empty(size, dtype)
        return buf[:size]

    def __call__(self, chunks, into: np.ndarray | None = None) -> memoryview:
        """The output bytes (in the tensor's dtype) for aligned input chunks; valid until the next call.

        into: where to put them (chunks[0].size elements of storage(dtype)), else a buffer of the
        combiner's own.
        """
        with np.errstate(all="ignore"):  # inf and NaN follow IEEE rules, as in TensorFlow; no warnings
            return self.apply(chunks, into)

    def apply(self, chunks, into: np.ndarray | None = None) -> memoryview:
        """__call__ in numpy's error state as it is: a caller combining many blocks sets it once."""
        k = chunks[0].size
        xs = chunks
        if self.info.name == "bfloat16":  # widened exactly to float32 in reused buffers
            xs = [widen(x, self._buffer(f"wide{i}", k, np.uint32)) for i, x in enumerate(chunks)]
        out = self._buffer("out", k, storage(self.info)) if into is None else into
        # numpy's own cast to float32/float16/float64/complex rounds as astype does: the rule's last
        # step writes straight into the output. bfloat16 and float8 are rounded separately.
        direct = self.info.name in _NUMPY_CASTS
        acc = self.combine(xs, out if direct else self._buffer("acc", k, self.acc_dtype))
        if direct:
            return out.view(np.uint8).data
        data = narrow(acc, self.info, out, self._buffer)
        if into is not None and info_is_sub_byte(self.info):  # encoded apart: copied in
            into.view(np.uint8)[:] = np.frombuffer(data, np.uint8)
            return into.view(np.uint8).data
        return data

    def combine(self, xs, final: np.ndarray) -> np.ndarray:
        """The rule on one run of elements, in the accumulator dtype; the last step writes into final."""
        k, dt = xs[0].size, self.acc_dtype
        acc = self._buffer("acc", k, dt)
        method = self.method
        last = dict(out=final, dtype=dt, casting="unsafe")
        if method == "mean":
            np.add(xs[0], xs[1], out=acc, dtype=dt)  # (x_1 + x_2) + x_3 ...: numpy's order
            for x in xs[2:]:
                np.add(acc, x, out=acc, dtype=dt)
            np.divide(acc, len(xs), **last)
            return final
        tmp = self._buffer("tmp", k, dt)
        if method == "ema":
            np.copyto(acc, xs[0])
            for i, x in enumerate(xs[1:], 2):
                np.multiply(acc, self.decay, out=acc, dtype=dt)
                np.multiply(x, 1.0 - self.decay, out=tmp, dtype=dt)
                np.add(acc, tmp, **(last if i == len(xs) else dict(out=acc, dtype=dt)))
            return final
        if method == "task-arithmetic":  # xs[0] is the base
            base = self._buffer("base", k, dt)
            np.copyto(base, xs[0])
            np.copyto(acc, base)
            for i, (w, x) in enumerate(zip(self.weights, xs[1:]), 2):
                np.subtract(x, base, out=tmp, dtype=dt)
                np.multiply(tmp, w, out=tmp, dtype=dt)
                np.add(acc, tmp, **(last if i == len(xs) else dict(out=acc, dtype=dt)))
            return final
        if method in ("weighted", "slerp"):
            coef = self.weights if method == "weighted" else self.coefficients
            np.multiply(xs[0], coef[0], out=acc, dtype=dt)
            for i, (c, x) in enumerate(zip(coef[1:], xs[1:]), 2):
                np.multiply(x, c, out=tmp, dtype=dt)
                np.add(acc, tmp, **(last if i == len(xs) else dict(out=acc, dtype=dt)))
            return final
        raise ValueError(method)


def storage(info) -> np.dtype:
    """The numpy dtype merge holds a tensor's elements in: bfloat16 as its bits (uint16), no ml_dtypes."""
    return np.dtype(np.uint16) if info.name == "bfloat16" else np.dtype(info.numpy())


def info_is_sub_byte(info) -> bool:
    """Whether a dtype is stored one masked element per byte (its bytes are not numpy's own)."""
    return info.name in _SUB_BYTE


# Output dtypes numpy itself casts float64 (complex128) into, rounding to nearest even once.
_NUMPY_CASTS = ("float16", "float32", "float64", "complex64", "complex128")


def widen(x: np.ndarray, buffer: np.ndarray | None = None) -> np.ndarray:
    """bfloat16 (or its bits as uint16) as float32, exactly (its bits are a float32's top half); others as they are.

    buffer: x.size uint32 to widen into (no allocation: a fresh array per chunk costs page faults).
    """
    dt = x.dtype  # dtype.name is slow (a few microseconds a block): the char first
    if dt.itemsize == 2 and (dt.char == "H" or dt.name == "bfloat16"):  # uint16 ("H"): a bfloat16's bits
        if buffer is None:
            buffer = np.empty(x.size, np.uint32)
        np.left_shift(x.view(np.uint16), 16, out=buffer, dtype=np.uint32)
        return buffer.view(np.float32)
    return x


def narrow(acc: np.ndarray, info, out: np.ndarray, scratch=None) -> memoryview:
    """acc cast to the tensor's dtype (round to nearest even), as stored bytes.

    scratch(name, size, dtype): reusable buffers (else temporaries are allocated).
    """
    if info.name == "bfloat16":
        to_bfloat16(acc, out, scratch)
    elif info.name in _SUB_BYTE:  # one element per byte, masked: the decoder's own encoder
        return memoryview(to_bytes(acc.astype(info.numpy()), info))
    else:
        np.copyto(out, acc, casting="unsafe")
    return out.view(np.uint8).data


def to_bfloat16(x: np.ndarray, out: np.ndarray, scratch=None) -> None:
    """float64 -> bfloat16 rounded once, to nearest even, exactly as x.astype(bfloat16) (~4x faster).

    out: bfloat16 or their bits as uint16 (merge keeps bfloat16 as bits: importing ml_dtypes costs
    a fresh process more CPU time than combining a gigabyte). ml_dtypes casts float64 to bfloat16
    one element at a time. Through float32 it is fast: numpy rounds to float32, then the top 16
    bits are rounded to nearest even in integer arithmetic. Rounding twice gives the same result
    except where the float32 lands exactly on a bfloat16 midpoint (low 16 bits 0x8000): rounding
    is monotonic and every midpoint is a float32, so elsewhere x and its float32 lie strictly
    between the same two midpoints. Those few elements go to the side x is on (a true tie stays
    rounded to even). NaN becomes ml_dtypes' quiet NaN of the same sign (0x7FC0 / 0xFFC0).
    """

    def buffer(name, dtype):
        return np.empty(x.size, dtype) if scratch is None else scratch(name, x.size, dtype)

    t = buffer("narrow", np.float32)
    np.copyto(t, x, casting="unsafe")
    u = t.view(np.uint32)
    w = buffer("bits", np.uint32)
    np.right_shift(u, 16, out=w)
    np.bitwise_and(w, 1, out=w)  # the kept part's last bit: ties go to even
    np.add(w, 0x7FFF, out=w)
    np.add(w, u, out=w)  # no wrap: only a NaN's bits come within 0x8000 of 2**32
    np.right_shift(w, 16, out=w)
    bits = out.view(np.uint16)
    np.copyto(bits, w, casting="unsafe")
    tie = buffer("tie", np.bool_)
    np.bitwise_and(u, 0xFFFF, out=w)
    np.equal(w, 0x8000, out=tie)
    if tie.any():
        # A mean of bfloat16s often lands exactly on a midpoint (a true tie, rounded to even above):
        # only the float32s that differ from x need a look (picking elements out is the slow part).
        inexact = buffer("inexact", np.bool_)
        np.not_equal(t, x, out=inexact)  # compared as float64 (exact), cast by numpy in small buffers; NaN too
        np.logical_and(tie, inexact, out=tie)
        if tie.any():
            where = np.flatnonzero(tie)
            above, t_at = np.abs(x[where]), np.abs(t[where].astype(np.float64))
            top = (u[where] >> 16).astype(np.uint16)
            bits[where] = np.where(above > t_at, top + 1, np.where(above < t_at, top, bits[where]))
    np.isnan(t, out=tie)
    if tie.any():
        where = np.flatnonzero(tie)
        bits[where] = ((u[where] >> 16) & 0x8000) | 0x7FC0


def slerp_coefficients(dot: float, norm0: float, norm1: float, t: float) -> tuple[float, float, bool]:
    """(c_0, c_1, linear) for slerp at t from the whole tensors' dot product and norms."""
    if norm0 == 0.0 or norm1 == 0.0 or not (math.isfinite(norm0) and math.isfinite(norm1)):
        return 1.0 - t, t, True
    cos = dot / (norm0 * norm1)
    if not abs(cos) <= PARALLEL:  # near-parallel, opposite, or no angle at all (NaN or infinite values)
        return 1.0 - t, t, True
    theta = math.acos(max(-1.0, min(1.0, cos)))
    s = math.sin(theta)
    return math.sin((1.0 - t) * theta) / s, math.sin(t * theta) / s, False


@dataclass(slots=True)
class SlerpStats:
    """First slerp pass over one tensor: running dot product and squared norms (float64)."""

    dot: float = 0.0
    sq0: float = 0.0
    sq1: float = 0.0

    def add(self, a, b) -> None:
        a, b = widen(a).astype(np.float64), widen(b).astype(np.float64)
        self.dot += float(np.dot(a, b))
        self.sq0 += float(np.dot(a, a))
        self.sq1 += float(np.dot(b, b))

    def coefficients(self, t: float) -> tuple[float, float, bool]:
        return slerp_coefficients(self.dot, math.sqrt(self.sq0), math.sqrt(self.sq1), t)
