"""Where bytes live, apart from what they mean: local files, .tar.zst archives, fsspec URLs, memory."""

from .base import Output, Range, Sink, Source, Store

__all__ = ["Output", "Range", "Sink", "Source", "Store"]
