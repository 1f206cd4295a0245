"""ckptio pack / unpack: one .tar.zst archive per checkpoint, and back.

  ckptio pack PATH OUT.tar.zst      the .index, then the data shards, in a standard tar compressed with
                                    multi-threaded zstd; written to a temp name and renamed when complete
  ckptio unpack ARCHIVE DIR         the files back, byte for byte (also: tar --zstd -xf ARCHIVE -C DIR)
Every reading command (ls, show, verify, strip, rename, rewrite) also takes the archive directly.
"""

from __future__ import annotations

import json
import sys

from .common import Progress, human


def add_arguments(name, p) -> None:
    if name == "pack":
        p.add_argument("path", help="checkpoint (prefix, directory, .index, archive or URL)")
        p.add_argument("out", help="archive to write, e.g. model.tar.zst (a URL works too)")
        p.add_argument(
            "--level", type=int, default=3, metavar="N", help="zstd level, 1 (fastest) to 22 (smallest); default 3"
        )
        p.add_argument(
            "--threads",
            type=int,
            default=-1,
            metavar="N",
            help="zstd worker threads; -1 (default) = one per CPU, 0 = none",
        )
    else:
        p.add_argument("archive", help=".tar.zst archive (path or URL)")
        p.add_argument("dir", help="directory (or URL) to write the checkpoint files into")
    p.add_argument("--force", action="store_true", help="replace existing output")
    p.add_argument("--json", action="store_true", help="print what was done as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar, no summary")


def run(args) -> int:
    from .. import archive

    if args.command == "pack":
        return _pack(args, archive)
    return _unpack(args, archive)


def _pack(args, archive) -> int:
    import ckptio

    from ..store import ARCHIVE_SUFFIXES, is_archive
    from .main import UsageError

    if not is_archive(args.out):  # the reading commands recognize an archive by its name
        raise UsageError(f"{args.out}: an archive's name must end in {' or '.join(ARCHIVE_SUFFIXES)}")
    if not 1 <= args.level <= 22:
        raise UsageError("--level must be between 1 and 22")
    if args.threads < -1:
        raise UsageError("--threads must be -1 (one per CPU), 0, or a positive count")
    with ckptio.open(args.path) as ckpt:
        total = sum(e.size for e in ckpt.entries().values())
        bar = Progress(total, "pack", enabled=False if (args.quiet or args.json) else None)
        try:
            stats = archive.pack(ckpt, args.out, level=args.level, threads=args.threads, force=args.force, progress=bar)
        finally:
            bar.close()
    return _report(
        args,
        stats,
        f"packed {len(stats.files)} files into {stats.path}: {human(stats.bytes_in)} -> "
        f"{human(stats.bytes_out)} ({stats.ratio:.2f}x) in {stats.seconds:.2f} s "
        f"({human(stats.throughput)}/s)",
    )


def _unpack(args, archive) -> int:
    # The archive's unpacked size is known only at its end: the bar shows bytes written and the rate.
    bar = Progress(None, "unpack", enabled=False if (args.quiet or args.json) else None)
    try:
        stats = archive.unpack(args.archive, args.dir, force=args.force, progress=bar)
    finally:
        bar.close()
    return _report(
        args,
        stats,
        f"unpacked {len(stats.files)} files ({human(stats.bytes_out)}) into {stats.out_dir} in {stats.seconds:.2f} s",
    )


def _report(args, stats, summary: str) -> int:
    """Print the stats as JSON with --json, else the summary line unless --quiet."""
    if args.json:
        json.dump(stats.to_json(), sys.stdout)
        sys.stdout.write("\n")
    elif not args.quiet:
        print(summary)
    return 0
