"""Speed-up of a planned rewrite run as 2 tasks against 1 task, on this machine.

    PYTHONPATH=$PWD python tools/bench_plan.py [--mib 512] [--shards 8] [--repeat 5] [--workload strip|cast]

Writes a synthetic TF1-style Adam checkpoint (3 source shards, --mib MiB of weights plus as much
Adam state), plans `strip` (copy: bytes move through copy_file_range with crc32c checks) or
`rewrite --strip-optimizer --cast bfloat16` (cast: every element decoded, converted and
re-encoded, CPU-bound) into --shards output shards, then times, --repeat times each and
alternating: `run-plan --task 0/1` (one process), and `run-plan --task 0/2` + `--task 1/2` as two
concurrent processes. Commit is timed separately (it only renames and writes the index). The
source is read once first, so every run reads from the page cache: the numbers are CPU, memory
and disk-write bound, not network bound. Prints medians and the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make_source(prefix: str, mib: int) -> None:
    import numpy as np

    from ckptio.bundle.writer import BundleWriter

    rng = np.random.default_rng(0)
    rows = 1024
    n = max(1, mib // 4)  # 4 MiB float32 kernels
    with BundleWriter(prefix, 3) as w:
        for i in range(n):
            kernel = rng.standard_normal((rows, 1024), dtype=np.float32)
            w.add_array(f"layer_{i}/kernel", kernel, shard=i % 3)
            w.add_array(f"layer_{i}/kernel/Adam", kernel, shard=(i + 1) % 3)
        w.add_array("global_step", np.int64(1))
        w.finish()


def ckptio(*argv) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen(
        [sys.executable, "-m", "ckptio", *map(str, argv)],
        env=env,
        cwd=str(ROOT),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_all(procs) -> None:
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"ckptio failed: {err.strip()}")


def _child_cpu() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed_run(plan: Path, tasks: int) -> tuple[float, float, float]:
    """Wall seconds for the tasks (run concurrently), their CPU seconds, and the commit's wall seconds."""
    out_dir = Path(json.loads(plan.read_text())["out"]).parent
    cpu, started = _child_cpu(), time.perf_counter()
    wait_all([ckptio("run-plan", plan, "--task", f"{i}/{tasks}", "-q") for i in range(tasks)])
    run, cpu = time.perf_counter() - started, _child_cpu() - cpu
    started = time.perf_counter()
    wait_all([ckptio("commit", plan, "-q")])
    commit = time.perf_counter() - started
    shutil.rmtree(out_dir)
    return run, cpu, commit


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=512, help="MiB of weights (as much Adam state again)")
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--workload", choices=("strip", "cast"), default="strip")
    ap.add_argument("--dir", help="work directory (default: a temp dir, removed at the end)")
    args = ap.parse_args()
    work = Path(args.dir or tempfile.mkdtemp(prefix="bench_plan_"))
    try:
        src = work / "src" / "model.ckpt"
        if not Path(str(src) + ".index").exists():
            make_source(str(src), args.mib)
        for f in src.parent.iterdir():  # warm the page cache: every run then reads from memory
            f.read_bytes()
        plan = work / "plan.json"
        what = ["strip"] if args.workload == "strip" else ["rewrite", "--strip-optimizer", "--cast", "bfloat16"]
        wait_all(
            [ckptio("plan", *what, src, work / "out" / "model.ckpt", "--shards", args.shards, "--out-plan", plan, "-q")]
        )
        load_before = os.getloadavg()
        times, cpus, commits = {1: [], 2: []}, {1: [], 2: []}, []
        for _ in range(args.repeat):
            for tasks in (1, 2):  # alternate, so a change in the machine's load hits both alike
                run, cpu, commit = timed_run(plan, tasks)
                times[tasks].append(run)
                cpus[tasks].append(cpu)
                commits.append(commit)
        load_after = os.getloadavg()
        total = sum(s["size"] for s in json.loads(plan.read_text())["shards"])
        m1, m2 = statistics.median(times[1]), statistics.median(times[2])
        print(
            json.dumps(
                {
                    "workload": args.workload,
                    "bytes_written": total,
                    "shards": args.shards,
                    "repeat": args.repeat,
                    "cpus": os.cpu_count(),
                    "loadavg_before": [round(x, 2) for x in load_before],
                    "loadavg_after": [round(x, 2) for x in load_after],
                    "one_task_s": [round(t, 3) for t in times[1]],
                    "two_tasks_s": [round(t, 3) for t in times[2]],
                    "median_one_task_s": round(m1, 3),
                    "median_two_tasks_s": round(m2, 3),
                    "median_commit_s": round(statistics.median(commits), 3),
                    "median_cpu_one_task_s": round(statistics.median(cpus[1]), 3),
                    "median_cpu_two_tasks_s": round(statistics.median(cpus[2]), 3),
                    "speedup": round(m1 / m2, 2),
                    "one_task_MiB_s": round(total / m1 / 2**20, 1),
                    "two_tasks_MiB_s": round(total / m2 / 2**20, 1),
                },
                indent=1,
            )
        )
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
