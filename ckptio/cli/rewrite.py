"""ckptio strip / rename / rewrite: plan, then write a new checkpoint TensorFlow loads natively.

  ckptio strip IN OUT                 drop optimizer state (global_step kept)
  ckptio rename IN OUT --map OLD=NEW  rename by scope ('old/=new/'), exact name, or --regex
  ckptio rewrite IN OUT [steps]       any combination: select, strip, rename, cast
With --out-dir DIR every positional argument is an input (paths, globs, directories).
"""

from __future__ import annotations

import json
import os
import sys

from ..errors import CheckpointNotFoundError
from .common import Progress, check_output_prefix, check_shard_options, human, parse_size

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (type checkers honour the name)
if TYPE_CHECKING:  # the steps are imported lazily at run time (start-up cost)
    from ..transform import Step


def add_arguments(name, p) -> None:
    # argparse would draw nargs="+" as `IN OUT [IN OUT ...]`, promising pairs that are refused.
    p.usage = "%(prog)s [options] IN OUT\n       %(prog)s [options] --out-dir DIR IN [IN ...]"
    p.add_argument(
        "paths",
        nargs="+",
        metavar="IN OUT",
        help="input checkpoint and output prefix (e.g. out/model.ckpt); with --out-dir, inputs only",
    )
    if name == "rewrite":
        g = p.add_argument_group("select")
        g.add_argument(
            "--include",
            action="append",
            default=[],
            metavar="REGEX",
            help="keep only matching names; on TF2 object-based checkpoints a variable is named by every "
            "object path to it, as `ls --objects` shows them, whatever its key",
        )
        g.add_argument(
            "--exclude",
            action="append",
            default=[],
            metavar="REGEX",
            help="drop matching names (object-based: a variable goes when one of its paths matches)",
        )
        g.add_argument(
            "--include-glob",
            action="append",
            default=[],
            metavar="GLOB",
            help="keep only names matching GLOB (fnmatch)",
        )
        g.add_argument("--exclude-glob", action="append", default=[], metavar="GLOB", help="drop names matching GLOB")
        p.add_argument("--strip-optimizer", action="store_true", help="drop optimizer state")
    if name in ("strip", "rewrite"):
        g = p.add_argument_group("optimizer state")
        g.add_argument("--drop-global-step", action="store_true", help="also drop global_step")
        g.add_argument(
            "--ema",
            choices=("keep", "drop", "promote"),
            default="keep",
            help="ExponentialMovingAverage shadows: keep (default), drop, or promote over the weights",
        )
        g.add_argument(
            "--optimizer-name",
            action="append",
            default=[],
            metavar="NAME",
            help="a custom optimizer: for TF1 checkpoints its name as slot suffix (V/NAME, V/NAME_1) "
            "or, for tf_keras optimizers in graph mode, as scope (NAME/V/m, NAME/iter); "
            "for object-based ones its object path (e.g. model/optimizer)",
        )
    if name in ("rename", "rewrite"):
        g = p.add_argument_group("rename")
        g.add_argument(
            "--map",
            action="append",
            default=[],
            metavar="OLD=NEW",
            help="'old_scope/=new_scope/', '/=prefix/', 'exact=name', or a regex with --regex; on "
            "TF2 object-based checkpoints the rules move object paths (as `ls --objects` shows "
            "them) and every key is rewritten to what TF would write",
        )
        g.add_argument("--map-file", metavar="FILE", help="JSON object {old: new} of rules")
        g.add_argument("--regex", action="store_true", help="rules are regexes; NEW may use \\1 backreferences")
        g.add_argument("--allow-unmatched", action="store_true", help="accept rules that match no tensor")
    if name == "rewrite":
        g = p.add_argument_group("cast")
        g.add_argument("--cast", choices=("float32", "bfloat16", "float16"), help="cast floating tensors")
        g.add_argument(
            "--cast-only",
            action="append",
            default=[],
            metavar="REGEX",
            help="with --cast, cast only matching names (object-based: a name or object path, as for --include)",
        )
    g = p.add_argument_group("output")
    g.add_argument("--shards", type=int, metavar="N", help="number of output data shards (default 1)")
    g.add_argument("--max-shard-size", type=parse_size, metavar="SIZE", help="start a new shard past SIZE (e.g. 2G)")
    g.add_argument("--force", action="store_true", help="replace an existing output checkpoint")
    g.add_argument(
        "--make-latest",
        action="store_true",
        help="make the output the latest in its directory's 'checkpoint' state file even when that "
        "file lists other checkpoints (a training run's); by default such a file is left as it was",
    )
    g.add_argument("--dry-run", action="store_true", help="print the plan, write nothing")
    g.add_argument("--json", action="store_true", help="print the report as JSON")
    g.add_argument("--no-verify", action="store_true", help="do not check input checksums while copying")
    g.add_argument(
        "--fsync",
        action="store_true",
        help="fsync the output before renaming it into place (durable across power loss; slower)",
    )
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    g = p.add_argument_group("batch")
    g.add_argument("--out-dir", metavar="DIR", help="rewrite every input into DIR")
    g.add_argument("--jobs", type=int, default=1, metavar="N", help="worker processes for batch jobs")
    g.add_argument("--no-resume", action="store_true", help="redo inputs whose output already exists")
    p.add_argument(
        "--engine",
        metavar="ray[=ADDRESS]",
        help="run the work as tasks on a Ray cluster (ADDRESS, or a local instance); needs pip install 'ckptio[ray]'",
    )


