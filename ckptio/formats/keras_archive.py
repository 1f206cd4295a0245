"""Keras 3 .keras archives: read their weights; strip the optimizer's out of them (into a new
.keras, or into a .weights.h5 that model.load_weights reads).

    zip (stored): metadata.json    {"keras_version": ..., "date_saved": ...}
                  config.json      the model's config (compile_config: optimizer class, not state)
                  model.weights.h5 the weights, laid out as in keras_h5.py; /optimizer when compiled
                  assets/...       only if some object saves assets
(FORMAT-models.md §7.2.) Keras loads an archive whose h5 has no /optimizer with
load_model(..., compile=False); a built optimizer only warns about the missing weights.
"""

from __future__ import annotations

import os
import zipfile

from ..errors import PlanError, UnsupportedError, WrongFileError
from .keras_h5 import OPTIMIZER_GROUP, KerasCheckpoint, import_h5py, open_h5, walk

WEIGHTS = "model.weights.h5"


def _open_zip(path: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError) as exc:
        raise WrongFileError(
            f"not a Keras .keras archive (not a zip: {exc}); pass a Keras 3 .keras file", path=path
        ) from None
    except FileNotFoundError:
        from ..errors import CheckpointNotFoundError

        raise CheckpointNotFoundError("no such file", path=path) from None


def _weights_member(archive: zipfile.ZipFile, path: str) -> zipfile.ZipInfo:
    names = set(archive.namelist())
    if WEIGHTS not in names:
        if "model.weights.npz" in names:
            raise UnsupportedError(
                "this .keras archive holds model.weights.npz; ckptio reads model.weights.h5 only", path=path
            )
        raise WrongFileError(f"not a Keras 3 .keras archive (no {WEIGHTS}); pass a Keras 3 .keras file", path=path)
    return archive.getinfo(WEIGHTS)


def open_keras(path: str) -> KerasCheckpoint:
    """The weights of a .keras archive as a Checkpoint (names = h5 dataset paths)."""
    from ..io import FileSource
    from .npz import _data_offset

    import_h5py()
    archive = _open_zip(path)
    src = inner = h5 = None
    try:
        member = _weights_member(archive, path)
        src = FileSource(path)
        inner = archive.open(member)  # stored members are seekable: h5py reads through it
        h5 = open_h5(inner, path)
        if member.compress_type == zipfile.ZIP_STORED:
            entries, loaders = walk(h5, src, base=_data_offset(src, member, WEIGHTS, path), path=path)
        else:  # deflated: no byte ranges in the archive, read everything through h5py
            entries, loaders = walk(h5, src, base=0, path=path)
            loaders.update({n: _through_h5(h5, n) for n in entries if n not in loaders})
    except BaseException:
        for obj in (h5, inner, src, archive):
            if obj is not None:
                obj.close()
        raise
    from .base import RangeReader

    return KerasCheckpoint(
        RangeReader(path, [src], entries, loaders), "keras", path, h5, closers=[inner.close, archive.close]
    )


def _through_h5(h5, name):
    from ..bundle import dtypes
    from .keras_h5 import _dtype_of, _loader

    ds = h5[name]
    return _loader(ds, dtypes.lookup(_dtype_of(ds, name, "")))


