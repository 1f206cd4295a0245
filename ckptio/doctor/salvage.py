"""Write the intact tensors of a diagnosed checkpoint into a new V2 checkpoint (a local prefix, a URL or a .tar.zst)."""

from __future__ import annotations

import os

from ..bundle import dtypes, strings
from ..bundle.entry import Entry
from ..errors import PlanError, UnsupportedError
from ..store.base import Source
from .inputs import open_input
from .report import Diagnosis


def salvage(diagnosis: Diagnosis, out, *, force: bool = False) -> list[str]:
    """Write the intact tensors into a new V2 checkpoint at prefix out; return their names.

    The input is read again from its store, shard by shard in offset order (an archive member
    reads forward only); out is a local prefix, a URL (one ending in '/' names a directory: the
    input's file name there) or a .tar.zst (the input's file name inside it), written through its store.
    """
    from ..bundle.writer import BundleWriter, output_store

    d = diagnosis
    if not d.intact:
        raise PlanError("no intact tensor to salvage", path=d.path)
    inputs = [d._located] if d._located is not None else []
    stem = (d.prefix or "").rstrip("/").rsplit("/", 1)[-1] or "model.ckpt"  # kept in a URL directory or an archive
    store, prefix = output_store(os.fspath(out), name=stem, force=force)
    with BundleWriter(store, prefix, force=force, inputs=inputs) as writer:
        # Decoded tensors (V1 values, read from protobufs) are written again; byte ranges are copied.
        for name in d.intact:
            if name in d._arrays:
                writer.add_array(name, d._arrays[name], dtype=d._entries[name].dtype)
        _copy_pieces(d, writer)
        writer.finish()
    return list(d.intact)


def _copy_pieces(d: Diagnosis, writer) -> None:
    pieces = []
    for name in d.intact:
        if name in d._arrays:
            continue
        entry = d._entries[name]
        if entry.slices:
            writer.add_entry(name, Entry(entry.dtype, entry.shape, slices=entry.slices))
        pieces.extend(d._pieces[name])
    if not pieces:  # nothing stored as a byte range (V1): the input is not opened again
        return
    pieces.sort(key=lambda kp: (kp[1].shard, kp[1].entry.offset))
    store, _ = open_input(d._input or d.path)
    sources: dict[int, Source] = {}
    try:
        for key, piece in pieces:
            src = sources.get(piece.shard)
            if src is None:
                for done in sources.values():  # one shard at a time, in order
                    done.close()
                sources = {piece.shard: store.open(d._shard_paths[piece.shard])}
                src = sources[piece.shard]
                src.will_need([(p.entry.offset, p.entry.size) for _, p in pieces if p.shard == piece.shard])
            e = piece.entry
            if d.big_endian:
                # numpy's dtype loses qint8 etc., so the entry's dtype goes with the array
                writer.add_array(key, _big_endian_array(src, e), dtype=e.dtype)
            else:
                numeric = e.dtype not in (dtypes.STRING, dtypes.VARIANT)
                writer.copy(key, e, src, verify=numeric, name=piece.label)
    finally:
        for src in sources.values():
            src.close()
        store.close()


def _big_endian_array(src: Source, e: Entry):
    """A big-endian entry's values, decoded (salvage writes little-endian, as TensorFlow does)."""
    from ..bundle.decode import from_bytes

    raw = src.read(e.offset, e.size)
    if e.dtype == dtypes.STRING:
        return strings.to_array(strings.decode(raw, e.num_elements, big_endian=True)[0], e.shape)
    info = dtypes.lookup(e.dtype)
    if info is None:  # diagnose damages such entries; never reached for an intact one
        raise UnsupportedError(f"unknown dtype enum {e.dtype}", key=None, offset=e.offset)
    return from_bytes(raw, info, e.shape, big_endian=True)
