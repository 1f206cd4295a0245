"""The exception tree: every error ckptio raises on purpose is a CkptioError."""
from __future__ import annotations


class CkptioError(Exception):
    """Base of all ckptio errors; the message names file, entry and offset when known."""

    def __init__(self, message: str, *, path=None, key=None, offset=None):
        super().__init__(message)
        self.message = message
        self.path = None if path is None else str(path)
        self.key = key
        self.offset = offset

    def __str__(self) -> str:
        parts = []
        if self.path:
            parts.append(self.path)
        if self.key is not None:
            parts.append(f"entry {_show_key(self.key)}")
        if self.offset is not None:
            parts.append(f"offset {self.offset}")
        parts.append(self.message)
        return ": ".join(parts)


def _show_key(key) -> str:
    if isinstance(key, bytes):
        try:
            key = key.decode("utf-8")
        except UnicodeDecodeError:
            return repr(key)
    return repr(key) if key == "" or not key.isprintable() else key


class CheckpointNotFoundError(CkptioError, FileNotFoundError):
    """No checkpoint at the given path."""


class WrongFileError(CkptioError, ValueError):
    """The path names something that is not a checkpoint (a .meta, an .h5, a state file ...)."""


class CorruptCheckpointError(CkptioError, ValueError):
    """The checkpoint's bytes contradict the format."""


class TruncatedError(CorruptCheckpointError):
    """A file ends before the bytes the index promises."""


class ChecksumError(CorruptCheckpointError):
    """A stored CRC32C does not match the bytes."""


class MissingShardError(CorruptCheckpointError, FileNotFoundError):
    """A data shard named by the header does not exist."""


class ReadError(CkptioError, OSError):
    """An input file exists but cannot be read (permission, a directory, an I/O error)."""


class UnsupportedError(CkptioError, NotImplementedError):
    """Valid input that ckptio cannot (yet) handle, e.g. decoding DT_VARIANT."""


class TensorNotFoundError(CkptioError, KeyError):
    """No tensor of that name in the checkpoint."""

    def __str__(self) -> str:  # KeyError would repr() the whole message
        return CkptioError.__str__(self)


class PlanError(CkptioError, ValueError):
    """A rewrite plan is invalid (name collision, rule matching nothing, bad option)."""


class OutputExistsError(CkptioError, FileExistsError):
    """The output checkpoint exists and --force was not given, or it is the input."""


class WriteError(CkptioError, OSError):
    """Writing the output failed (disk full, file too large, permission)."""


class OutputBusyError(CkptioError, FileExistsError):
    """Another process is writing the same output right now (it owns it; this writer gave up)."""


class StateFileWarning(UserWarning):
    """A `checkpoint` state file was not as expected (stale latest, not updated); the result is still right."""
