"""ckptio plan / run-plan / commit: one rewrite split into tasks that any runner can execute.

ckptio plan strip IN OUT --shards 8 --out-plan PLAN.json   plan only; nothing written to OUT
ckptio run-plan PLAN.json --task I/N                        write shards I, I+N, I+2N, ...
ckptio commit PLAN.json                                     index, state file, clean up
"""

from __future__ import annotations

import sys

PLANNABLE = ("strip", "rename", "rewrite")
LATER = ("fit", "merge")


def add_arguments(name, p) -> None:
    if name == "plan":
        p.usage = "%(prog)s {strip,rename,rewrite} IN OUT [that command's options] --out-plan PLAN.json"
        p.add_argument("what", metavar="COMMAND", help="strip, rename or rewrite, followed by its arguments")
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
    if what in LATER:
        parser.exit(2, f"ckptio: error: plan {what}: not supported yet (plans support {', '.join(PLANNABLE)})\n")
    if what not in PLANNABLE:
        parser.error(f"argument COMMAND: invalid choice: {what!r} (choose from {', '.join(PLANNABLE)})")
    from . import rewrite
    from .main import _Parser

    sub = _Parser(prog=f"ckptio plan {what}", description=f"plan `ckptio {what}` as independent tasks")
    rewrite.add_arguments(what, sub)
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
    from ..plan import plan_rewrite, save_plan
    from .common import check_output_prefix, check_shard_options, human
    from .main import UsageError
    from .rewrite import build_steps

    args.command = args.planned  # build_steps reads the rewrite command's name
    given = [
        f
        for f, on in (
            ("--out-dir", args.out_dir),
            ("--dry-run", args.dry_run),
            ("--jobs", args.jobs != 1),
            ("--no-resume", args.no_resume),
            ("--engine", getattr(args, "engine", None)),
        )
        if on
    ]
    if given:
        raise UsageError(f"plan {args.planned}: {', '.join(given)} cannot be planned; run the command itself")
    steps = build_steps(args)
    check_shard_options(args)
    if len(args.paths) != 2:
        raise UsageError(f"plan {args.planned} takes IN OUT")
    src, dst = args.paths
    check_output_prefix(dst)
    plan = plan_rewrite(
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
    save_plan(plan, args.out_plan)
    if not args.quiet:
        total = sum(s["size"] for s in plan["shards"])
        n = plan["num_shards"]
        print(
            f"planned {plan['out']}: {n} shards, {human(total)}, kept {len(plan['kept'])} tensors, dropped "
            f"{len(plan['dropped'])}; now run `ckptio run-plan {args.out_plan} --task I/N` for I in 0..N-1 "
            f"(N <= {n}), then `ckptio commit {args.out_plan}`"
        )
    return 0


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
