"""Byte sources: one read(offset, length) interface over local files and memory (output side: store/atomic.py).

The sources moved to ckptio/store/ (local.py, memory.py); their names stay importable from here.
"""

from __future__ import annotations

# The output side moved to store/atomic.py (ckptio.output is that module too); its names stay importable from here.
from .store.atomic import (  # noqa: E402, F401
    CLAIM_TRIES,
    AtomicFiles,
    OutputClaim,
    interrupts_deferred,
    make_dirs,
    preallocate,
    remove_stale_temps,
    staging_dir,
    take_late_interrupt,
    write_all,
)
from .store.base import Source  # noqa: F401
from .store.local import FileSource, odd_file_kind  # noqa: F401
from .store.memory import MemorySource  # noqa: F401
