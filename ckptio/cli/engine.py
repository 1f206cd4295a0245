"""`--engine ray[=ADDRESS]` on strip/rename/rewrite, fit and merge: one Ray task per output shard, or per batch input."""

from __future__ import annotations

import sys


def _engine_address(engine: str) -> str | None:
    from .main import UsageError

    name, _, address = engine.partition("=")
    if name != "ray":
        raise UsageError(f"--engine {engine}: the only engine is ray (ray or ray=ADDRESS)")
    return address or None


def run_engine(args, steps, options) -> int:
    """One checkpoint: plan it, run its shards as Ray tasks, commit; print what rewrite prints."""
    import json
    import time

    from ..engine_ray import run_plan_on_ray
    from ..plan import plan_rewrite
    from .common import Progress, check_output_prefix
    from .main import UsageError

    address = _engine_address(args.engine)
    if len(args.paths) != 2:
        raise UsageError(f"{args.command} takes IN OUT (or inputs with --out-dir DIR)")
    src, dst = args.paths
    check_output_prefix(dst)
    started = time.perf_counter()
    plan = plan_rewrite(
        src,
        dst,
        steps,
        num_shards=options["num_shards"],
        max_shard_size=options["max_shard_size"],
        force=options["force"],
        verify=options["verify"],
        fsync=options["fsync"],
        make_latest=options["make_latest"],
        command=args.command,
    )
    bar = Progress(
        sum(s["size"] for s in plan["shards"]),
        f"{args.command} (ray)",
        enabled=False if (args.quiet or args.json) else None,
    )
    try:
        out = run_plan_on_ray(plan, address, progress=bar)
    finally:
        bar.close()
    summary = {
        "src": plan["inputs"][0]["prefix"],
        "dst": out,
        "shards": plan["num_shards"],
        "kept": len(plan["kept"]),
        "dropped": len(plan["dropped"]),
        "bytes_after": sum(s["size"] for s in plan["shards"]),
        "seconds": round(time.perf_counter() - started, 3),
    }
    if args.json:
        json.dump(summary, sys.stdout)
        sys.stdout.write("\n")
    else:
        print(
            f"wrote {out}: kept {summary['kept']} tensors, dropped {summary['dropped']}, {summary['shards']} shards "
            f"as Ray tasks in {summary['seconds']:.2f} s"
        )
    return 0


def _on_ray(args, plan: dict, label: str) -> str:
    """Run a plan's shards as Ray tasks behind a progress bar, then commit; return OUT."""
    from ..engine_ray import run_plan_on_ray
    from .common import Progress

    address = _engine_address(args.engine)
    quiet = getattr(args, "quiet", False) or args.json  # fit has no --quiet: its table is its output
    bar = Progress(sum(s["size"] for s in plan["shards"]), f"{label} (ray)", enabled=False if quiet else None)
    try:
        return run_plan_on_ray(plan, address, progress=bar)
    finally:
        bar.close()


def run_fit_engine(args, kwargs: dict):
    """fit --engine ray: plan the fit, run its shards as Ray tasks, commit; return fit's report."""
    import time

    from ..plan_fit import plan_fit

    _engine_address(args.engine)  # a bad --engine is refused before any planning
    started = time.perf_counter()
    plan, report = plan_fit(args.src, args.template, args.out, **kwargs)
    _on_ray(args, plan, "fit")
    report.seconds = time.perf_counter() - started
    return report


def run_merge_engine(args, inputs, dst, kwargs: dict):
    """merge --engine ray: plan the merge, run its shards as Ray tasks, commit; return merge's report."""
    import time

    from ..plan_merge import plan_merge

    _engine_address(args.engine)
    started = time.perf_counter()
    plan, report = plan_merge(inputs, dst, num_shards=args.shards or 1, max_shard_size=args.max_shard_size, **kwargs)
    _on_ray(args, plan, "merge")
    report.bytes_read = None  # read by the tasks, not counted here
    report.seconds = time.perf_counter() - started
    return report


def engine_map(args, count: int):
    """Batch mode: a map_jobs for batch.run_batch running one Ray task per input."""
    from ..engine_ray import map_on_ray
    from .common import Progress

    address = _engine_address(args.engine)
    bar = Progress(count, "batch (ray)", enabled=False if (args.quiet or args.json) else None)
    inner = map_on_ray(address, progress=lambda n: bar(n))

    def map_jobs(fn, jobs):
        try:
            return inner(fn, jobs)
        finally:
            bar.close()

    return map_jobs
