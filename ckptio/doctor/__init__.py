"""Diagnose a broken checkpoint in plain words, and salvage the tensors that are still intact.

diagnose(path) never stops at the first problem and never trusts a byte it has not checked:

    resolve the path       wrong file (and what to pass instead), missing .index, Git LFS pointers
    walk the table         footer, magic, index block, every data block on its own; when the
                           footer or index block is damaged, scan for intact blocks instead
                           (sstable.recovery)
    header and entries     bad header (shard count inferred from the data files), unparsable
                           entries, keys out of order or stored twice, slices that do not tile (index)
    data shards            missing, truncated, from another checkpoint (most checksums fail, or
                           the size is far off), trailing bytes (shards)
    every tensor's bytes   checksums as TensorFlow checks them (numeric, string, variant)

salvage(diagnosis, out) then writes a new V2 checkpoint holding exactly the intact tensors, with
BundleWriter (bytes copied as stored, checksums re-verified on the way).
"""

from __future__ import annotations

import os

from ..bundle import naming
from ..bundle.locate import Located
from ..errors import CheckpointNotFoundError, CkptioError, WrongFileError
from .files import explain_not_found, lfs, starts_like_table
from .index import diagnose_v2
from .inputs import local_path, locate_input, open_input
from .report import Diagnosis, Finding
from .salvage import salvage
from .v1 import diagnose_v1


def diagnose(path) -> Diagnosis:
    """Examine the checkpoint at path (any form ckptio.open accepts: local, .tar.zst, URL) and report
    everything wrong."""
    d = Diagnosis(path=os.fspath(path))
    text = local_path(d.path)
    try:
        store, inner = open_input(d.path)
    except CheckpointNotFoundError as exc:
        d.problem("not-found", exc.message, path=exc.path)
        return d
    except WrongFileError as exc:
        d.problem("wrong-file", exc.message, path=exc.path)
        return d
    except CkptioError as exc:
        d.problem("unreadable", exc.message, path=exc.path)
        return d
    d._input = text
    try:
        _diagnose(d, store, inner)
    finally:
        store.close()
    names = set(d._entries) | set(d._arrays) | set(d.damaged)
    d.intact = sorted((n for n in names if n not in d.damaged), key=naming.encode_key)
    d.damaged = dict(sorted(d.damaged.items(), key=lambda kv: naming.encode_key(kv[0])))
    return d


def _diagnose(d: Diagnosis, store, text: str) -> None:
    try:
        located = locate_input(store, text)
    except WrongFileError as exc:
        where = exc.path or text  # an archive's member, or the path itself
        if starts_like_table(store, where):
            located = Located("v1", where, (where,))  # a V1 file cut short
        else:
            d.problem("lfs-pointer" if lfs(store, where) else "wrong-file", exc.message, path=exc.path)
            return
    except CheckpointNotFoundError as exc:
        if not (store.size(text) is not None and starts_like_table(store, text)):
            explain_not_found(d, store, text, exc)
            return
        located = Located("v1", text, (text,))  # a V1 file cut short, at a URL that does not list
    except CkptioError as exc:
        d.problem("unreadable", exc.message, path=exc.path)
        return
    d._located = located
    d.format, d.prefix = located.format, located.prefix
    try:
        SCANNERS[located.format](d, store, located)
    except CkptioError as exc:  # the medium failed under a read (an archive's stream, a server)
        d.problem("unreadable", exc.message, path=exc.path, offset=exc.offset)


# Doctor reads below the readers (a damaged file does not open), so it keeps one scanner per format.
SCANNERS = {
    "v2": lambda d, store, located: diagnose_v2(d, store, located.prefix),
    "v1": lambda d, store, located: diagnose_v1(d, store, list(located.files), located.prefix),
}

__all__ = ["diagnose", "salvage", "Diagnosis", "Finding"]
