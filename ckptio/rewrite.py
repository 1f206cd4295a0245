"""rewrite(src, dst, steps): open src in any path form, then write dst wherever it goes.

The work is below: rewrite_plan.py plans (names after the steps, the runs of bytes to write) and
rewrite_exec.py writes the plan into a store (a BundleWriter on the store's output). This front
opens src through the router (sources.py) and picks the store of dst (store.for_output): local
files, a URL (written there directly: data first, the index last), or a .tar.zst (its members
staged beside it and packed index-first on commit, archive/write.py); another weight format is
exported (formats/: .safetensors and .npz through the store of dst, Keras files locally).
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
        if dst is not None and not dry_run and is_special(dst):  # a .tar.zst, a URL, another weight format ...
            return _rewrite_special(
                ckpt, os.fspath(dst), steps, make_latest=make_latest, state_file=state_file, fsync=fsync, **options
            )
        if dst is not None and dry_run and is_remote(dst):  # predicts its refusals from the store it would write
            from .store import for_output

            store, prefix = for_output(os.fspath(dst), name=store_name(ckpt))
            return rewrite_local(ckpt, prefix, steps, dry_run=True, store=store, **options)
        return rewrite_local(
            ckpt, dst, steps, dry_run=dry_run, state_file=state_file, fsync=fsync, make_latest=make_latest, **options
        )
    finally:
        if ckpt is not src:
            ckpt.close()


def _rewrite_special(
    ckpt: Checkpoint, dst: str, steps, *, make_latest: bool, state_file: bool, fsync: bool, **options
) -> RewriteReport:
    """rewrite() of an open checkpoint to a .tar.zst, a URL or another weight format."""
    from .formats import kind_of, write_format
    from .store import for_output, local_path

    kind = kind_of(dst)
    if kind:  # written as .safetensors, .npz or .keras (ckptio/formats)
        if kind in ("keras", "keras_h5") and is_remote(dst):  # h5py writes local files: a URL must not become one
            from .errors import UnsupportedError

            raise UnsupportedError(
                "ckptio writes Keras files to local paths only; write it locally, then upload it", path=dst
            )
        # .safetensors and .npz go through the store of dst (a URL: uploaded as written, the index last).
        return write_format(ckpt, dst if is_remote(dst) else local_path(dst), steps, **options)
    if is_archive(dst):  # its own checks first (the archive exists ...), then the one write path below
        from .archive.write import DEFAULT_LEVEL, rewrite_packed

        report, _ = rewrite_packed(ckpt, local_path(dst), steps, level=DEFAULT_LEVEL, **options)
        return report
    # Every other store (a URL, file://) is written through its own output: no local copy first.
    store, prefix = for_output(dst, name=store_name(ckpt))
    return rewrite_local(
        ckpt, prefix, steps, store=store, make_latest=make_latest, state_file=state_file, fsync=fsync, **options
    )


def store_name(ckpt: Checkpoint) -> str:
    """The file name prefix a checkpoint keeps when written into a directory or an archive."""
    return ckpt.prefix.rstrip("/").rsplit("/", 1)[-1] or "model.ckpt"
