"""Resolve what a user passed (prefix, .index, .data-*, directory, SavedModel, V1 file) to a checkpoint."""

from __future__ import annotations

import glob
import os
import stat
from collections import namedtuple

from ..errors import CheckpointNotFoundError, ReadError, UnsupportedError, WrongFileError
from ..io import odd_file_kind
from . import naming
from .state import latest_from_state, updated_state  # noqa: F401 - their old home

_TABLE_MAGIC = bytes.fromhex("57fb808b247547db")
LFS_POINTER = b"version https://git-lfs.github.com/spec/"
# A SavedModel's graph: saved_model.pb, or saved_model.cpb in the chunked "image format" that
# TF's proto splitter writes for graphs over 2 GB. Either one makes a directory a SavedModel.
SAVED_MODEL_GRAPHS = ("saved_model.pb", "saved_model.cpb")


class Located(namedtuple("Located", "format prefix files", defaults=((),))):
    """A resolved checkpoint: format "v2" or "v1", its prefix, and for V1 its files."""

    __slots__ = ()


def resolve(path) -> Located:
    """Find the checkpoint a path refers to, or raise with what to pass instead."""
    return _resolve(os.fspath(path), patterns=True)


def _resolve(path: str, *, patterns: bool) -> Located:
    _refuse_non_regular(path)
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
        raise CheckpointNotFoundError(
            f"this is a data shard but {naming.index_path(prefix)} is missing; the .index file is needed to read it",
            path=path,
        )
    if os.path.isfile(path):
        _refuse_odd_file(path)
        if _is_table(path):
            m = naming.V1_SHARD_RE.match(path)
            if m:
                files = sorted(glob.glob(f"{glob.escape(m['base'])}-?????-of-{m['count']}"))
                return Located("v1", m["base"], tuple(files))
            return Located("v1", path, (path,))
        raise WrongFileError(
            "not a TensorFlow checkpoint (no table footer); pass a checkpoint prefix, "
            "its .index file, or its directory",
            path=path,
        )
    shards = sorted(glob.glob(f"{glob.escape(path)}-?????-of-?????"))
    if shards:
        return Located("v1", path, tuple(shards))
    if patterns and glob.has_magic(path):
        return _resolve_pattern(path)
    raise CheckpointNotFoundError(_not_found_hint(path), path=path)


def _resolve_pattern(pattern: str) -> Located:
    """The one checkpoint a glob pattern names (its files, its V1 shards ...), or an error listing the matches.

    A V1 shard pattern such as model.ckpt-?????-of-00002 (what Saver.save returns for sharded
    saves) names one checkpoint through all of its shards; 'dir/*' names the files of one.
    """
    matches = sorted(glob.glob(pattern))
    if not matches:
        raise CheckpointNotFoundError("no file matches this pattern", path=pattern)
    found: dict[tuple, Located] = {}
    for match in matches:
        try:
            located = _resolve(match, patterns=False)
        except (CheckpointNotFoundError, WrongFileError, ReadError, UnsupportedError):
            continue  # a state file, a .meta, a FIFO ... beside the checkpoint files
        found.setdefault((located.format, os.path.normpath(located.prefix)), located)
    if len(found) == 1:
        return next(iter(found.values()))
    if not found:
        raise CheckpointNotFoundError(f"the pattern matches {_some(matches)}, none of them a checkpoint", path=pattern)
    names = [located.prefix for located in found.values()]
    raise CheckpointNotFoundError(
        f"the pattern matches {len(names)} checkpoints ({_some(names, count=False)}); pass one of them", path=pattern
    )


def _some(names: list[str], *, count: bool = True, shown: int = 5) -> str:
    """'3 files: a, b, c' (or just 'a, b, ...'), at most `shown` named."""
    listed = ", ".join(names[:shown]) + (", ..." if len(names) > shown else "")
    if not count:
        return listed
    return f"{len(names)} file{'s' if len(names) != 1 else ''}: {listed}"


def _resolve_dir(path: str) -> Located:
    state = os.path.join(path, "checkpoint")
    if os.path.isfile(state):
        latest = latest_from_state(path)
        if latest is not None:
            return resolve(latest)
    variables = os.path.join(path, "variables", "variables")
    graph = saved_model_graph(path)
    if graph and not os.path.exists(naming.index_path(variables)):
        raise CheckpointNotFoundError(
            f"this SavedModel ({os.path.basename(graph)}) holds no variables: "
            f"{naming.index_path(variables)} is missing",
            path=path,
        )
    for candidate in (variables, os.path.join(path, "variables")):
        if os.path.exists(naming.index_path(candidate)):
            return Located("v2", candidate)
    indexes = sorted(glob.glob(os.path.join(glob.escape(path), "*.index")))
    if len(indexes) == 1:
        return Located("v2", indexes[0][: -len(".index")])
    if indexes:
        names = ", ".join(os.path.basename(i)[: -len(".index")] for i in indexes[:5])
        raise CheckpointNotFoundError(
            f"directory holds {len(indexes)} checkpoints and no usable 'checkpoint' "
            f"state file; pass one prefix: {names}",
            path=path,
        )
    v1 = _v1_checkpoints_in(path)
    if len(v1) == 1:
        return resolve(v1[0])
    if v1:
        names = ", ".join(os.path.basename(p) for p in v1[:5])
        raise CheckpointNotFoundError(f"directory holds {len(v1)} V1 checkpoints; pass one: {names}", path=path)
    raise CheckpointNotFoundError(
        "directory holds no checkpoint (no 'checkpoint' state file, no *.index, "
        "no variables/variables.index, no V1 files)",
        path=path,
    )


