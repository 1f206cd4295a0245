"""Checkpoints in remote storage through fsspec: gs://, s3://, http(s)://, memory:// and the rest.

Needs the optional extra `ckptio[remote]` (fsspec; http(s) also needs aiohttp, gs:// gcsfs,
s3:// s3fs). Every read is a byte range (`fs.cat_file(path, start, end)`), so opening a
checkpoint fetches its .index (whole, in one request, up to 16 MiB); reading one tensor is one
range request for exactly its bytes. A URL resolves exactly as a local path does, by the same
code (bundle/locate.py): `P` (with `P.index`), `P.index`, `P.data-*`, a directory with a
`checkpoint` state file, a SavedModel directory, or a V1 table file.

Writes commit only when complete: data shards first, the .index last (it is what makes a
checkpoint visible), each to a temp name renamed into place at the end where the filesystem
renames cheaply (local, memory, sftp, hdfs ...). Object stores (s3, gs, azure ...) "rename"
by copying, so there the files are written under their final names, data first and index
last; one PUT is atomic on those stores, so the index PUT is the commit.

URLs with a query string (signed URLs) are not supported: file names are built by appending
`.index` / `.data-...` to the prefix.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from .bundle.locate import Located, locate
from .checkpoint import Checkpoint
from .errors import (
    CheckpointNotFoundError,
    OutputExistsError,
    ReadError,
    Remedy,
)
from .store.base import Source
from .store.remote import (
    OBJECT_STORES,  # noqa: F401  (re-exported: the names moved to store/remote.py)
    RemoteOutput,
    RemoteSource,
    RemoteStore,
    filesystem,
    io_error,
    protocols,
    renames_cheaply,
)
from .store.remote_output import RemoteFiles

MAX_STATE_FILE = 1 << 20
_Store = RemoteStore  # the old name of the store helper
_protocols = protocols


def _io_error(exc: Exception, what: str, url: str) -> ReadError:
    return io_error(exc, what, url)


def _join(url: str, name: str) -> str:
    return url.rstrip("/") + "/" + name


def _dirname(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[0]


def _basename(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def _require_size(store: RemoteStore, url: str) -> int:
    size = store.size(url)
    if size is None:
        raise CheckpointNotFoundError("no such file", path=url)
    return size


# -- resolving a URL -----------------------------------------------------------------------------


def resolve_remote(url: str, fs=None, *, store: RemoteStore | None = None) -> Located:
    """Find the checkpoint a URL names: bundle/locate.locate, the one resolver every store shares."""
    if store is None:
        store = RemoteStore(fs if fs is not None else filesystem(url)[0])
    return locate(store, url)


def open_remote(url: str, **storage_options) -> Checkpoint:
    """Open a remote checkpoint lazily; storage_options go to fsspec (credentials, endpoints ...).

    The same path as every store: store.for_path, then locate (sources.open_on). A small .index
    is fetched whole in one request when the reader announces it (Source.will_need).
    """
    from .sources import open_on
    from .store import for_path

    store, path = for_path(url, **storage_options)
    return open_on(store, path)


# -- writing -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TransferStats:
    """What an upload or download moved."""

    src: str
    dst: str
    files: tuple[str, ...]
    bytes: int
    seconds: float

    def to_json(self) -> dict:
        return {
            "src": self.src,
            "dst": self.dst,
            "files": list(self.files),
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
        }


def _plan_copy(ckpt: Checkpoint, dst_prefix: str) -> list[tuple[str, Callable[[], Source], str]]:
    """(source path, open, destination) for every file, data first and the .index (the commit) last."""
    from .archive.write import checkpoint_files

    files = checkpoint_files(ckpt)
    index = ckpt.reader.index_file
    files = [f for f in files if f[0] != index] + [f for f in files if f[0] == index]
    src_base = _basename(ckpt.prefix)
    out = []
    for path, open_source in files:
        name = _basename(path)
        suffix = name[len(src_base) :] if name.startswith(src_base) else name
        out.append((path, open_source, dst_prefix + suffix))
    return out


def _destination_prefix(ckpt: Checkpoint, dst: str) -> str:
    return dst + _basename(ckpt.prefix) if dst.endswith("/") else dst


def upload_checkpoint(
    src,
    url: str,
    *,
    overwrite: bool = False,
    state_file: bool = True,
    use_temp: bool | None = None,
    progress=None,
    make_latest: bool = False,
    **storage_options,
) -> TransferStats:
    """Copy a checkpoint's files byte for byte to a remote prefix URL, committing only when complete.

    src: a local prefix (or anything ckptio.open takes, or an open Checkpoint). url: the new
    prefix (`gs://b/run/model.ckpt`), or a directory ending in '/' to keep the source's name.
    Data shards are uploaded first and the .index last, to temp names renamed at the end where
    the filesystem renames cheaply (use_temp=None decides). state_file: list the output in the
    directory's `checkpoint` state file when that file is absent or lists only it; one listing other
    checkpoints is left as it was unless make_latest (bundle/state.py).
    """
    from .sources import open as open_checkpoint

    started = time.perf_counter()
    ckpt = src if isinstance(src, Checkpoint) else open_checkpoint(src)
    try:
        dst_prefix = _destination_prefix(ckpt, url)
        fs, _ = filesystem(dst_prefix, **storage_options)
        files = RemoteFiles(fs, store=RemoteStore(fs), use_temp=use_temp)
        plan = _plan_copy(ckpt, dst_prefix)
        commit_url = plan[-1][2]
        if any(files.store.is_file(d) for _, _, d in plan) and not overwrite:
            raise OutputExistsError(
                "a checkpoint already exists here", path=commit_url, remedy=Remedy("overwrite", "replace it", "--force")
            )
        if overwrite and not files.use_temp and files.store.is_file(commit_url):
            fs.rm_file(fs._strip_protocol(commit_url))  # no index over half-written data
        total = 0
        try:
            for _, open_source, dst in plan:
                total += files.put(dst, open_source(), progress)
            files.commit(remove_first=[commit_url])
        except BaseException:
            files.abort()
            raise
        if state_file:
            _write_state(fs, dst_prefix, use_temp=files.use_temp, make_latest=make_latest)
        return TransferStats(
            ckpt.prefix, dst_prefix, tuple(d for _, _, d in plan), total, time.perf_counter() - started
        )
    finally:
        if ckpt is not src:
            ckpt.close()


def _write_state(fs, prefix_url: str, *, use_temp: bool, make_latest: bool = False) -> None:
    """List the prefix (relative name) in <dir>/checkpoint when that file is ours to change (bundle/state.py)."""
    from .bundle.state import record_output

    record_output(RemoteStore(fs, use_temp=use_temp), prefix_url, make_latest=make_latest)


def download_checkpoint(src, local_prefix, *, force: bool = False, progress=None, **storage_options) -> TransferStats:
    """Copy a checkpoint's files byte for byte to a local prefix, atomically (data first, index last).

    src: a URL (or anything ckptio.open takes, or an open Checkpoint); local_prefix ending in
    '/' (or an existing directory) keeps the source's name.
    """
    from .bundle.writer import check_output
    from .sources import open as open_checkpoint
    from .store.local import LocalStore

    started = time.perf_counter()
    ckpt = src if isinstance(src, Checkpoint) else open_checkpoint(src, **storage_options)
    try:
        local_prefix = os.fspath(local_prefix)
        if local_prefix.endswith("/") or os.path.isdir(local_prefix):
            local_prefix = os.path.join(local_prefix, _basename(ckpt.prefix))
        plan = _plan_copy(ckpt, local_prefix)
        if ckpt.reader.index_file is not None:  # the output is a bundle prefix (.index and .data-*)
            check_output(local_prefix, force=force, inputs=[ckpt.located])
        for _, _, dst in plan:
            if os.path.exists(dst) and not force:
                raise OutputExistsError("file exists", path=dst, remedy=Remedy("force", "replace it"))
        output = LocalStore().output()
        output.claim(local_prefix)  # creates the directory; a second writer of this prefix is refused
        total = 0
        try:
            for _, open_source, dst in plan:
                total += output.put(dst, open_source(), progress)
            output.commit()
        except BaseException:
            output.abort()
            raise
        output.release()
        return TransferStats(
            ckpt.prefix, local_prefix, tuple(d for _, _, d in plan), total, time.perf_counter() - started
        )
    finally:
        if ckpt is not src:
            ckpt.close()


def rewrite_to_remote(
    src, url: str, steps=(), *, force: bool = False, make_latest: bool = False, storage_options=None, **options
):
    """rewrite() straight into remote storage through the store's output (no local copy); returns the Report.

    url: the new prefix, or a directory ending in '/' to keep the source's name.
    """
    from .rewrite_exec import rewrite_local
    from .sources import open as open_checkpoint

    ckpt = src if isinstance(src, Checkpoint) else open_checkpoint(src)
    try:
        store, _ = RemoteStore.for_url(url, **(storage_options or {}))
        prefix = _destination_prefix(ckpt, url)
        return rewrite_local(ckpt, prefix, steps, store=store, force=force, make_latest=make_latest, **options)
    finally:
        if ckpt is not src:
            ckpt.close()


__all__ = [
    "open_remote",
    "resolve_remote",
    "upload_checkpoint",
    "download_checkpoint",
    "rewrite_to_remote",
    "RemoteSource",
    "RemoteFiles",
    "RemoteOutput",
    "RemoteStore",
    "TransferStats",
    "filesystem",
    "renames_cheaply",
]
