"""ckptio doctor PATH [--json] [--salvage OUT] [--force]

Says what is wrong with a checkpoint (local files, a .tar.zst archive or a URL) in plain words,
one line per problem, then lists the damaged tensors (with the reason) and the intact ones.
Exit 0 if healthy, 1 if not.
--salvage OUT writes the intact tensors into a new checkpoint at OUT: a local prefix, a URL or a .tar.zst.
"""

from __future__ import annotations

import json
import sys


def add_arguments(name, parser) -> None:
    parser.add_argument(
        "path", help="checkpoint prefix, .index/.data file, directory, V1 file, .tar.zst archive or URL"
    )
    parser.add_argument("--json", action="store_true", help="print the diagnosis as one JSON object")
    parser.add_argument(
        "--salvage",
        metavar="OUT",
        help="write the intact tensors into a new checkpoint at OUT (a prefix, a URL or a .tar.zst)",
    )
    parser.add_argument("--force", action="store_true", help="with --salvage, replace a checkpoint at OUT")


def run(args) -> int:
    from ..doctor import diagnose, salvage
    from .common import check_output_prefix

    if args.salvage:  # a local prefix, a URL or a .tar.zst (doctor/salvage.py writes it through its store)
        args.salvage = args.salvage.removeprefix("file://")  # a local path written as a URL
        check_output_prefix(args.salvage)
    try:
        d = diagnose(args.path)
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - doctor's contract on hostile input: one line, never a traceback
        print(
            f"ckptio doctor: internal error while diagnosing {args.path}: {type(exc).__name__}: {exc}", file=sys.stderr
        )
        return 1
    salvaged = None
    if args.salvage:
        if d.intact:
            salvaged = salvage(d, args.salvage, force=args.force)
    if args.json:
        out = d.as_dict()
        if args.salvage:
            out["salvaged"] = {"out": args.salvage, "tensors": salvaged or []}
        print(json.dumps(out, indent=1))
        return 0 if d.healthy else 1
    _print_text(d, args, salvaged)
    return 0 if d.healthy else 1


def _print_text(d, args, salvaged) -> None:
    from ..errors import show_name

    total = len(d.intact) + len(d.damaged)
    what = {"v2": "V2 checkpoint", "v1": "V1 checkpoint"}.get(d.format, "checkpoint")
    shards = f", {d.num_shards} shard(s)" if d.num_shards else ""
    print(f"{show_name(d.prefix or d.path)}: {what}{shards}, {total} tensor(s)" if d.format else show_name(d.path))
    for p in d.problems:
        print(f"problem: {p}")
    for n in d.notes:
        print(f"note: {n}")
    for name, why in d.damaged.items():
        print(f"damaged: {show_name(name)}: {show_name(why)}")
    for name in d.intact:
        print(f"intact: {show_name(name)}")
    if d.healthy:
        print(
            f"verdict: healthy: all {total} tensor(s) check out"
            + (f"; wrote all {len(salvaged)} to {args.salvage}" if salvaged is not None else "")
        )
        return
    if not d.format:
        print("verdict: not a readable checkpoint")
    elif not d.intact:
        print(
            f"verdict: damaged: none of the {total} tensor(s) can be recovered"
            if total
            else "verdict: damaged: no tensor can be recovered"
        )
    elif salvaged is not None:
        print(
            f"verdict: damaged: {len(d.damaged)} of {total} tensor(s) lost; wrote the {len(salvaged)} intact "
            f"one(s) to {args.salvage}"
        )
    else:
        print(
            f"verdict: damaged: {len(d.damaged)} of {total} tensor(s) lost; {len(d.intact)} intact one(s) can be "
            f"saved with: ckptio doctor {args.path} --salvage OUT"
        )
