"""ckptio: read, inspect, verify and rewrite TensorFlow checkpoints without TensorFlow."""

import importlib
import sys
import types

from .errors import (
    CheckpointNotFoundError,
    ChecksumError,
    CkptioError,
    CorruptCheckpointError,
    LfsPointerError,
    MismatchError,
    MissingShardError,
    OutputBusyError,
    OutputExistsError,
    PlanError,
    ReadError,
    StateFileWarning,
    TensorNotFoundError,
    TruncatedError,
    UnsupportedError,
    WriteError,
    WrongFileError,
)

__version__ = "0.1.0"

__all__ = [
    "open",
    "Checkpoint",
    "Tensor",
    "rewrite",
    "verify",
    "diff",
    "fit",
    "merge",
    "Select",
    "StripOptimizer",
    "Rename",
    "Cast",
    "MapNames",
    "plan_rewrite",
    "save_plan",
    "load_plan",
    "run_plan",
    "commit_plan",
    "CkptioError",
    "CheckpointNotFoundError",
    "WrongFileError",
    "LfsPointerError",
    "CorruptCheckpointError",
    "TruncatedError",
    "ChecksumError",
    "MissingShardError",
    "ReadError",
    "UnsupportedError",
    "TensorNotFoundError",
    "PlanError",
    "OutputExistsError",
    "OutputBusyError",
    "WriteError",
    "MismatchError",
    "StateFileWarning",
]

# Public name -> the submodule that defines it, imported on first use (PEP 562): the CLI imports
# this package for __version__, and each command should pay only for the modules it runs.
_LAZY = {
    "open": "sources",  # the router over every path form
    "Checkpoint": "checkpoint",
    "Tensor": "checkpoint",
    "rewrite": "rewrite",
    "verify": "verify",
    "Select": "transform",
    "StripOptimizer": "transform",
    "Rename": "transform",
    "Cast": "transform",
    "MapNames": "transform",
    "diff": "diff",
    "fit": "fit",
    "merge": "merge",
    "plan_rewrite": "plan",
    "save_plan": "plan",
    "load_plan": "plan",
    "run_plan": "plan",
    "commit_plan": "plan",
}


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


class _Package(types.ModuleType):
    """This package's module type: `ckptio.rewrite`, `.verify`, `.diff`, `.fit` and `.merge` stay the functions."""

    def __setattr__(self, name, value):
        # Once a submodule is imported, the import system sets it as an attribute of its package,
        # so whoever first imports ckptio.rewrite (the CLI, `from ckptio.rewrite import ...`)
        # would replace the function ckptio.rewrite with the module.
        if name in ("rewrite", "verify", "diff", "fit", "merge") and isinstance(value, types.ModuleType):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
