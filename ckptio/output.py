"""The output side of storage moved to store/atomic.py; `ckptio.output` stays importable as that same module."""

from __future__ import annotations

import sys

from .store import atomic as _atomic
from .store.atomic import *  # noqa: F403 - the names, for readers and type checkers

# The same module object, not a copy: code (and tests) that set ckptio.output.X change what the store uses.
sys.modules[__name__] = _atomic