def rewrite_keras(
    src,
    dst: str,
    steps=(),
    *,
    force: bool = False,
    dry_run: bool = False,
    fsync: bool = False,
    progress=None,
    **_ignored,
):
    """strip a Keras file into OUT.keras (from a .keras) or OUT.weights.h5 (from either); returns a RewriteReport.

    Only strip applies: the weights keep Keras' layout, less the /optimizer group.
    """
    import time

    from ..rewrite_exec import RewriteReport
    from ..transform import StripOptimizer
    from . import kind_of
    from .export import check_outputs

    started = time.perf_counter()
    src_path = getattr(src, "path", None) if not isinstance(src, (str, os.PathLike)) else os.fspath(src)
    src_kind, dst_kind = kind_of(src_path or ""), kind_of(dst)
    if src_path is None or src_kind not in ("keras", "keras_h5") or (dst_kind == "keras" and src_kind != "keras"):
        raise PlanError(
            "Keras outputs are written from Keras inputs only: strip IN.keras OUT.keras, or "
            "strip IN.keras|IN.weights.h5 OUT.weights.h5 (other checkpoints: write .safetensors or .npz)",
            path=dst,
        )
    if any(not isinstance(s, StripOptimizer) for s in steps):
        raise PlanError("a Keras output supports strip only (dropping the optimizer's weights)", path=dst)
    strip = bool(steps)
    opener = open_keras if src_kind == "keras" else _open_weights
    with opener(src_path) as ckpt:
        entries = ckpt.entries()
        dropped = sorted(n for n in entries if strip and n.split("/", 1)[0] == OPTIMIZER_GROUP)
        kept = [(n, n) for n in sorted(entries) if n not in set(dropped)]
        report = RewriteReport(
            src_path,
            dst,
            kept=kept,
            dropped=dropped,
            dry_run=dry_run,
            bytes_before=sum(e.size for e in entries.values()),
            bytes_after=sum(entries[n].size for n, _ in kept),
        )
    check_outputs([dst], [dst] if os.path.lexists(dst) else [], force=force, inputs=[src_path])
    if not dry_run:
        drop = (OPTIMIZER_GROUP,) if strip else ()
        if dst_kind == "keras":
            _write_archive(src_path, dst, drop=drop, fsync=fsync)
        else:
            _write_weights(src_path, src_kind, dst, drop=drop, fsync=fsync)
    report.seconds = time.perf_counter() - started
    return report


def _open_weights(path):
    from .keras_h5 import open_weights_h5

    return open_weights_h5(path)


def _write_weights(src_path: str, src_kind: str, dst: str, *, drop, fsync: bool) -> None:
    """A .weights.h5 of the source's weights without the groups in drop; atomic."""
    from ..io import AtomicFiles, make_dirs
    from .export import committing

    directory = os.path.dirname(dst) or "."
    make_dirs(directory)
    files = AtomicFiles(directory)
    tmp, fd = files.create(dst)
    os.close(fd)  # h5py writes the file by name
    with committing(files, dst, fsync=fsync):
        if src_kind == "keras":
            with (
                _open_zip(src_path) as archive,
                archive.open(_weights_member(archive, src_path)) as inner,
                open_h5(inner, src_path) as h5,
            ):
                _copy_h5(h5, tmp, drop)
        else:
            with open_h5(src_path, src_path) as h5:
                _copy_h5(h5, tmp, drop)


def _write_archive(src_path: str, dst: str, *, drop, fsync: bool) -> None:
    """Copy the archive member by member (stored), the weights without the groups in drop; atomic."""
    from ..io import AtomicFiles, make_dirs
    from .export import committing

    directory = os.path.dirname(dst) or "."
    make_dirs(directory)
    import tempfile

    files = AtomicFiles(directory)
    # The new h5 is built in a scratch file beside the output (h5py writes files, not streams).
    scratch_fd, scratch = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(dst)}.h5-")
    os.close(scratch_fd)
    _, fd = files.create(dst)
    try:
        with committing(files, dst, fsync=fsync), _open_zip(src_path) as archive:
            member = _weights_member(archive, src_path)
            with archive.open(member) as inner, open_h5(inner, src_path) as h5:
                _copy_h5(h5, scratch, drop)
            with os.fdopen(fd, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as out:
                for m in archive.infolist():
                    info = zipfile.ZipInfo(m.filename, date_time=m.date_time)
                    info.compress_type, info.external_attr = zipfile.ZIP_STORED, m.external_attr
                    if m.filename == WEIGHTS:
                        with open(scratch, "rb") as h, out.open(info, "w", force_zip64=True) as w:
                            _pump(h, w)
                    elif not m.is_dir():
                        with archive.open(m) as r, out.open(info, "w", force_zip64=True) as w:
                            _pump(r, w)
                    else:
                        out.writestr(info, b"")
    finally:
        os.unlink(scratch)


def _pump(reader, writer, chunk: int = 8 << 20) -> None:
    while data := reader.read(chunk):
        writer.write(data)


def _copy_h5(h5, out_path: str, drop) -> None:
    """Every top-level group and dataset of h5 except those named in drop, attributes included."""
    h5py = import_h5py()
    with h5py.File(out_path, "w") as out:
        for key, value in h5.attrs.items():
            out.attrs[key] = value
        for name in h5:
            if name not in drop:
                h5.copy(h5[name], out, name=name)
