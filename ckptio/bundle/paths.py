"""Resolve what a user passed (prefix, .index, .data-*, directory, SavedModel, V1 file) to a checkpoint."""
from __future__ import annotations

import glob
import os
import re
from collections import namedtuple

from ..errors import CheckpointNotFoundError, WrongFileError
from . import naming
from .state import latest_from_state, updated_state  # noqa: F401 - their old home

_V1_SHARD_RE = re.compile(r"^(?P<base>.+)-(?P<shard>\d{5})-of-(?P<count>\d{5})$")
_TABLE_MAGIC = bytes.fromhex("57fb808b247547db")
LFS_POINTER = b"version https://git-lfs.github.com/spec/"


class Located(namedtuple("Located", "format prefix files", defaults=((),))):
    """A resolved checkpoint: format "v2" or "v1", its prefix, and for V1 its files."""

    __slots__ = ()


def resolve(path) -> Located:
    """Find the checkpoint a path refers to, or raise with what to pass instead."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return _resolve_dir(path)
    if os.path.exists(naming.index_path(path)):
        return Located("v2", path)
    if path.endswith(".index") and os.path.isfile(path):
        _refuse_odd_file(path)
        return Located("v2", path[: -len(".index")])
    split = naming.split_data_path(path)
    if split is not None:
        prefix = split[0]
        if os.path.exists(naming.index_path(prefix)):
            return Located("v2", prefix)
        raise CheckpointNotFoundError(f"this is a data shard but {naming.index_path(prefix)} is missing; "
                                      "the .index file is needed to read it", path=path)
    if os.path.isfile(path):
        _refuse_odd_file(path)
        if _is_table(path):
            m = _V1_SHARD_RE.match(path)
            if m:
                files = sorted(glob.glob(f"{glob.escape(m['base'])}-?????-of-{m['count']}"))
                return Located("v1", m["base"], tuple(files))
            return Located("v1", path, (path,))
        raise WrongFileError("not a TensorFlow checkpoint (no table footer); pass a checkpoint prefix, "
                             "its .index file, or its directory", path=path)
    shards = sorted(glob.glob(f"{glob.escape(path)}-?????-of-?????"))
    if shards:
        return Located("v1", path, tuple(shards))
    if glob.has_magic(path):
        # A V1 pattern such as model.ckpt-?????-of-00002, as Saver.save returns for sharded saves.
        files = tuple(f for f in sorted(glob.glob(path)) if os.path.isfile(f) and _is_table(f))
        if files:
            m = _V1_SHARD_RE.match(files[0])
            return Located("v1", m["base"] if m else path, files)
    raise CheckpointNotFoundError(_not_found_hint(path), path=path)


def _resolve_dir(path: str) -> Located:
    state = os.path.join(path, "checkpoint")
    if os.path.isfile(state):
        latest = latest_from_state(path)
        if latest is not None:
            return resolve(latest)
    for candidate in (os.path.join(path, "variables", "variables"), os.path.join(path, "variables")):
        if os.path.exists(naming.index_path(candidate)):
            return Located("v2", candidate)
    indexes = sorted(glob.glob(os.path.join(glob.escape(path), "*.index")))
    if len(indexes) == 1:
        return Located("v2", indexes[0][: -len(".index")])
    if indexes:
        names = ", ".join(os.path.basename(i)[: -len(".index")] for i in indexes[:5])
        raise CheckpointNotFoundError(f"directory holds {len(indexes)} checkpoints and no usable 'checkpoint' "
                                      f"state file; pass one prefix: {names}", path=path)
    v1_groups = {m["base"]: m for f in sorted(glob.glob(os.path.join(glob.escape(path), "*-?????-of-?????")))
                 if (m := _V1_SHARD_RE.match(f)) and _is_table(f)}
    if len(v1_groups) == 1:
        return resolve(next(iter(v1_groups)))
    raise CheckpointNotFoundError("directory holds no checkpoint (no 'checkpoint' state file, no *.index, "
                                  "no variables/variables.index, no V1 files)", path=path)


def _is_table(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            if f.tell() < 48:
                return False
            f.seek(-8, 2)
            return f.read(8) == _TABLE_MAGIC
    except OSError:
        return False


def _refuse_odd_file(path: str) -> None:
    """Raise WrongFileError for files people commonly pass by mistake."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as exc:
        raise CheckpointNotFoundError(f"cannot open: {exc.strerror}", path=path) from None
    base = os.path.basename(path)
    directory = os.path.dirname(path) or "."
    if head.startswith(LFS_POINTER):
        raise WrongFileError("this is a Git LFS pointer, not the file itself; run 'git lfs pull' to fetch it",
                             path=path)
    if base == "checkpoint" and b"model_checkpoint_path" in head:
        raise WrongFileError(f"this is the text 'checkpoint' state file; pass its directory ({directory}) "
                             "or the prefix it names", path=path)
    if base.endswith(".meta"):
        raise WrongFileError(f"this is a MetaGraphDef (.meta), not tensor data; pass the prefix "
                             f"{path[:-5]!r} instead", path=path)
    if head.startswith(b"\x89HDF\r\n\x1a\n") or base.endswith((".h5", ".hdf5")):
        raise WrongFileError("this is an HDF5 (Keras .h5) file, not a TensorFlow checkpoint; load it with Keras, "
                             "or pass a TF checkpoint prefix, its .index file or its directory", path=path)
    if head.startswith(b"PK\x03\x04") and base.endswith(".keras"):
        raise WrongFileError("this is a Keras v3 .keras archive, not a TensorFlow checkpoint; load it with Keras, "
                             "or pass a TF checkpoint prefix, its .index file or its directory", path=path)
    if base.endswith(".pb") or base.endswith(".pbtxt"):
        raise WrongFileError("this is a graph/SavedModel protobuf; pass the SavedModel directory instead",
                             path=path)


def _not_found_hint(path: str) -> str:
    near = sorted(glob.glob(glob.escape(path) + "*"))[:3]
    if near:
        return "no checkpoint with this prefix; did you mean " + ", ".join(near) + "?"
    return "no such checkpoint (no .index file, no V1 file, no directory)"
