"""ckptio: read, inspect, verify and rewrite TensorFlow checkpoints without TensorFlow."""
from .checkpoint import Checkpoint, Tensor, open
from .errors import (CheckpointNotFoundError, ChecksumError, CkptioError, CorruptCheckpointError,
                     MissingShardError, OutputExistsError, PlanError, TensorNotFoundError, TruncatedError,
                     UnsupportedError, WriteError, WrongFileError)

__version__ = "0.1.0"

__all__ = [
    "open", "Checkpoint", "Tensor",
    "CkptioError", "CheckpointNotFoundError", "WrongFileError", "CorruptCheckpointError", "TruncatedError",
    "ChecksumError", "MissingShardError", "UnsupportedError", "TensorNotFoundError", "PlanError",
    "OutputExistsError", "WriteError",
]
