"""The `checkpoint` state file beside TF checkpoints (tensorflow.CheckpointState): read, update, write.

TF writes text_format.MessageToString output, fields in number order, zero/empty values left out
(FORMAT-models.md §1):

    model_checkpoint_path: "ckpt-4"                        1  latest prefix
    all_model_checkpoint_paths: "ckpt-3"                   2  managed prefixes, oldest first,
    all_model_checkpoint_paths: "ckpt-4"                      the last one equal to field 1
    all_model_checkpoint_timestamps: 1796177986.2520885    3  Unix seconds, one per path (or none)
    all_model_checkpoint_timestamps: 1796177986.2591264
    last_preserved_timestamp: 1796177985.1881194           4  a manager manages paths newer than this

Paths are relative to the directory (CheckpointManager, Checkpoint.save) or absolute (TF1 Saver).
A CheckpointManager manages (and deletes past max_to_keep) only paths whose timestamp is newer than
field 4; without field 3 it manages none of them. The file is replaced atomically.

Ownership rule (what ckptio writes): a state file that does not exist, or that lists nothing but
the outputs being written, is ckptio's to write; any other state file belongs to someone else (a
training run) and is left exactly as it was unless the caller asks to make the output the latest.
"""

from __future__ import annotations

import glob
import os
import time
import warnings
from collections import namedtuple

from ..errors import CheckpointNotFoundError, StateFileWarning, WrongFileError
from . import naming

STATE_FILE = "checkpoint"
MAX_STATE_BYTES = 16 << 20  # a real state file is a few KB; do not read a huge file into memory


class State(namedtuple("State", "latest paths timestamps last_preserved", defaults=((), (), 0.0))):
    """A CheckpointState: latest path, listed paths (oldest first), their timestamps, field 4."""

    __slots__ = ()


def state_path(directory: str) -> str:
    return os.path.join(directory or ".", STATE_FILE)


def parse(text: bytes, path: str = STATE_FILE) -> State:
    """Decode a state file's text (any syntax TF's reader accepts); WrongFileError if it is not one."""
    from google.protobuf import text_format

    from .._proto.checkpoint_state_pb2 import CheckpointState

    try:
        proto = text_format.Parse(text.decode("utf-8"), CheckpointState())
    except (UnicodeDecodeError, text_format.ParseError) as exc:
        raise WrongFileError(f"cannot parse the 'checkpoint' state file ({exc})", path=path) from None
    return State(
        proto.model_checkpoint_path,
        tuple(proto.all_model_checkpoint_paths),
        tuple(proto.all_model_checkpoint_timestamps),
        proto.last_preserved_timestamp,
    )


def render(state: State) -> bytes:
    """The state file's text exactly as TF writes it (text_format.MessageToString)."""
    from google.protobuf import text_format

    from .._proto.checkpoint_state_pb2 import CheckpointState

    proto = CheckpointState(
        model_checkpoint_path=state.latest,
        all_model_checkpoint_paths=state.paths,
        all_model_checkpoint_timestamps=state.timestamps,
        last_preserved_timestamp=state.last_preserved,
    )
    return text_format.MessageToString(proto).encode("utf-8")


