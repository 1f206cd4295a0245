"""locate(store, path): the checkpoint a path names, in any store, through the Store interface only.

    P                      a prefix: P.index beside P.data-*  (or V1: a table file P, or P-SSSSS-of-NNNNN)
    P.index, P.data-*      a file of a V2 checkpoint
    DIR                    its 'checkpoint' state file's latest, a SavedModel's variables/variables,
                           its one *.index, or its one V1 checkpoint
    pattern (if the store takes them)   the one checkpoint its matches belong to

Paths are the store's own (OS paths for the local store, URLs for a remote one). Stores that cannot
list (an HTTP server without index pages) still find every form but a directory's unnamed *.index
and V1 checkpoints named by neither a state file nor a shard name.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass

from ..errors import CheckpointNotFoundError, CkptioError, ReadError, StateFileWarning, UnsupportedError, WrongFileError
from ..store.base import Store
from . import naming, state

TABLE_MAGIC = bytes.fromhex("57fb808b247547db")
LFS_POINTER = b"version https://git-lfs.github.com/spec/"
# A SavedModel's graph: saved_model.pb, or saved_model.cpb in the chunked "image format" that
# TF's proto splitter writes for graphs over 2 GB. Either one makes a directory a SavedModel.
SAVED_MODEL_GRAPHS = ("saved_model.pb", "saved_model.cpb")
MAX_STATE_DEPTH = 3  # state files naming directories with state files: more is a loop
MAX_GUESSED_SHARDS = 1024  # V1 shards probed by name where a store cannot list


@dataclass(frozen=True, slots=True)
class Located:
    """A resolved checkpoint: format "v2" or "v1", its prefix, and for V1 its files."""

    format: str
    prefix: str
    files: tuple[str, ...] = ()


def locate(store: Store, path: str) -> Located:
    """Find the checkpoint a path refers to, or raise with what to pass instead."""
    return _locate(store, path, patterns=True, depth=0)


def _locate(store: Store, path: str, *, patterns: bool, depth: int) -> Located:
    kind = store.file_kind(path)
    if kind:  # refused before anything opens it (opening a FIFO blocks)
        raise ReadError(f"is {kind}, not a regular file", path=path)
    if path.endswith("/") and path.rstrip("/"):
        return _locate_dir(store, path.rstrip("/"), depth)
    # A prefix whose .index exists is checked first: one request on a remote store, where asking
    # whether a name that is no file is a directory costs two.
    if _exists(store, naming.index_path(path)):
        return Located("v2", path)
    if store.is_dir(path):
        return _locate_dir(store, path, depth)
    if path.endswith(".index") and store.is_file(path):
        refuse_odd_file(store, path)
        return Located("v2", path[: -len(".index")])
    split = naming.split_data_path(path)
    if split is not None:
        prefix = split[0]
        if _exists(store, naming.index_path(prefix)):
            return Located("v2", prefix)
        raise CheckpointNotFoundError(
            f"this is a data shard but {naming.index_path(prefix)} is missing; the .index file is needed to read it",
            path=path,
        )
    if store.is_file(path):
        refuse_odd_file(store, path)
        if is_table(store, path):
            return _v1_file(store, path)
        if not store.is_dir(path):
            raise WrongFileError(
                "not a TensorFlow checkpoint (no table footer); pass a checkpoint prefix, "
                "its .index file, or its directory",
                path=path,
            )
        return _locate_dir(store, path, depth)  # over HTTP a directory URL answers with a page
    shards = _v1_shards(store, path, None)
    if shards:
        return Located("v1", path, tuple(shards))
    matches = store.glob(path) if patterns else None
    if matches is not None:
        return _locate_pattern(store, path, matches)
    # A store that cannot tell a directory (an object store's prefix) may still hold one here.
    found = _search_dir(store, path, depth)
    if found is not None:
        return found
    raise CheckpointNotFoundError(_not_found_hint(store, path), path=path)


def _exists(store: Store, path: str) -> bool:
    """A file, or something odd in its place (a FIFO, a device) that opening it will refuse by name."""
    return store.is_file(path) or store.file_kind(path) is not None


def _v1_file(store: Store, path: str) -> Located:
    """A V1 table file: alone, or one shard of base-SSSSS-of-NNNNN with its siblings."""
    m = naming.V1_SHARD_RE.match(path)
    if not m:
        return Located("v1", path, (path,))
    return Located("v1", m["base"], tuple(_v1_shards(store, m["base"], m["count"]) or [path]))


def _v1_shards(store: Store, base: str, count: str | None) -> list[str]:
    """The files base-SSSSS-of-NNNNN present (of count NNNNN if given), sorted."""
    directory, name = store.dirname(base), store.basename(base)
    if not name:
        return []
    pattern = re.compile(re.escape(name) + r"-\d{5}-of-" + (re.escape(count) if count else r"\d{5}"))
    found = [store.join(directory, n) for n in store.list(directory) if pattern.fullmatch(n)]
    if found or count is None or int(count) > MAX_GUESSED_SHARDS:
        return [p for p in found if store.is_file(p)]
    # A store that cannot list (HTTP without index pages): the shard names follow from the count.
    guessed = (f"{base}-{i:05d}-of-{count}" for i in range(int(count)))
    return [p for p in guessed if store.is_file(p)]


def _locate_pattern(store: Store, pattern: str, matches: list[str]) -> Located:
    """The one checkpoint a glob pattern names (its files, its V1 shards ...), or an error listing the matches.

    A V1 shard pattern such as model.ckpt-?????-of-00002 (what Saver.save returns for sharded
    saves) names one checkpoint through all of its shards; 'dir/*' names the files of one.
    """
    if not matches:
        raise CheckpointNotFoundError("no file matches this pattern", path=pattern)
    found: dict[tuple, Located] = {}
    for match in matches:
        try:
            located = _locate(store, match, patterns=False, depth=MAX_STATE_DEPTH)
        except (CheckpointNotFoundError, WrongFileError, ReadError, UnsupportedError):
            continue  # a state file, a .meta, a FIFO ... beside the checkpoint files
        key = store.join(store.dirname(located.prefix), store.basename(located.prefix))
        found.setdefault((located.format, key), located)
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


def _locate_dir(store: Store, path: str, depth: int) -> Located:
    found = _search_dir(store, path, depth)
    if found is None:
        raise CheckpointNotFoundError(
            "directory holds no checkpoint (no 'checkpoint' state file, no *.index, "
            "no variables/variables.index, no V1 files)",
            path=path,
        )
    return found


def _search_dir(store: Store, path: str, depth: int) -> Located | None:
    """The checkpoint a directory holds, None when it holds none (or is not there)."""
    latest = latest_in(store, path, depth)
    if latest is not None:
        return _locate(store, latest, patterns=True, depth=depth + 1)
    variables = store.join(path, "variables/variables")
    graph = saved_model_graph(store, path)
    if graph and not store.is_file(naming.index_path(variables)):
        raise CheckpointNotFoundError(
            f"this SavedModel ({store.basename(graph)}) holds no variables: {naming.index_path(variables)} is missing",
            path=path,
        )
    for candidate in (variables, store.join(path, "variables")):
        if store.is_file(naming.index_path(candidate)):
            return Located("v2", candidate)
    names = store.list(path)
    indexes = [n[: -len(".index")] for n in names if n.endswith(".index") and len(n) > len(".index")]
    indexes = [n for n in indexes if store.is_file(store.join(path, naming.index_path(n)))]
    if len(indexes) == 1:
        return Located("v2", store.join(path, indexes[0]))
    if indexes:
        raise CheckpointNotFoundError(
            f"directory holds {len(indexes)} checkpoints and no usable 'checkpoint' "
            f"state file; pass one prefix: {', '.join(indexes[:5])}",
            path=path,
        )
    v1 = _v1_checkpoints_in(store, path, names)
    if len(v1) == 1:
        return _locate(store, v1[0], patterns=False, depth=depth + 1)
    if v1:
        shown = ", ".join(store.basename(p) for p in v1[:5])
        raise CheckpointNotFoundError(f"directory holds {len(v1)} V1 checkpoints; pass one: {shown}", path=path)
    return None


def _v1_checkpoints_in(store: Store, directory: str, names: list[str]) -> list[str]:
    """The V1 checkpoints in a directory: base names of shard groups and unsharded table files."""
    found = set()
    for name in names:
        if name == state.STATE_FILE or name.endswith(".index") or naming.split_data_path(name):
            continue
        full = store.join(directory, name)
        if not is_table(store, full):
            continue
        m = naming.V1_SHARD_RE.match(full)
        found.add(m["base"] if m else full)
    return sorted(found)


# -- the state file ------------------------------------------------------------------------------


def latest_in(store: Store, directory: str, depth: int = 0) -> str | None:
    """The checkpoint a directory's state file names as latest, where it is now (None: no state file).

    A state file naming a checkpoint that is gone is common (files deleted by hand, a copy of
    part of a run): when exactly one checkpoint is present it is used, with a StateFileWarning;
    otherwise CheckpointNotFoundError lists what is there.
    """
    path = store.join(directory, state.STATE_FILE)
    if depth > MAX_STATE_DEPTH:
        raise CheckpointNotFoundError("'checkpoint' state files point at each other", path=path)
    size = store.size(path)
    if size is None:
        return None
    if size > state.MAX_STATE_BYTES:
        raise WrongFileError(f"the 'checkpoint' state file is larger than {state.MAX_STATE_BYTES} bytes", path=path)
    named = state.parse(read_head(store, path, size), path).latest
    if not named:
        return None
    candidates = [named if store.isabs(named) else store.join(directory, named)]
    # A directory that was moved keeps stale absolute paths; TF gives up, we look next door.
    candidates.append(store.join(directory, store.basename(named)))
    for candidate in dict.fromkeys(candidates):
        if store.is_file(naming.index_path(candidate)) or store.is_file(candidate) or store.glob(candidate):
            return candidate
    present = [store.join(directory, n[: -len(".index")]) for n in store.list(directory) if n.endswith(".index")]
    if len(present) == 1:
        warnings.warn(
            StateFileWarning(
                f"{path}: names {named!r}, which does not exist; "
                f"using {store.basename(present[0])}, the only checkpoint there"
            ),
            stacklevel=4,
        )
        return present[0]
    names = ", ".join(store.basename(p) for p in present[:5])
    hint = f"; checkpoints present: {names}" if present else "; no checkpoint is present"
    raise CheckpointNotFoundError(f"the 'checkpoint' state file names {named!r}, which does not exist{hint}", path=path)


# -- files ---------------------------------------------------------------------------------------


def read_head(store: Store, path: str, n: int) -> bytes:
    """The first n bytes of a file (fewer if it is shorter)."""
    src = store.open(path)
    try:
        return src.read(0, min(n, src.size))
    finally:
        src.close()


def is_table(store: Store, path: str) -> bool:
    """A regular file ending in the table magic number."""
    size = store.size(path)
    if size is None or size < 48:  # size is None for a FIFO or a device too: never opened (a FIFO blocks)
        return False
    try:
        src = store.open(path)
        try:
            return src.read(src.size - 8, 8) == TABLE_MAGIC
        finally:
            src.close()
    except CkptioError:
        return False


def saved_model_graph(store: Store, directory: str) -> str | None:
    """The SavedModel graph file in directory (saved_model.pb or saved_model.cpb), or None."""
    for name in SAVED_MODEL_GRAPHS:
        path = store.join(directory, name)
        if store.is_file(path):
            return path
    return None


def refuse_odd_file(store: Store, path: str) -> None:
    """Raise WrongFileError for files people commonly pass by mistake."""
    try:
        head = read_head(store, path, 512)
    except ReadError as exc:
        raise CheckpointNotFoundError(exc.message, path=path) from None
    base = store.basename(path)
    directory = store.dirname(path) or "."
    if head.startswith(LFS_POINTER):
        raise WrongFileError(
            "this is a Git LFS pointer, not the file itself; run 'git lfs pull' to fetch it", path=path
        )
    if base == state.STATE_FILE and b"model_checkpoint_path" in head:
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


def _not_found_hint(store: Store, path: str) -> str:
    directory, name = store.dirname(path), store.basename(path)
    near = [store.join(directory, n) for n in store.list(directory) if name and n.startswith(name)][:3]
    if near:
        return "no checkpoint with this prefix; did you mean " + ", ".join(near) + "?"
    return "no such checkpoint (no .index file, no V1 file, no directory)"


__all__ = ["Located", "locate", "latest_in", "is_table", "refuse_odd_file", "saved_model_graph", "LFS_POINTER"]
