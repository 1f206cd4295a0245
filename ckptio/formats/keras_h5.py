"""Keras 3 weight files (.weights.h5, also model.weights.h5 inside a .keras archive), read through h5py.

    /layers/dense/vars/0  (3, 5) <f4       one group per saveable object, its variables numbered
    /layers/dense/vars/1  (5,)   <f4       in creation order (HDF5 lists them 0, 1, 10, 2 ...)
    /optimizer/vars/0     ()     <i8       iterations, learning_rate, then the slots
(FORMAT-models.md §7.1.) Tensor names are the dataset paths without the leading '/'. A
contiguous, unfiltered dataset (what Keras writes) is one byte range of the file, read without
h5py; anything else is read through h5py. bfloat16 is an opaque 2-byte type with the attribute
dtype="bfloat16". HDF5 files Keras writes carry no checksums.
"""

from __future__ import annotations

from ..bundle import dtypes
from ..bundle.entry import Entry
from ..errors import CkptioError, TruncatedError, UnsupportedError, WrongFileError
from .base import ForeignCheckpoint, RangeReader, numel

OPTIMIZER_GROUP = "optimizer"


def import_h5py():
    try:
        import h5py
    except ImportError:
        raise UnsupportedError("reading Keras weight files needs h5py: pip install 'ckptio[keras]'") from None
    return h5py


class KerasCheckpoint(ForeignCheckpoint):
    """A Keras 3 weights file (format "keras_h5") or the weights inside a .keras archive (format "keras")."""

    def __init__(self, reader, fmt, path, h5file, closers=()):
        super().__init__(reader, fmt, path, (path,))
        self.h5 = h5file
        self._closers = list(closers)

    def close(self) -> None:
        try:
            self.h5.close()
        finally:
            for close in self._closers:
                close()
            super().close()

    def roles(self) -> dict[str, str]:
        """name -> optimizer for the /optimizer group's variables, weight for the rest (for ls)."""
        return {n: "optimizer" if n.split("/", 1)[0] == OPTIMIZER_GROUP else "weight" for n in self.entries()}

    def verify_format(self, report, progress=None) -> None:
        super().verify_format(report, progress)
        for name in self:
            t = self[name]
            try:
                t.read()
                report.bytes_checked += t.nbytes
                if progress:
                    progress(t.nbytes)
            except CkptioError as exc:
                report.add(exc, key=name)
            except (OSError, ValueError, KeyError) as exc:  # h5py's errors on a damaged file
                report.add(f"unreadable: {exc}", path=self.path, key=name)

    def what_is_checked(self) -> str:
        return (
            "the HDF5 structure and every dataset read back (shape, dtype and extent in the file); "
            "Keras writes no checksums, so the values themselves cannot be verified"
        )


def walk(h5file, src, *, base: int, path: str) -> tuple[dict[str, Entry], dict]:
    """(entries, loaders) of every dataset in an open h5py File whose bytes start at src offset base."""
    h5py = import_h5py()
    entries, loaders = {}, {}
    found = []
    h5file.visititems(lambda name, obj: found.append((name, obj)) if isinstance(obj, h5py.Dataset) else None)
    for name, ds in found:
        enum = _dtype_of(ds, name, path)
        shape = tuple(int(d) for d in ds.shape)
        info = dtypes.require(enum)
        nbytes = numel(shape) * info.itemsize
        offset = _contiguous_offset(ds)
        if offset is not None and ds.dtype.byteorder in "<|=" and ds.id.get_storage_size() == nbytes:
            entry = Entry(enum, shape, 0, base + offset, nbytes, 0)
            if entry.offset + nbytes > src.size:
                raise TruncatedError(
                    f"dataset runs past the end of the {src.size}-byte file", path=path, key=name, offset=entry.offset
                )
            entries[name] = entry
        else:
            entries[name] = Entry(enum, shape, 0, 0, nbytes, 0)
            loaders[name] = _loader(ds, info)
    return entries, loaders


def _dtype_of(ds, name, path) -> int:
    dt = ds.dtype
    if dt.kind == "V" and dt.itemsize == 2 and ds.attrs.get("dtype") in ("bfloat16", b"bfloat16"):
        return dtypes.BY_NAME["bfloat16"].enum
    if dt.kind not in "biufc" or dt.fields is not None:
        raise UnsupportedError(f"HDF5 dataset of type {dt} is not a numeric tensor", path=path, key=name)
    return dtypes.from_numpy(dt.newbyteorder("=")).enum


def _contiguous_offset(ds) -> int | None:
    """The file offset of a contiguous, unfiltered dataset's bytes, else None."""
    if ds.chunks is not None or ds.compression is not None:
        return None
    try:
        if ds.id.get_create_plist().get_nfilters():
            return None
        return ds.id.get_offset()  # None when no storage is allocated (an empty dataset)
    except (OSError, ValueError):
        return None


def _loader(ds, info):
    def load():
        import numpy as np

        from ..bundle.decode import from_bytes

        value = np.ascontiguousarray(ds[()])
        value = value.astype(value.dtype.newbyteorder("<"), copy=False)
        return from_bytes(bytearray(value.tobytes()), info, value.shape)

    return load


def open_h5(fileobj_or_path, path: str):
    """h5py.File, read-only; a file that is not HDF5 is a one-line error."""
    h5py = import_h5py()
    try:
        return h5py.File(fileobj_or_path, "r")
    except (OSError, ValueError) as exc:
        raise WrongFileError(
            f"not an HDF5 file that h5py can open ({exc}); pass a Keras 3 .weights.h5 or .keras file", path=path
        ) from None


def open_weights_h5(path: str) -> KerasCheckpoint:
    from ..io import FileSource

    src = FileSource(path)
    try:
        h5 = open_h5(path, path)
        try:
            entries, loaders = walk(h5, src, base=0, path=path)
        except BaseException:
            h5.close()
            raise
    except BaseException:
        src.close()
        raise
    return KerasCheckpoint(RangeReader(path, [src], entries, loaders), "keras_h5", path, h5)


__all__ = ["open_weights_h5", "KerasCheckpoint", "walk", "OPTIMIZER_GROUP"]
