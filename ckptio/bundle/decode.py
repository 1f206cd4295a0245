"""Turn stored tensor bytes into numpy arrays (and back) for fixed-width dtypes."""

from __future__ import annotations

import numpy as np

from .dtypes import DType

# dtypes stored one element per byte in the low bits: name -> mask of the bits that count
_SUB_BYTE = {"int4": 0x0F, "uint4": 0x0F, "float4_e2m1fn": 0x0F, "int2": 0x03, "uint2": 0x03}


def from_bytes(data, info: DType, shape: tuple[int, ...], *, big_endian: bool = False) -> np.ndarray:
    """A numpy array (writable when data is) of shape from raw element bytes."""
    dt = info.numpy()
    bits = _SUB_BYTE.get(info.name)
    if bits:
        # One element per byte, value in the low bits (ml_dtypes' own layout); TF also
        # accepts sign-extended bytes, so keep only those bits.
        return (np.frombuffer(data, np.uint8) & bits).view(dt).reshape(shape)
    arr = np.frombuffer(data, dt)
    if big_endian and dt.itemsize > 1:
        arr = arr.byteswap()
    return arr.reshape(shape)


def to_bytes(arr: np.ndarray, info: DType, *, big_endian: bool = False) -> bytes:
    """The stored bytes of a numpy array of this dtype (C order)."""
    arr = np.ascontiguousarray(arr, dtype=info.numpy())
    bits = _SUB_BYTE.get(info.name)
    if bits:
        return (arr.view(np.uint8) & bits).tobytes()
    if big_endian and arr.dtype.itemsize > 1:
        arr = arr.byteswap()
    return arr.tobytes()


def cast(arr: np.ndarray, target: DType) -> np.ndarray:
    """arr converted to target, rounded as TF's Cast op rounds it."""
    if arr.dtype == np.float64 and target.name in ("bfloat16", "float16"):
        # TF converts double to a 16-bit float through float32 (two roundings): going straight
        # there gives a different value for numbers near a halfway point.
        arr = arr.astype(np.float32)
    return arr.astype(target.numpy())
