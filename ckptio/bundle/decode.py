"""Turn stored tensor bytes into numpy arrays (and back) for fixed-width dtypes."""
from __future__ import annotations

import numpy as np

from .dtypes import DType


def from_bytes(data, info: DType, shape: tuple[int, ...], *, big_endian: bool = False) -> np.ndarray:
    """A numpy array (writable when data is) of shape from raw element bytes."""
    dt = info.numpy()
    if info.name in ("int4", "uint4"):
        # One element per byte, value in the low nibble (ml_dtypes' own layout); TF also
        # accepts sign-extended bytes, so keep only the nibble.
        return (np.frombuffer(data, np.uint8) & 0x0F).view(dt).reshape(shape)
    arr = np.frombuffer(data, dt)
    if big_endian and dt.itemsize > 1:
        arr = arr.byteswap()
    return arr.reshape(shape)


def to_bytes(arr: np.ndarray, info: DType, *, big_endian: bool = False) -> bytes:
    """The stored bytes of a numpy array of this dtype (C order)."""
    arr = np.ascontiguousarray(arr, dtype=info.numpy())
    if info.name in ("int4", "uint4"):
        return (arr.view(np.uint8) & 0x0F).tobytes()
    if big_endian and arr.dtype.itemsize > 1:
        arr = arr.byteswap()
    return arr.tobytes()
