"""Small helpers shared by the command modules: sizes, progress, output."""

from __future__ import annotations

import os
import re
import sys
import time

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1 << 10,
    "kb": 1 << 10,
    "kib": 1 << 10,
    "m": 1 << 20,
    "mb": 1 << 20,
    "mib": 1 << 20,
    "g": 1 << 30,
    "gb": 1 << 30,
    "gib": 1 << 30,
    "t": 1 << 40,
    "tb": 1 << 40,
}


def parse_size(text: str) -> int:
    """'512M' -> 536870912 (binary units)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not m or m[2].lower() not in _UNITS:
        import argparse

        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 500M, 2G)")
    return int(float(m[1]) * _UNITS[m[2].lower()])


def human(n: float) -> str:
    """Bytes as a short human string."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


class Progress:
    """A one-line progress bar on stderr, drawn only when stderr is a terminal; total None: bytes and rate only."""

    def __init__(self, total: int | None, label: str, *, enabled: bool | None = None):
        self.total, self.label, self.done = None if total is None else max(total, 1), label, 0
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.started = self._last = time.monotonic()
        self.drawn = False

    def set_total(self, total: int) -> None:
        """The bytes the work will count (known once it is planned)."""
        self.total = max(total, 1)

    def __call__(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and (now - self._last > 0.1 or (self.total and self.done >= self.total)):
            self._last = now
            rate = self.done / max(now - self.started, 1e-9)
            if self.total is None:
                sys.stderr.write(f"\r{self.label} {human(self.done)} {human(rate)}/s ")
            else:
                frac = min(self.done / self.total, 1.0)
                bar = "#" * int(frac * 30)
                sys.stderr.write(f"\r{self.label} [{bar:<30}] {frac:6.1%} {human(self.done)} {human(rate)}/s")
            sys.stderr.flush()
            self.drawn = True

    def close(self) -> None:
        if self.drawn:  # end the bar's line; nothing to end when it was never drawn
            sys.stderr.write("\n")
            sys.stderr.flush()


def check_output_prefix(out: str) -> None:
    """Refuse an output prefix that names a directory or has no file name (it would write 'dir/.index')."""
    from ..store import is_archive, is_url, local_path
    from .main import UsageError

    if is_archive(out):
        return
    example = (out if out.endswith("/") else out + "/") + "model.ckpt"
    if out.endswith("://"):
        raise UsageError(f"{out}: not an output prefix (no path); pass e.g. {example}")
    if is_url(out):  # a URL ending in '/' is a remote directory: the upload names the output after the input
        return
    local = local_path(out)
    if local.rsplit("/", 1)[-1] in ("", ".", ".."):
        raise UsageError(f"{out}: not an output prefix (no file name); pass e.g. {example}")
    if os.path.isdir(local):
        raise UsageError(f"{out}: is a directory; pass an output prefix inside it, e.g. {example}")


def check_shard_options(args) -> None:
    """--shards N and --max-shard-size S: each sane, and not both (strip/rename/rewrite, fit, plan)."""
    from .main import UsageError

    if args.shards is not None and args.shards < 1:
        raise UsageError("--shards must be >= 1")
    if args.max_shard_size is not None and args.max_shard_size < 1:
        raise UsageError("--max-shard-size must be more than 0 bytes")
    if args.shards is not None and args.max_shard_size is not None:
        raise UsageError("give --shards or --max-shard-size, not both")