def build_steps(args) -> list[Step]:
    from ..transform import Cast, Rename, Select, StripOptimizer, load_map_file, parse_map
    from .main import UsageError

    steps: list[Step] = []
    cmd = args.command
    if cmd == "rewrite" and not args.strip_optimizer:
        # Silently ignoring them (or stripping because of them) would surprise: say so instead.
        given = [
            flag
            for flag, on in (
                ("--drop-global-step", args.drop_global_step),
                ("--ema", args.ema != "keep"),
                ("--optimizer-name", args.optimizer_name),
            )
            if on
        ]
        if given:
            raise UsageError(
                f"{', '.join(given)}: meaningful only with --strip-optimizer (add it, or use `ckptio strip`)"
            )
    if cmd == "rewrite" and args.cast_only and not args.cast:
        raise UsageError("--cast-only needs --cast TYPE")
    if cmd == "rewrite":
        if args.include or args.exclude:
            steps.append(Select(tuple(args.include), tuple(args.exclude)))
        if args.include_glob or args.exclude_glob:
            steps.append(Select(tuple(args.include_glob), tuple(args.exclude_glob), glob=True))
    if cmd == "strip" or (cmd == "rewrite" and args.strip_optimizer):
        steps.append(
            StripOptimizer(
                keep_global_step=not args.drop_global_step, ema=args.ema, optimizer_names=tuple(args.optimizer_name)
            )
        )
    if cmd in ("rename", "rewrite"):
        rules = [parse_map(m) for m in args.map]
        if args.map_file:
            rules.extend(load_map_file(args.map_file))
        if rules:
            steps.append(Rename(tuple(rules), regex=args.regex, allow_unmatched=args.allow_unmatched))
        elif cmd == "rename":
            raise UsageError("rename needs --map OLD=NEW or --map-file FILE")
    if cmd == "rewrite" and args.cast:
        steps.append(Cast(args.cast, tuple(args.cast_only)))
    return steps


def run(args) -> int:
    from .main import UsageError

    steps = build_steps(args)
    check_shard_options(args)
    if args.jobs < 1:
        raise UsageError("--jobs must be >= 1")
    options = dict(
        num_shards=args.shards or 1,
        max_shard_size=args.max_shard_size,
        force=args.force,
        dry_run=args.dry_run,
        verify=not args.no_verify,
        fsync=args.fsync,
        make_latest=args.make_latest,
    )
    if getattr(args, "engine", None) and not args.dry_run and not args.out_dir:  # cli/engine.py
        from .engine import run_engine

        return run_engine(args, steps, options)
    if args.out_dir:
        if os.path.exists(args.out_dir) and not os.path.isdir(args.out_dir):
            raise UsageError(f"--out-dir {args.out_dir}: exists and is not a directory")
        return _run_batch(args, steps, options)
    if len(args.paths) != 2:
        raise UsageError(f"{args.command} takes IN OUT (or inputs with --out-dir DIR)")
    src, dst = args.paths
    check_output_prefix(dst)
    import ckptio

    from ..io import interrupts_deferred, take_late_interrupt
    from ..rewrite import rewrite

    with ckptio.open(src) as ckpt:
        # Its total is set by rewrite() once planned: the bytes written, not the input's size.
        bar = Progress(None, args.command, enabled=False if (args.quiet or args.json or args.dry_run) else None)
        try:
            report = rewrite(ckpt, dst, steps, progress=bar, **options)
        finally:
            bar.close()
    # The output is complete and in place: a Ctrl-C while reporting it must not turn that into exit 130.
    with interrupts_deferred():
        if args.json:
            json.dump(report.to_json(), sys.stdout)
            sys.stdout.write("\n")
        else:
            _print_report(report)
    take_late_interrupt()  # held back during the commit or the report: the run succeeded all the same
    return 0


def _print_report(report) -> None:
    from ..errors import show_name as shown  # crafted names must not forge lines or drive the terminal

    out = []
    if report.dry_run:
        for src, dst in report.kept:
            out.append(f"keep    {shown(src)}" + (f" -> {shown(dst)}" if dst != src else ""))
        for name in report.dropped:
            out.append(f"drop    {shown(name)}")
        for name in report.cast:
            out.append(f"cast    {shown(name)}")
        for name, dtype, reason in report.not_cast:
            out.append(f"uncast  {shown(name)} ({dtype}: {_LEFT[reason]})")
    if report.state_file == "left":
        state = os.path.join(os.path.dirname(report.dst) or ".", "checkpoint")
        out.append(
            f"note: {shown(state)} lists other checkpoints and was left as it was (--make-latest makes "
            "this output its latest)"
        )
    verb = "would write" if report.dry_run else "wrote"
    graph = f" and the object graph ({report.object_graph})" if report.object_graph else ""
    out.append(
        f"{verb} {shown(report.dst) if report.dst else 'nothing'}: kept {len(report.kept)} tensors "
        f"({len(report.renamed)} renamed, {len(report.cast)} cast{_left_summary(report)}){graph}, "
        f"dropped {len(report.dropped)}; {human(report.bytes_before)} -> {human(report.bytes_after)}"
        + ("" if report.dry_run else f" in {report.seconds:.2f} s")
    )
    sys.stdout.write("\n".join(out) + "\n")


