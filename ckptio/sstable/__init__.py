"""The LevelDB-style table that holds a checkpoint's index (and whole V1 checkpoints)."""

from .table import Table
from .table_builder import TableBuilder

__all__ = ["Table", "TableBuilder"]
