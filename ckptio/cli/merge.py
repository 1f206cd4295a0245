"""ckptio merge CKPT [CKPT ...] OUT: average, weigh or blend checkpoints into a new one.

ckptio merge a b c OUT                        mean of three checkpoints
ckptio merge --last 3 runs/exp OUT            mean of the 3 newest a state file lists
ckptio merge a b OUT --method slerp --weights 0.3
ckptio merge ft1 ft2 OUT --method task-arithmetic --base pretrained --weights 0.5,0.5
"""

from __future__ import annotations

import json
import sys

from .common import Progress, check_output_prefix, human, parse_size

# ckptio.merge_math.METHODS, not imported: it loads numpy, and `--help` should start fast.
METHODS = ("mean", "weighted", "ema", "task-arithmetic", "slerp")


def add_arguments(name, p) -> None:
    p.usage = (
        "%(prog)s CKPT [CKPT ...] OUT [--method METHOD] [--weights W1,W2,...] [options]\n"
        "       %(prog)s --last N DIR OUT [options]"
    )
    p.add_argument(
        "paths",
        nargs="+",
        metavar="CKPT",
        help="input checkpoints (any path form), then the output: a prefix (e.g. out/model.ckpt), a URL "
        "or a .tar.zst; "
        "with --last N, one directory and then OUT",
    )
    p.add_argument(
        "--method",
        choices=METHODS,
        default="mean",
        help="mean (default); weighted (--weights, normalised); ema (--decay, inputs in step order); "
        "task-arithmetic (--base B: B + sum w_i (C_i - B)); slerp (two inputs, --weights T)",
    )
    p.add_argument("--weights", metavar="W1,W2,...", help="one weight per input (slerp: one T in [0, 1])")
    p.add_argument("--decay", type=float, metavar="D", help="ema: m_k = D m_(k-1) + (1 - D) x_k, 0 <= D < 1")
    p.add_argument("--base", metavar="CKPT", help="task-arithmetic: the model the inputs were fine-tuned from")
    p.add_argument(
        "--last", type=int, metavar="N", help="merge the N newest checkpoints DIR's 'checkpoint' state file lists"
    )
    p.add_argument("--include", action="append", default=[], metavar="REGEX", help="merge only matching names")
    p.add_argument("--exclude", action="append", default=[], metavar="REGEX", help="leave out matching names")
    p.add_argument(
        "--keep-optimizer",
        action="store_true",
        help="keep optimizer state (floating slots are combined too); dropped by default",
    )
    p.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="threads combining chunks (default: one per core, at most 4); same output whatever N",
    )
    g = p.add_argument_group("output")
    g.add_argument("--force", action="store_true", help="replace an existing output checkpoint")
    g.add_argument("--dry-run", action="store_true", help="print what would be combined and how, write nothing")
    g.add_argument("--json", action="store_true", help="print the report as JSON")
    g.add_argument("--fsync", action="store_true", help="fsync the output before renaming it into place")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    if name == "merge":  # not on `ckptio plan merge`
        g = p.add_argument_group("on a cluster")
        g.add_argument(
            "--engine",
            metavar="ray[=ADDRESS]",
            help="combine each output shard as a task on a Ray cluster (ADDRESS, or a local instance); "
            "needs pip install 'ckptio[ray]'",
        )
        g.add_argument("--shards", type=int, metavar="N", help="with --engine: output data shards, one task each")
        g.add_argument(
            "--max-shard-size", type=parse_size, metavar="SIZE", help="with --engine: start a new shard past SIZE"
        )


def _weights(text):
    from .main import UsageError

    if text is None:
        return None
    try:
        return [float(w) for w in text.split(",")]
    except ValueError:
        raise UsageError(f"--weights {text}: not a comma-separated list of numbers") from None


def run(args) -> int:
    from .main import UsageError

    if len(args.paths) < 2:
        raise UsageError("merge takes CKPT [CKPT ...] OUT (or --last N DIR OUT)")
    *inputs, dst = args.paths
    if args.last is not None and len(inputs) != 1:
        raise UsageError("--last N takes one directory, then OUT")
    if args.base == "":
        raise UsageError("--base: empty path")
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads {args.threads}: needs N >= 1")
    check_output_prefix(dst)
    kwargs = dict(
        method=args.method,
        weights=_weights(args.weights),
        decay=args.decay,
        base=args.base,
        last=args.last,
        include=args.include,
        exclude=args.exclude,
        keep_optimizer=args.keep_optimizer,
        force=args.force,
        fsync=args.fsync,
    )
    if args.engine and not args.dry_run:  # cli/engine.py: the merge's shards as Ray tasks
        from .common import check_shard_options
        from .engine import run_merge_engine

        check_shard_options(args)
        report = run_merge_engine(args, inputs, dst, kwargs)
    else:
        if args.shards is not None or args.max_shard_size is not None:
            raise UsageError("merge writes one shard; --shards and --max-shard-size are for --engine ray and plans")
        from ..merge import merge

        bar = Progress(None, "merge", enabled=False if (args.quiet or args.json or args.dry_run) else None)
        try:
            report = merge(inputs, dst, dry_run=args.dry_run, progress=bar, threads=args.threads, **kwargs)
        finally:
            bar.close()
    if args.json:
        json.dump(report.to_json(), sys.stdout)
        sys.stdout.write("\n")
        return 0
    _print_report(report)
    return 0


def _print_report(report) -> None:
    out = [
        f"{report.method} of {len(report.inputs)} checkpoints"
        + (f" onto base {report.base}" if report.base else "")
        + f" (order {report.order}):"
    ]
    for prefix, w in zip(report.inputs, report.weights if report.method != "slerp" else (None, None)):
        out.append(f"  {prefix}" + ("" if w is None else f"  weight {w:.6g}"))
    out.extend(f"note: {n}" for n in report.notes)
    if report.dry_run:
        how = f"{report.method}, in float64"
        out.extend(f"combine {name}  {report.tensors[name]}  ({how})" for name in report.combined)
        out.extend(f"copy    {name}  {report.tensors[name]}  (from {report.copied_from})" for name in report.copied)
        out.extend(f"drop    {name}" for name in report.dropped)
    if report.linear:
        out.append(
            f"note: {len(report.linear)} near-parallel tensors interpolated linearly: "
            + ", ".join(report.linear[:5])
            + (" ..." if len(report.linear) > 5 else "")
        )
    verb = "would write" if report.dry_run else "wrote"
    out.append(
        f"{verb} {report.dst}: combined {len(report.combined)} tensors, copied {len(report.copied)} "
        f"from {report.copied_from}, dropped {len(report.dropped)}; {human(report.bytes_written)}"
        + ("" if report.dry_run else f" in {report.seconds:.2f} s")
    )
    sys.stdout.write("\n".join(out) + "\n")