def _v1_checkpoints_in(directory: str) -> list[str]:
    """The V1 checkpoints in a directory: base names of shard groups and unsharded table files."""
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return []  # unreadable: the caller reports that it found no checkpoint here
    found = set()
    for name in names:
        full = os.path.join(directory, name)
        if name == "checkpoint" or name.endswith(".index") or naming.split_data_path(name) or not _is_table(full):
            continue
        m = naming.V1_SHARD_RE.match(full)
        found.add(m["base"] if m else full)
    return sorted(found)


def saved_model_graph(directory: str) -> str | None:
    """The SavedModel graph file in directory (saved_model.pb or saved_model.cpb), or None."""
    for name in SAVED_MODEL_GRAPHS:
        if os.path.isfile(os.path.join(directory, name)):
            return os.path.join(directory, name)
    return None


def saved_model_around(path: str) -> str | None:
    """The SavedModel directory whose variables/ directory holds path (at any depth), or None."""
    seen = set()
    for p in (os.path.abspath(path), os.path.realpath(path)):  # a symlink must not hide the SavedModel
        d = os.path.dirname(p)
        while d not in seen:
            seen.add(d)
            parent = os.path.dirname(d)
            if os.path.basename(d) == "variables" and saved_model_graph(parent):
                return parent
            d = parent
    return None


def refuse_saved_model_output(prefix: str) -> None:
    """Refuse an output inside a SavedModel's variables/ directory, before anything is written.

    saved_model.pb binds every variable to its key and dtype (the object graph, and the restore
    function's baked-in key list, FORMAT-models.md §3), so changed variables would not load, and
    making them load means editing the graph itself, which ckptio does not do.
    """
    sm = saved_model_around(prefix)
    if sm is None:
        return
    graph = os.path.basename(saved_model_graph(sm) or SAVED_MODEL_GRAPHS[0])
    raise UnsupportedError(
        f"refusing to write inside the SavedModel {sm}: its {graph} binds every variable by "
        "key and dtype, so edited variables would not load; write a plain checkpoint elsewhere "
        "(e.g. out/model.ckpt) and restore it with tf.train.Checkpoint, or re-export the "
        "SavedModel from the model",
        path=prefix,
    )


def _refuse_non_regular(path: str) -> None:
    """A FIFO, device or socket is refused before anything opens it (opening a FIFO blocks)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # missing (or unreachable): the caller says what is missing
    kind = odd_file_kind(mode)
    if kind:
        raise ReadError(f"is {kind}, not a regular file", path=path)


def _is_table(path: str) -> bool:
    """A regular file ending in the table magic number."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return False  # never open a FIFO (it blocks) or a device
        with open(path, "rb") as f:
            f.seek(0, 2)
            if f.tell() < 48:
                return False
            f.seek(-8, 2)
            return f.read(8) == _TABLE_MAGIC
    except OSError:
        return False


def is_other_file(path: str) -> bool:
    """A regular file known not to be a checkpoint (a state file, a .meta, a graph, an events file ...)."""
    if not os.path.isfile(path) or os.path.basename(path).startswith("events.out.tfevents"):
        return os.path.isfile(path)
    try:
        _refuse_odd_file(path)
    except WrongFileError:
        return True
    except CheckpointNotFoundError:
        return False
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
        raise WrongFileError(
            "this is a Git LFS pointer, not the file itself; run 'git lfs pull' to fetch it", path=path
        )
    if base == "checkpoint" and b"model_checkpoint_path" in head:
        raise WrongFileError(
            f"this is the text 'checkpoint' state file; pass its directory ({directory}) or the prefix it names",
            path=path,
        )
    if base.endswith(".meta"):
        raise WrongFileError(
            f"this is a MetaGraphDef (.meta), not tensor data; pass the prefix {path[:-5]!r} instead", path=path
        )
    if head.startswith(b"\x89HDF\r\n\x1a\n") or base.endswith((".h5", ".hdf5")):
        raise WrongFileError(
            "this is an HDF5 (Keras .h5) file, not a TensorFlow checkpoint; load it with Keras, "
            "or pass a TF checkpoint prefix, its .index file or its directory",
            path=path,
        )
    if head.startswith(b"PK\x03\x04") and base.endswith(".keras"):
        raise WrongFileError(
            "this is a Keras v3 .keras archive, not a TensorFlow checkpoint; load it with Keras, "
            "or pass a TF checkpoint prefix, its .index file or its directory",
            path=path,
        )
    if base in SAVED_MODEL_GRAPHS:
        raise WrongFileError(
            f"this is a SavedModel's graph; pass the SavedModel directory ({directory}) instead", path=path
        )
    if base.endswith((".pb", ".pbtxt", ".cpb")):
        raise WrongFileError("this is a graph/SavedModel protobuf; pass the SavedModel directory instead", path=path)


def _not_found_hint(path: str) -> str:
    near = sorted(glob.glob(glob.escape(path) + "*"))[:3]
    if near:
        return "no checkpoint with this prefix; did you mean " + ", ".join(near) + "?"
    return "no such checkpoint (no .index file, no V1 file, no directory)"
