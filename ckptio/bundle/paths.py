"""Local paths: resolve(path) is locate(LocalStore(), path); the checks only local outputs need (SavedModels)."""

from __future__ import annotations

import os

from ..errors import CheckpointNotFoundError, UnsupportedError, WrongFileError
from ..store.base import Store
from ..store.local import LocalStore
from .locate import LFS_POINTER, SAVED_MODEL_GRAPHS, TABLE_MAGIC, Located, locate, refuse_odd_file  # noqa: F401
from .locate import saved_model_graph as _saved_model_graph
from .state import latest_from_state, updated_state  # noqa: F401 - their old home

_TABLE_MAGIC = TABLE_MAGIC
LOCAL = LocalStore()


def resolve(path) -> Located:
    """Find the checkpoint a local path refers to, or raise with what to pass instead."""
    return locate(LOCAL, os.fspath(path))


def saved_model_graph(directory: str) -> str | None:
    """The SavedModel graph file in directory (saved_model.pb or saved_model.cpb), or None."""
    return _saved_model_graph(LOCAL, directory)


def saved_model_around(path: str, store: Store = LOCAL) -> str | None:
    """The SavedModel directory whose variables/ directory holds path (at any depth), or None."""
    seen = set()
    local = isinstance(store, LocalStore)
    # A symlink must not hide the SavedModel (local paths are also looked at resolved).
    for p in (os.path.abspath(path), os.path.realpath(path)) if local else (path,):
        d = store.dirname(p)
        while d not in seen:
            seen.add(d)
            parent = store.dirname(d)
            if store.basename(d) == "variables" and _saved_model_graph(store, parent):
                return parent
            d = parent
    return None


def refuse_saved_model_output(prefix: str, store: Store = LOCAL) -> None:
    """Refuse an output inside a SavedModel's variables/ directory, before anything is written.

    saved_model.pb binds every variable to its key and dtype (the object graph, and the restore
    function's baked-in key list, FORMAT-models.md §3), so changed variables would not load, and
    making them load means editing the graph itself, which ckptio does not do.
    """
    sm = saved_model_around(prefix, store)
    if sm is None:
        return
    graph = store.basename(_saved_model_graph(store, sm) or SAVED_MODEL_GRAPHS[0])
    raise UnsupportedError(
        f"refusing to write inside the SavedModel {sm}: its {graph} binds every variable by "
        "key and dtype, so edited variables would not load; write a plain checkpoint elsewhere "
        "(e.g. out/model.ckpt) and restore it with tf.train.Checkpoint, or re-export the "
        "SavedModel from the model",
        path=prefix,
    )


def is_other_file(path: str) -> bool:
    """A regular file known not to be a checkpoint (a state file, a .meta, a graph, an events file ...)."""
    if not os.path.isfile(path) or os.path.basename(path).startswith("events.out.tfevents"):
        return os.path.isfile(path)
    try:
        refuse_odd_file(LOCAL, path)
    except WrongFileError:
        return True
    except CheckpointNotFoundError:
        return False
    return False
