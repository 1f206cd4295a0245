"""Open the reader for a located checkpoint: the one place that picks a reader by its format."""

from __future__ import annotations

from ..store.base import Store
from .locate import Located
from .tensors import CheckpointReader


def open_reader(located: Located, store: Store | None = None) -> CheckpointReader:
    """The reader for a located checkpoint (the one place that picks a reader by format)."""
    if located.format == "v2":
        from .reader import BundleReader

        return BundleReader(located.prefix, store=store)
    from .v1 import V1Reader

    return V1Reader(list(located.files), store=store)