def read_state(directory: str) -> State | None:
    """The directory's state file, or None when there is none; WrongFileError when unreadable."""
    path = state_path(directory)
    try:
        with open(path, "rb") as f:
            text = f.read(MAX_STATE_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise WrongFileError(f"cannot read the 'checkpoint' state file ({exc.strerror or exc})", path=path) from None
    if len(text) > MAX_STATE_BYTES:
        raise WrongFileError(f"the 'checkpoint' state file is larger than {MAX_STATE_BYTES} bytes", path=path)
    return parse(text, path)


def write_state(directory: str, state: State) -> None:
    """Replace the directory's state file atomically (temp file, rename), as TF does."""
    from ..io import AtomicFiles, write_all

    path = state_path(directory)
    files = AtomicFiles(directory or ".")
    _, fd = files.create(path)
    try:
        try:
            write_all(fd, render(state), path)
        finally:
            os.close(fd)
        files.commit()
    except BaseException:
        files.abort()
        raise


# -- where the listed paths are ---------------------------------------------------------------------


def _exists(prefix: str) -> bool:
    return (
        os.path.exists(naming.index_path(prefix))
        or os.path.isfile(prefix)
        or (glob.has_magic(prefix) and bool(glob.glob(prefix)))
    )  # a V1 shard pattern


def locate(directory: str, stored: str) -> str | None:
    """Where a listed path is: joined onto the directory if relative, else next door; None if gone."""
    candidates = [
        stored if os.path.isabs(stored) else os.path.join(directory, stored),
        # A directory that was moved keeps stale absolute paths; TF gives up, we look next door.
        os.path.join(directory, os.path.basename(stored)),
    ]
    return next((c for c in candidates if _exists(c)), None)


def present_checkpoints(directory: str) -> list[str]:
    """Prefixes of the V2 checkpoints in a directory (sorted)."""
    return sorted(i[: -len(".index")] for i in glob.glob(os.path.join(glob.escape(directory), "*.index")))


def latest_from_state(directory: str) -> str | None:
    """The checkpoint a directory's state file names as latest (None if it names none).

    A state file naming a checkpoint that is gone is common (files deleted by hand, a copy of
    part of a run): when exactly one checkpoint is present it is used, with a StateFileWarning;
    otherwise CheckpointNotFoundError lists what is there.
    """
    state = read_state(directory)
    if state is None or not state.latest:
        return None
    found = locate(directory, state.latest)
    if found is not None:
        return found
    return _only_present(directory, state.latest)


def _only_present(directory: str, named: str) -> str:
    present = present_checkpoints(directory)
    if len(present) == 1:
        warnings.warn(
            StateFileWarning(
                f"{state_path(directory)}: names {named!r}, which does not exist; "
                f"using {os.path.basename(present[0])}, the only checkpoint there"
            ),
            stacklevel=3,
        )
        return present[0]
    names = ", ".join(os.path.basename(p) for p in present[:5])
    hint = f"; checkpoints present: {names}" if present else "; no checkpoint is present"
    raise CheckpointNotFoundError(
        f"the 'checkpoint' state file names {named!r}, which does not exist{hint}", path=state_path(directory)
    )


class Listed(namedtuple("Listed", "stored path timestamp")):
    """One path a state file lists: as stored, where it is (None: gone), its timestamp (None: none)."""

    __slots__ = ()


def listed(directory: str) -> tuple[list[Listed], State]:
    """Every checkpoint the state file lists, oldest first (the latest alone when it lists none)."""
    state = read_state(directory)
    if state is None:
        return [], State("")
    paths: tuple[str, ...] = state.paths or ((state.latest,) if state.latest else ())
    stamps = state.timestamps if len(state.timestamps) == len(paths) else (None,) * len(paths)
    rows = [Listed(p, locate(directory, p), t) for p, t in zip(paths, stamps)]
    if rows and all(r.path is None for r in rows):
        # Not one of them exists: the stale-latest rule decides (the one checkpoint present, or an error).
        only = _only_present(directory, state.latest or paths[-1])
        rows = [Listed(os.path.basename(only), only, None)]
    return rows, state


# -- updating ---------------------------------------------------------------------------------------


def _stored_form(directory: str, prefix: str, absolute: bool) -> str:
    """A path as the state file stores it: relative to the directory (absolute in Saver's files)."""
    return (
        os.path.abspath(prefix)
        if absolute
        else os.path.relpath(os.path.abspath(prefix), os.path.abspath(directory or "."))
    )


def _same(directory: str, stored: str, prefix: str) -> bool:
    full = stored if os.path.isabs(stored) else os.path.join(directory or ".", stored)
    return os.path.realpath(full) == os.path.realpath(prefix)


def owned_by(state: State | None, directory: str, prefixes) -> bool:
    """True when the state file is absent or lists nothing but these prefixes (ckptio's own)."""
    if state is None:
        return True
    listed_paths = set(state.paths) | ({state.latest} if state.latest else set())
    return all(any(_same(directory, p, q) for q in prefixes) for p in listed_paths)


def with_latest(state: State | None, directory: str, prefix: str, timestamp: float | None) -> State:
    """state with prefix appended as the latest (moved to the end if listed); other entries kept."""
    if state is None:
        state = State("")
    if not state.paths and state.latest:  # a hand-written file naming only its latest: keep that one
        state = state._replace(paths=(state.latest,))
    old = list(zip(state.paths, _padded(state)))
    kept = [(p, t) for p, t in old if not _same(directory, p, prefix)]
    absolute = bool(old) and all(os.path.isabs(p) for p, _ in old)
    stored = _stored_form(directory, prefix, absolute)
    # Timestamps are all or none (a manager zips the two lists): keep the file's choice.
    stamped = not old or bool(state.timestamps)
    entries = kept + [(stored, timestamp if timestamp is not None else time.time())]
    return State(
        stored, tuple(p for p, _ in entries), tuple(t for _, t in entries) if stamped else (), state.last_preserved
    )


def _padded(state: State) -> tuple:
    """One timestamp per path; a short list padded with field 4 (what TF assumes for a missing one)."""
    ts = tuple(state.timestamps[: len(state.paths)])
    return ts + (state.last_preserved,) * (len(state.paths) - len(ts))


def record_outputs(directory: str, outputs, *, make_latest: bool = False, last_preserved: float | None = None) -> str:
    """List outputs [(prefix, timestamp or None)], oldest first, in the directory's state file.

    Returns "written" or "left" (a state file that belongs to someone else, and no make_latest).
    Written: a new or ckptio-owned file lists exactly the outputs; with make_latest a foreign file
    keeps its entries, timestamps and field 4, and the outputs are appended, the last one latest.
    """
    try:
        state = read_state(directory)
    except WrongFileError:
        if not make_latest:
            return "left"  # unreadable: not ours to replace
        state = None
    prefixes = [p for p, _ in outputs]
    if not make_latest and not owned_by(state, directory, prefixes):
        return "left"
    base = state if make_latest else None
    if base is None:
        known = {} if state is None else {p: t for p, t in zip(state.paths, _padded(state))}
        base = State("", last_preserved=_owned_preserved(state, last_preserved))
        outputs = [(p, t if t is not None else _known(known, directory, p)) for p, t in outputs]
    now = time.time()
    for prefix, ts in outputs:
        base = with_latest(base, directory, prefix, now if ts is None else ts)
    write_state(directory, base)
    return "written"


def _owned_preserved(state: State | None, given: float | None) -> float:
    if given is not None:
        return given
    return 0.0 if state is None else state.last_preserved


def _known(known: dict, directory: str, prefix: str) -> float | None:
    """The timestamp an owned state file already had for prefix (a resumed batch keeps it)."""
    return next((t for p, t in known.items() if _same(directory, p, prefix)), None)


def state_file_of(store, prefix: str) -> str:
    """The path of the state file beside prefix in store."""
    from ..store.local import LocalStore

    if isinstance(store, LocalStore):
        return state_path(os.path.dirname(prefix) or ".")
    return store.join(store.dirname(prefix), STATE_FILE)


def record_output(store, prefix: str, *, make_latest: bool = False) -> str:
    """List prefix in the state file beside it in store (the rules of record_outputs); "written" or "left".

    Local files keep record_outputs' paths (relative, or absolute as a Saver's file has them); other
    stores list the prefix by its name, reading and replacing the file through the store.
    """
    from ..store.local import LocalStore

    if isinstance(store, LocalStore):
        return record_outputs(os.path.dirname(prefix) or ".", [(prefix, None)], make_latest=make_latest)
    path = state_file_of(store, prefix)
    existing = None
    size = store.size(path)
    if size is not None:
        if size > MAX_STATE_BYTES:
            if not make_latest:
                return "left"  # not a state file ckptio wrote: not ours to replace
        else:
            source = store.open(path)
            try:
                existing = source.read(0, source.size)
            finally:
                source.close()
    text = text_for_output(existing, store.basename(prefix), make_latest=make_latest)
    if text is None:
        return "left"
    output = store.output()
    try:
        output.create(path).write(text)
        output.commit()
    except BaseException:
        output.abort()
        raise
    return "written"


def text_for_output(existing: bytes | None, base: str, *, make_latest: bool = False) -> bytes | None:
    """The new text of the state file beside output `base` (a name in its directory), or None: leave it.

    For stores without local paths (remote URLs): the rules of record_outputs, on the file's bytes.
    """
    try:
        state = parse(existing) if existing else None
    except WrongFileError:
        if not make_latest:
            return None  # unreadable: not ours to replace
        state = None
    if not make_latest and not owned_by(state, ".", [base]):
        return None
    known = {} if state is None else dict(zip(state.paths, _padded(state)))
    start = state if make_latest else State("", last_preserved=_owned_preserved(state, None))
    return render(with_latest(start, ".", base, _known(known, ".", base) or time.time()))


def updated_state(existing: bytes | None, base: str) -> bytes:
    """A state file's new text naming base (relative) as latest, keeping the entries it listed."""
    try:
        state = parse(existing) if existing else None
    except WrongFileError:
        state = None  # an unreadable state file is replaced, not trusted
    return render(with_latest(state, ".", base, time.time()))
