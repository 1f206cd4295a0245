"""rewrite(src, dst, steps): open src in any path form, then write dst wherever it goes.

The work is below: rewrite_plan.py plans (names after the steps, the runs of bytes to write) and
rewrite_exec.py writes the plan to a local prefix. This front opens src through the router
(sources.py) and sends a destination that is not plain local files to its writer: a .tar.zst is
packed (archive/write.py), a URL uploaded (remote.py), another weight format exported (formats/).
"""

from __future__ import annotations

import os

from .checkpoint import Checkpoint
from .rewrite_exec import (  # noqa: F401 - this module's names before the split
    CHUNK_BYTES,
    Report,
    RewriteReport,
    execute,
    plan_report,
    rewrite_local,
)
from .rewrite_plan import Piece, Plan, _assign_shards, make_plan, split_runs, tensor_pieces  # noqa: F401
from .sources import is_archive, is_remote, is_special
from .sources import open as open_checkpoint


def rewrite(
    src,
    dst,
    steps=(),
    *,
    num_shards: int | None = 1,
    max_shard_size: int | None = None,
    force: bool = False,
    dry_run: bool = False,
    progress=None,
    verify: bool = True,
    state_file: bool = True,
    fsync: bool = False,
    make_latest: bool = False,
) -> RewriteReport:
    """Write a new checkpoint at prefix dst from src through steps; returns a RewriteReport.

    state_file: list dst in its directory's `checkpoint` file when that file is absent or lists only
    dst; a file listing other checkpoints (a training run's) is left as it was unless make_latest,
    which appends dst as its latest and keeps every other entry and timestamp.
    progress: called with each piece's output bytes; if it has set_total(n), that is called first
    with the bytes the rewrite will write, so the count ends exactly at n.
    """
    if dst is not None and not is_remote(dst):  # before anything is planned, packed or written
        from .bundle.paths import refuse_saved_model_output

        refuse_saved_model_output(os.fspath(dst).removeprefix("file://"))
    options = dict(num_shards=num_shards, max_shard_size=max_shard_size, force=force, progress=progress, verify=verify)
    ckpt = src if isinstance(src, Checkpoint) else open_checkpoint(src)
    try:
        if dst is not None and not dry_run and is_special(dst):  # a .tar.zst to pack, a URL to upload to ...
            return _rewrite_special(ckpt, os.fspath(dst), steps, make_latest=make_latest, **options)
        return rewrite_local(
            ckpt, dst, steps, dry_run=dry_run, state_file=state_file, fsync=fsync, make_latest=make_latest, **options
        )
    finally:
        if ckpt is not src:
            ckpt.close()


def _rewrite_special(ckpt: Checkpoint, dst: str, steps, *, make_latest: bool, **options) -> RewriteReport:
    """rewrite() of an open checkpoint to a .tar.zst (packed), a URL (uploaded) or another weight format."""
    from .formats import kind_of, write_format
    from .store import local_path

    if kind_of(dst):  # written as .safetensors, .npz or .keras (ckptio/formats)
        return write_format(ckpt, dst, steps, **options)
    if is_archive(dst):
        from .archive.write import DEFAULT_LEVEL, rewrite_packed

        report, _ = rewrite_packed(ckpt, local_path(dst), steps, level=DEFAULT_LEVEL, **options)
        return report
    if is_remote(dst):
        from .remote import rewrite_to_remote

        return rewrite_to_remote(ckpt, dst, steps, make_latest=make_latest, **options)
    return rewrite_local(ckpt, local_path(dst), steps, make_latest=make_latest, **options)
