"""ckptio plan / run-plan / commit: one rewrite split into tasks that any runner can execute.

ckptio plan strip IN OUT --shards 8 --out-plan PLAN.json   plan only; nothing written to OUT
ckptio plan fit SRC --template T OUT --shards 8 --out-plan PLAN.json
ckptio plan merge A B C OUT --method mean --shards 8 --out-plan PLAN.json
ckptio run-plan PLAN.json --task I/N                        write shards I, I+N, I+2N, ...
ckptio commit PLAN.json                                     index, state file, clean up
"""

from __future__ import annotations

import sys

PLANNABLE = ("strip", "rename", "rewrite", "fit", "merge")


def add_arguments(name, p) -> None:
    if name == "plan":
        p.usage = (
            "%(prog)s {strip,rename,rewrite,fit,merge} [that command's arguments and options] --out-plan PLAN.json"
        )
        p.add_argument(
            "what", metavar="COMMAND", help="strip, rename, rewrite, fit or merge, followed by its arguments"
        )
        p.add_argument("rest", nargs="*", metavar="ARG", help="the command's arguments and options")
        return
    p.add_argument("plan", metavar="PLAN.json", help="a plan written by `ckptio plan`")
    if name == "run-plan":
        p.add_argument(
            "--task",
            default="0/1",
            metavar="I/N",
            help="run the shards whose number is I mod N (0 <= I < N; default 0/1: all)",
        )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def parse(command, parser, argv):
    """`plan` takes another command's whole syntax after it; the others parse as usual."""
    if command != "plan":
        return parser.parse_intermixed_args(argv)
    if not argv or argv[0].startswith("-"):
        return parser.parse_args(argv)  # --help, or the usage error for a missing COMMAND
    what = argv[0]
    if what not in PLANNABLE:
        parser.error(f"argument COMMAND: invalid choice: {what!r} (choose from {', '.join(PLANNABLE)})")
    from . import fit, merge, rewrite
    from .common import parse_size
    from .main import _Parser

    sub = _Parser(prog=f"ckptio plan {what}", description=f"plan `ckptio {what}` as independent tasks")
    if what in ("fit", "merge"):
        {"fit": fit, "merge": merge}[what].add_arguments(f"plan-{what}", sub)  # without --engine
    else:
        rewrite.add_arguments(what, sub)
    if what == "merge":  # merge itself writes one shard; a plan is worth it with several
        sub.add_argument("--shards", type=int, metavar="N", help="number of output data shards (default 1)")
        sub.add_argument(
            "--max-shard-size", type=parse_size, metavar="SIZE", help="start a new shard past SIZE (e.g. 2G)"
        )
    if what == "fit":
        sub.add_argument("-q", "--quiet", action="store_true", help="print nothing")
    sub.add_argument("--out-plan", required=True, metavar="PLAN.json", help="where to write the plan")
    args = sub.parse_intermixed_args(argv[1:])
    args.planned = what
    return args


def run(args) -> int:
    if args.command == "plan":
        return _plan(args)
    from ..plan import load_plan

    plan = load_plan(args.plan)
    if args.command == "run-plan":
        return _run_plan(args, plan)
    from ..plan import commit_plan

    out = commit_plan(plan)
    if not args.quiet:
        print(f"committed {out}: {plan['num_shards']} shards")
    return 0


def _plan(args) -> int:
    from ..plan import save_plan

    if args.planned == "fit":
        plan = _plan_fit(args)
    elif args.planned == "merge":
        plan = _plan_merge(args)
    else:
        plan = _plan_rewrite(args)
    save_plan(plan, args.out_plan)
    if not args.quiet:
        from .common import human

        total = sum(s["size"] for s in plan["shards"])
        n = plan["num_shards"]
        print(
            f"planned {plan['out']}: {n} shards, {human(total)}, {len(plan['kept'])} tensors from the "
            f"input{'s' if args.planned == 'merge' else ''}, {len(plan['dropped'])} left out; now run "
            f"`ckptio run-plan {args.out_plan} --task I/N` for I in 0..N-1 (N <= {n}), then "
            f"`ckptio commit {args.out_plan}`"
        )
    return 0


def _refuse(args, flags) -> None:
    from .main import UsageError

    given = [f for f, on in flags if on]
    if given:
        raise UsageError(f"plan {args.planned}: {', '.join(given)} cannot be planned; run the command itself")


def _plan_fit(args) -> dict:
    from ..plan_fit import plan_fit
    from . import fit

    _refuse(args, [("--dry-run", args.dry_run), ("--json", args.json)])
    plan, _ = plan_fit(args.src, args.template, args.out, **fit.options(args))
    return plan


def _plan_merge(args) -> dict:
    from ..plan_merge import plan_merge
    from .common import check_output_prefix, check_shard_options
    from .main import UsageError
    from .merge import _weights

    _refuse(args, [("--dry-run", args.dry_run), ("--json", args.json)])
    check_shard_options(args)
    if len(args.paths) < 2:
        raise UsageError("plan merge takes CKPT [CKPT ...] OUT (or --last N DIR OUT)")
    *inputs, dst = args.paths
    check_output_prefix(dst)
    plan, _ = plan_merge(
        inputs,
        dst,
        method=args.method,
        weights=_weights(args.weights),
        decay=args.decay,
        base=args.base,
        last=args.last,
        include=args.include,
        exclude=args.exclude,
        keep_optimizer=args.keep_optimizer,
        num_shards=args.shards or 1,
        max_shard_size=args.max_shard_size,
        force=args.force,
        fsync=args.fsync,
    )
    return plan


def _plan_rewrite(args) -> dict:
    from ..plan import plan_rewrite
    from .common import check_output_prefix, check_shard_options
    from .main import UsageError
    from .rewrite import build_steps

    args.command = args.planned  # build_steps reads the rewrite command's name
    _refuse(
        args,
        [
            ("--out-dir", args.out_dir),
            ("--dry-run", args.dry_run),
            ("--jobs", args.jobs != 1),
            ("--no-resume", args.no_resume),
            ("--engine", getattr(args, "engine", None)),
        ],
    )
    steps = build_steps(args)
    check_shard_options(args)
    if len(args.paths) != 2:
        raise UsageError(f"plan {args.planned} takes IN OUT")
    src, dst = args.paths
    check_output_prefix(dst)
    return plan_rewrite(
        src,
        dst,
        steps,
        num_shards=args.shards or 1,
        max_shard_size=args.max_shard_size,
        force=args.force,
        verify=not args.no_verify,
        fsync=args.fsync,
        make_latest=args.make_latest,
        command=args.planned,
    )


def _run_plan(args, plan) -> int:
    from ..plan import run_plan
    from .common import Progress
    from .main import UsageError

    try:
        task, of = (int(x) for x in args.task.split("/"))
    except ValueError:
        raise UsageError(f"--task {args.task}: expected I/N, e.g. 0/4") from None
    if of < 1 or not 0 <= task < of:
        raise UsageError(f"--task {args.task}: need N >= 1 and 0 <= I < N")
    mine = [s for s in plan["shards"] if s["shard"] % of == task]
    bar = Progress(sum(s["size"] for s in mine), f"task {task}/{of}", enabled=False if args.quiet else None)
    try:
        written = run_plan(plan, task, of, progress=bar)
    finally:
        bar.close()
    if not args.quiet:
        print(
            f"task {task}/{of}: wrote {len(written)} shards, {len(mine) - len(written)} already done", file=sys.stderr
        )
    return 0
