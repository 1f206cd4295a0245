"""Small helpers shared by test modules: reading whole checkpoints and comparing tensors exactly."""
from __future__ import annotations

import numpy as np

import ckptio


def read_all(prefix) -> dict:
    """Every tensor of a checkpoint, read."""
    with ckptio.open(prefix) as c:
        return {n: c[n].read() for n in c}


def same(a, b) -> bool:
    """Same dtype, shape and bytes (element-wise for string object arrays)."""
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and (
        list(a.flat) == list(b.flat) if a.dtype == object else a.tobytes() == b.tobytes())
