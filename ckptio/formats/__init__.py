"""Weight formats other than TensorFlow's bundle, decided by the file name (and checked by content).

    x.safetensors                    safetensors (one file)          read, written
    x.safetensors.index.json         a sharded safetensors set       read (written beside shards)
    x.npz                            NumPy archive of .npy members   read, written
    x.weights.h5                     Keras 3 weights (h5py)          read; strip from Keras files writes one
    x.keras                          Keras 3 archive                 read; strip writes a new one

open_format() gives a Checkpoint (names -> lazy tensors) so every reading command works on
them; write_format() is the write side of strip / rename / rewrite when OUT has one of these names.
"""

from __future__ import annotations

import os

# (suffix, kind), longest first: ".safetensors.index.json" before ".json" would ever match
SUFFIXES = (
    (".safetensors.index.json", "safetensors"),
    (".safetensors", "safetensors"),
    (".npz", "npz"),
    (".weights.h5", "keras_h5"),
    (".keras", "keras"),
)
WRITABLE = ("safetensors", "npz", "keras")


def kind_of(path) -> str | None:
    """The format a file name says, or None for a TensorFlow checkpoint path."""
    text = os.fspath(path)
    for suffix, kind in SUFFIXES:
        if text.endswith(suffix):
            return kind
    return None


def open_format(path, **kwargs):
    """Open a file of one of these formats as a read-only Checkpoint."""
    from ..errors import UnsupportedError
    from ..store import is_url, local_path

    text = os.fspath(path)
    if is_url(text):
        raise UnsupportedError("safetensors, .npz and Keras files are read from local paths only", path=text)
    text = local_path(text)
    if kwargs:
        raise TypeError(f"unexpected options for a local file: {', '.join(kwargs)}")
    kind = kind_of(text)
    if kind == "safetensors":
        from .safetensors import open_safetensors

        return open_safetensors(text)
    if kind == "npz":
        from .npz import open_npz

        return open_npz(text)
    if kind == "keras_h5":
        from .keras_h5 import open_weights_h5

        return open_weights_h5(text)
    if kind == "keras":
        from .keras_archive import open_keras

        return open_keras(text)
    raise ValueError(f"not a weight-format path: {text}")


def write_format(src, dst, steps=(), **options):
    """strip / rename / rewrite into a .safetensors, .npz or Keras file; returns the RewriteReport.

    src: an open Checkpoint (ckptio.rewrite opens any path form and sends these outputs here).
    """
    kind = kind_of(dst)
    if kind in ("keras", "keras_h5"):
        from .keras_archive import rewrite_keras

        return rewrite_keras(src, os.fspath(dst), steps, **options)
    from .export import export_tensors

    if kind == "safetensors":
        from . import safetensors as writer
    elif kind == "npz":
        from . import npz as writer
    else:
        from ..errors import PlanError

        raise PlanError(
            "ckptio cannot write Keras .weights.h5 files yet; write .safetensors or .npz, or "
            "strip a .keras archive into a .keras",
            path=os.fspath(dst),
        )
    return export_tensors(src, os.fspath(dst), steps, writer=writer, **options)


__all__ = ["kind_of", "open_format", "write_format", "SUFFIXES"]
