"""The exception tree: every error ckptio raises on purpose is a CkptioError."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Remedy:
    """What a caller can pass to get past an error: a keyword parameter (the API) or its flag (the CLI).

    param: the Python keyword, e.g. "force"; effect: what passing it does, e.g. "replace it";
    flag: the command-line flag when it is not "--" + param with dashes (e.g. param "overwrite", flag "--force");
    value: the value to pass (True for a switch).
    """

    param: str
    effect: str
    flag: str | None = None
    value: object = True

    def text(self, *, flags: bool) -> str:
        if flags:
            how = self.flag or "--" + self.param.replace("_", "-")
            how += "" if self.value is True else f" {self.value}"
        else:
            how = f"{self.param}={self.value!r}"
        return f"pass {how} to {self.effect}"


class CkptioError(Exception):
    """Base of all ckptio errors; the message names file, entry and offset when known."""

    def __init__(self, message: str, *, path=None, key=None, offset=None, remedy: Remedy | None = None):
        super().__init__(message)
        self.message = message
        self.path = None if path is None else str(path)
        self.key = key
        self.offset = offset
        self.remedy = remedy

    def __str__(self) -> str:
        return self.describe()

    def describe(self, *, flags: bool = False) -> str:
        """The one-line message; its advice names API parameters, or command-line flags when flags is true."""
        parts = []
        if self.path:
            parts.append(show_name(self.path))
        if self.key is not None:
            parts.append(f"entry {show_name(self.key)}")
        if self.offset is not None:
            parts.append(f"offset {self.offset}")
        parts.append(self.message if self.message.isprintable() else show_name(self.message))
        text = ": ".join(parts)
        return f"{text} ({self.remedy.text(flags=flags)})" if self.remedy else text


def show_name(key) -> str:
    """A tensor name (or path) as people should see it: as is when printable, else its repr, so
    that newlines and terminal escapes in a crafted checkpoint cannot forge or restyle output."""
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


class LfsPointerError(WrongFileError):
    """The file is a Git LFS pointer, not the file itself (`git lfs pull` fetches it)."""


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


class MismatchError(CkptioError, ValueError):
    """Tensors that must agree do not: merge inputs, or a source tensor and the fit template's."""


class OutputBusyError(CkptioError, FileExistsError):
    """Another process is writing the same output right now (it owns it; this writer gave up)."""


class StateFileWarning(UserWarning):
    """A `checkpoint` state file was not as expected (stale latest, not updated); the result is still right."""
