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
from ..bundle.paths import Located, resolve
from ..errors import CheckpointNotFoundError, CkptioError, WrongFileError
from .files import explain_not_found, starts_like_table
from .index import diagnose_v2
from .report import Diagnosis, Finding
from .salvage import salvage
from .v1 import diagnose_v1


def diagnose(path) -> Diagnosis:
    """Examine the checkpoint at path (any form ckptio.open accepts) and report everything wrong."""
    d = Diagnosis(path=os.fspath(path))
    try:
        located = resolve(path)
    except WrongFileError as exc:
        if starts_like_table(os.fspath(path)):
            located = Located("v1", os.fspath(path), (os.fspath(path),))  # a V1 file cut short
        else:
            kind = "lfs-pointer" if "Git LFS" in exc.message else "wrong-file"
            d.problem(kind, exc.message, path=exc.path)
            return d
    except CheckpointNotFoundError as exc:
        explain_not_found(d, os.fspath(path), exc)
        return d
    except CkptioError as exc:
        d.problem("unreadable", exc.message, path=exc.path)
        return d
    d._located = located
    d.format, d.prefix = located.format, located.prefix
    if located.format == "v2":
        diagnose_v2(d, located.prefix)
    else:
        diagnose_v1(d, list(located.files), located.prefix)
    names = set(d._entries) | set(d._arrays) | set(d.damaged)
    d.intact = sorted((n for n in names if n not in d.damaged), key=naming.encode_key)
    d.damaged = dict(sorted(d.damaged.items(), key=lambda kv: naming.encode_key(kv[0])))
    return d


__all__ = ["diagnose", "salvage", "Diagnosis", "Finding"]
