"""ckptio: read, inspect, verify and rewrite TensorFlow checkpoints without TensorFlow."""
from .checkpoint import Checkpoint, Tensor, open
from .errors import (CheckpointNotFoundError, ChecksumError, CkptioError, CorruptCheckpointError,
                     MissingShardError, OutputExistsError, PlanError, ReadError, TensorNotFoundError,
                     TruncatedError, UnsupportedError, WriteError, WrongFileError)
from .rewrite import rewrite
from .transform import Cast, MapNames, Rename, Select, StripOptimizer
from .verify import verify

__version__ = "0.1.0"

__all__ = [
    "open", "Checkpoint", "Tensor", "rewrite", "verify", "Select", "StripOptimizer", "Rename", "Cast", "MapNames",
    "CkptioError", "CheckpointNotFoundError", "WrongFileError", "CorruptCheckpointError", "TruncatedError",
    "ChecksumError", "MissingShardError", "ReadError", "UnsupportedError", "TensorNotFoundError", "PlanError",
    "OutputExistsError", "WriteError",
]
