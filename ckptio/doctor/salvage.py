"""Write the intact tensors of a diagnosed checkpoint into a new V2 checkpoint."""

from __future__ import annotations

import os

from ..bundle import dtypes, strings
from ..bundle.entry import Entry
from ..errors import PlanError
from ..io import FileSource, Source
from .report import Diagnosis


def salvage(diagnosis: Diagnosis, out, *, force: bool = False) -> list[str]:
    """Write the intact tensors into a new V2 checkpoint at prefix out; return their names."""
    from ..bundle.writer import BundleWriter

    d = diagnosis
    if not d.intact:
        raise PlanError("no intact tensor to salvage", path=d.path)
    inputs = [d._located] if d._located is not None else []
    sources: dict[int, FileSource] = {}
    written = []
    try:
        with BundleWriter(os.fspath(out), force=force, inputs=inputs) as writer:
            for name in d.intact:
                if d.format == "v1":
                    writer.add_array(name, d._arrays[name], dtype=d._entries[name].dtype)
                    written.append(name)
                    continue
                entry = d._entries[name]
                parts = d._pieces[name]
                if entry.slices:
                    writer.add_entry(name, Entry(entry.dtype, entry.shape, slices=entry.slices))
                for key, piece in parts:
                    src = sources.get(piece.shard)
                    if src is None:
                        src = sources[piece.shard] = FileSource(d._shard_paths[piece.shard])
                    e = piece.entry
                    if d.big_endian:
                        # numpy's dtype loses qint8 etc., so the entry's dtype goes with the array
                        writer.add_array(key, _big_endian_array(src, e), dtype=e.dtype)
                    else:
                        numeric = e.dtype not in (dtypes.STRING, dtypes.VARIANT)
                        writer.copy(key, e, src, verify=numeric, name=piece.label)
                written.append(name)
            writer.finish()
    finally:
        for src in sources.values():
            src.close()
    return written


def _big_endian_array(src: Source, e: Entry):
    """A big-endian entry's values, decoded (salvage writes little-endian, as TensorFlow does)."""
    from ..bundle.decode import from_bytes

    raw = src.read(e.offset, e.size)
    if e.dtype == dtypes.STRING:
        return strings.to_array(strings.decode(raw, e.num_elements, big_endian=True)[0], e.shape)
    return from_bytes(raw, dtypes.lookup(e.dtype), e.shape, big_endian=True)