# Why --cast left a tensor as it was (transform's reason codes).
_LEFT = {
    "not-floating": "not floating",
    "low-precision": "float8/float4, kept",
    "already-target": "already that dtype",
    "not-selected": "not matched by --cast-only",
}


def _left_summary(report) -> str:
    """', N left as they were: 2 not floating (int64, string), 1 not matched by --cast-only'."""
    if not report.not_cast:
        return ""
    groups: dict[str, set] = {}
    for _, dtype, reason in report.not_cast:
        groups.setdefault(reason, set()).add(dtype)
    counts = {r: sum(1 for x in report.not_cast if x[2] == r) for r in groups}
    parts = [f"{counts[r]} {_LEFT[r]} ({', '.join(sorted(groups[r]))})" for r in sorted(groups)]
    return f", {len(report.not_cast)} left as they were: {'; '.join(parts)}"


def _run_batch(args, steps, options) -> int:
    from ..batch import gather_inputs, output_prefixes, run_batch

    inputs = gather_inputs(args.paths)  # a bad input fails its own row below, not the whole batch
    if options.pop("dry_run"):
        return _dry_run_batch(args, steps, inputs, output_prefixes([i.path for i in inputs], args.out_dir))
    from ..errors import show_name as shown

    if getattr(args, "engine", None):  # one task per input on a cluster (cli/engine.py)
        from .engine import engine_map

        options["map_jobs"] = engine_map(args, len(inputs))
    outcomes = run_batch(
        inputs,
        args.out_dir,
        steps,
        jobs=args.jobs,
        resume=not args.no_resume,
        **options,
        on_done=None if args.quiet or args.json else lambda o: print(f"{o.status:<10} {shown(o.src)}", file=sys.stderr),
    )
    failed = [o for o in outcomes if o.status == "failed"]
    if args.json:
        from dataclasses import asdict

        json.dump([asdict(o) for o in outcomes], sys.stdout)
        sys.stdout.write("\n")
    else:
        _print_batch(args, outcomes)
    return 1 if failed else 0


def _print_batch(args, outcomes) -> None:
    from ..errors import show_name as shown

    width = min(max(len(shown(o.src)) for o in outcomes), 60)
    lines = [f"{'input':<{width}}  {'status':<10} {'kept':>5} {'dropped':>7} {'before':>10} {'after':>10} {'sec':>6}"]
    for o in outcomes:
        lines.append(
            f"{shown(o.src):<{width}}  {o.status:<10} {o.kept:>5} {o.dropped:>7} {human(o.bytes_before):>10} "
            f"{human(o.bytes_after):>10} {o.seconds:>6.2f}"
        )
        if o.message and o.status in ("failed", "unfinished"):
            lines.append(f"    {o.message if o.message.isprintable() else shown(o.message)}")
    counts = {k: sum(o.status == k for o in outcomes) for k in ("ok", "skipped", "unfinished", "failed")}
    lines.append(
        f"{len(outcomes)} inputs: {counts['ok']} written, {counts['skipped']} skipped, "
        + (f"{counts['unfinished']} unfinished saves skipped, " if counts["unfinished"] else "")
        + f"{counts['failed']} failed -> {shown(args.out_dir)}"
    )
    if outcomes.state_file == "left":
        lines.append(
            f"note: {shown(os.path.join(args.out_dir, 'checkpoint'))} lists other checkpoints and was left "
            "as it was (--make-latest adds these outputs to it)"
        )
    sys.stdout.write("\n".join(lines) + "\n")


def _dry_run_batch(args, steps, inputs, outputs) -> int:
    from ..errors import CkptioError
    from ..rewrite import rewrite

    reports, failed = [], 0
    for item, dst in zip(inputs, outputs):
        try:
            if item.error:
                raise CheckpointNotFoundError(item.error, path=item.path)
            # force: an existing output would be skipped or replaced, not refused; the input itself still is.
            reports.append(rewrite(item.path, dst, steps, dry_run=True, force=True))
        except CkptioError as exc:
            failed += 1
            print(f"ckptio: {exc.describe(flags=True)}", file=sys.stderr)
    if args.json:
        json.dump([r.to_json() for r in reports], sys.stdout)
        sys.stdout.write("\n")
    else:
        for r in reports:
            _print_report(r)
    return 1 if failed else 0
