"""A planned job run as 1 task and as 2 concurrent tasks on this machine, and a model of N machines.

    PYTHONPATH=$PWD python tools/bench_plan.py [--mib 512] [--shards 8] [--repeat 3]
        [--workload strip|cast|merge] [--cache warm|cold|both] [--nic-gbps 10] [--store-gbps 100]

Writes a synthetic TF1-style Adam checkpoint (3 source shards, --mib MiB of weights plus as much
Adam state; merge: two of them), plans `strip` (copy: copy_file_range plus a crc32c check on a
second thread), `rewrite --strip-optimizer --cast bfloat16` (cast: every element decoded and
re-encoded) or `merge` (mean of two: both inputs read, combined in float64 on up to 4 threads)
into --shards output shards, then times, --repeat times each and alternating, one
`run-plan --task 0/1` against two concurrent `run-plan --task i/2`.

Why two tasks on one machine may gain nothing, and what this prints to tell which it is:
  - cores: one task already runs a second thread (strip's checker, merge's combiners). Each task
    reports its own wall and CPU seconds; `cores_per_task` = CPU / wall of the one-task run. If it is
    near the cores the machine gives us, a second task has nothing left to run on.
  - load: other processes take the cores. `spare_cores` runs a pure-Python spinner in 1 and in 2
    processes for a fixed time just before the runs: 2 x (work per spinner with 2) / (work with 1).
    2.0 on an idle 2-core machine; near 1.0 when the machine is busy.
  - one disk and one page cache: both tasks read the same source files and write to one disk.
    `--cache cold` evicts the source's pages (posix_fadvise DONTNEED, our files only) before each
    run, so the reads come from the disk; `warm` reads them from memory. Each task's ru_inblock /
    ru_oublock (512-byte blocks read from / written to the block device) show which one happened.
Commit (renames and the merged index) and plan are timed separately.

The model of N machines (printed last) takes the bytes from the plan (read from the inputs, written
to the output), the one-task rate measured here in CPU terms (bytes per CPU second x the cores a
machine has, --machine-cores), and per-machine network and aggregate storage bandwidth (--nic-gbps,
--store-gbps): each byte read crosses a machine's network card once and each byte written once
more, with inputs and output on an object store or a shared filesystem. Ray moves only the plan
through its object store (one ray.put), never tensor bytes, so the object store is no limit here.
    data phase(N) = max(ceil(shards / N) x shard time on one machine, bytes moved / store bandwidth)
    T(N) = plan + task start + data phase(N) + commit
A real cluster adds scheduling time (Ray: tens of ms a task; Slurm: seconds) and the skew of the
slowest shard; the shards of a plan are cut to similar sizes, so ceil(shards / N) is the bound.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# A task: ckptio's own main() under a stopwatch; prints {wall, cpu, inblock, oublock, start} as JSON.
TASK = """
import json, resource, sys, time
start = time.perf_counter()
from ckptio.cli.main import main
t0 = time.perf_counter()
code = main(sys.argv[1:])
r = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"code": code, "wall": time.perf_counter() - t0, "import": t0 - start,
                  "cpu": r.ru_utime + r.ru_stime, "inblock": r.ru_inblock, "oublock": r.ru_oublock}))
"""

SPIN = (
    "import time\nn, end = 0, time.perf_counter() + {seconds}\nwhile time.perf_counter() < end:\n    n += 1\nprint(n)\n"
)


def make_source(prefix: str, mib: int, seed: int = 0) -> None:
    import numpy as np

    from ckptio.bundle.writer import BundleWriter

    rng = np.random.default_rng(seed)
    n = max(1, mib // 4)  # 4 MiB float32 kernels
    with BundleWriter(prefix, 3) as w:
        for i in range(n):
            kernel = rng.standard_normal((1024, 1024), dtype=np.float32)
            w.add_array(f"layer_{i}/kernel", kernel, shard=i % 3)
            w.add_array(f"layer_{i}/kernel/Adam", kernel, shard=(i + 1) % 3)
        w.add_array("global_step", np.int64(1))
        w.finish()


PYCACHE: str | None = None  # set by main(): compiled modules kept in the work directory


def _env() -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # With PYTHONDONTWRITEBYTECODE every task recompiles ckptio (about a second on a loaded 2-core
    # machine): a cost of this sandbox, not of an installed ckptio, so the tasks keep their .pyc files.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    if PYCACHE:
        env["PYTHONPYCACHEPREFIX"] = PYCACHE
    return env


def ckptio(*argv) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", TASK, *map(str, argv)],
        env=_env(),
        cwd=str(ROOT),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_all(procs) -> list[dict]:
    out = []
    for p in procs:
        stdout, err = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"ckptio failed: {err.strip()}")
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def spare_cores(seconds: float = 1.0) -> float:
    """How many cores this machine gives us now: work of two spinners against one, times 2."""

    def spin(k: int) -> float:
        procs = [
            subprocess.Popen([sys.executable, "-c", SPIN.format(seconds=seconds)], stdout=subprocess.PIPE, text=True)
            for _ in range(k)
        ]
        return sum(int(p.communicate()[0]) for p in procs) / k

    one, two = spin(1), spin(2)
    return round(2 * two / one, 2)


def evict(paths) -> None:
    """Drop these files' clean pages from the page cache (only ours: other processes' stay)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def warm(paths) -> None:
    for path in paths:
        with open(path, "rb") as f:
            while f.read(16 << 20):
                pass


def timed_run(plan: Path, tasks: int, cache: str, inputs: list[Path]) -> dict:
    """One run of the plan as `tasks` concurrent tasks from a warm or cold cache, then commit."""
    out_dir = Path(json.loads(plan.read_text())["out"]).parent
    (evict if cache == "cold" else warm)(inputs)
    started = time.perf_counter()
    per_task = wait_all([ckptio("run-plan", plan, "--task", f"{i}/{tasks}", "-q") for i in range(tasks)])
    wall = time.perf_counter() - started
    started = time.perf_counter()
    wait_all([ckptio("commit", plan, "-q")])
    commit = time.perf_counter() - started
    shutil.rmtree(out_dir)
    return {"wall": wall, "commit": commit, "tasks": per_task}


def plan_bytes(plan: dict) -> tuple[int, int]:
    """(bytes read from the inputs, bytes written) by the plan's tasks."""
    read = 0
    for shard in plan["shards"]:
        for step in shard["pieces"]:
            if step["op"] == "combine":
                read += sum(s[4] for s in step["sources"])
            elif step["op"] == "build":
                read += step["size"]  # about: the source rows it takes
            else:
                read += step["src_size"]
    return read, sum(s["size"] for s in plan["shards"])


def model(args, plan: dict, one: dict, plan_s: float, commit_s: float) -> list[dict]:
    """Time for N machines from the measured one-task run and the assumed bandwidths (see the docstring)."""
    read, written = plan_bytes(plan)
    shards = plan["num_shards"]
    cpu_rate = written / max(one["cpu"], 1e-9)  # output bytes per CPU second of one task
    machine_rate = cpu_rate * args.machine_cores / max(one["cores_per_task"], 1.0)  # tasks fill its cores
    nic = args.nic_gbps * 1e9 / 8
    store = args.store_gbps * 1e9 / 8
    # Per machine: its share of output bytes, and the read bytes that come with them, through one NIC.
    per_out_byte_on_nic = (read + written) / written
    rate = min(machine_rate, nic / per_out_byte_on_nic)
    shard_s = written / shards / rate
    rows = []
    for n in (1, 2, 4, 8, 16, 32, 64, 128):
        data = max(math.ceil(shards / n) * shard_s, (read + written) / store)
        total = plan_s + one["start"] + data + commit_s
        rows.append({"machines": n, "data_s": round(data, 2), "total_s": round(total, 2)})
    base = rows[0]["total_s"]
    for r in rows:
        r["speedup"] = round(base / r["total_s"], 2)
    return rows


def summarise(runs: list[dict]) -> dict:
    walls = [r["wall"] for r in runs]
    tasks = [t for r in runs for t in r["tasks"]]
    cpu = statistics.median(sum(t["cpu"] for t in r["tasks"]) for r in runs)
    return {
        "median_wall_s": round(statistics.median(walls), 3),
        "walls_s": [round(w, 3) for w in walls],
        "median_task_wall_s": round(statistics.median(t["wall"] for t in tasks), 3),
        "median_cpu_s": round(cpu, 3),
        "cores_per_task": round(statistics.median(t["cpu"] / max(t["wall"], 1e-9) for t in tasks), 2),
        "median_start_s": round(statistics.median(t["import"] for t in tasks), 3),
        "median_read_MiB_from_disk": round(
            statistics.median(sum(t["inblock"] for t in r["tasks"]) for r in runs) / 2048, 1
        ),
        "median_commit_s": round(statistics.median(r["commit"] for r in runs), 3),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=512, help="MiB of weights (as much Adam state again)")
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workload", choices=("strip", "cast", "merge"), default="strip")
    ap.add_argument("--cache", choices=("warm", "cold", "both"), default="both")
    ap.add_argument("--nic-gbps", type=float, default=10.0, help="model: one machine's network, Gbit/s")
    ap.add_argument("--store-gbps", type=float, default=100.0, help="model: the storage's aggregate, Gbit/s")
    ap.add_argument("--machine-cores", type=int, default=8, help="model: cores of one cluster machine")
    ap.add_argument("--dir", help="work directory (default: a temp dir, removed at the end)")
    args = ap.parse_args()
    work = Path(args.dir or tempfile.mkdtemp(prefix="bench_plan_"))
    global PYCACHE
    PYCACHE = str(work / "pycache")
    try:
        srcs = [work / "src" / "model.ckpt"] + ([work / "src2" / "model.ckpt"] if args.workload == "merge" else [])
        for seed, src in enumerate(srcs):
            if not Path(str(src) + ".index").exists():
                make_source(str(src), args.mib, seed)
        inputs = [f for src in srcs for f in src.parent.iterdir() if f.name.startswith("model.ckpt")]
        plan = work / "plan.json"
        out = work / "out" / "model.ckpt"
        what = {
            "strip": ["strip", srcs[0], out],
            "cast": ["rewrite", srcs[0], out, "--strip-optimizer", "--cast", "bfloat16"],
            "merge": ["merge", *srcs, out],
        }[args.workload]
        started = time.perf_counter()
        wait_all([ckptio("plan", *what, "--shards", args.shards, "--out-plan", plan, "-q")])
        plan_s = time.perf_counter() - started
        body = json.loads(plan.read_text())
        caches = ("warm", "cold") if args.cache == "both" else (args.cache,)
        result = {
            "workload": args.workload,
            "shards": body["num_shards"],
            "bytes_read": plan_bytes(body)[0],
            "bytes_written": plan_bytes(body)[1],
            "repeat": args.repeat,
            "cpus": os.cpu_count(),
            "loadavg_before": [round(x, 2) for x in os.getloadavg()],
            "spare_cores_before": spare_cores(),
            "plan_s": round(plan_s, 3),
        }
        runs = {(c, n): [] for c in caches for n in (1, 2)}
        for _ in range(args.repeat):
            for cache in caches:
                for tasks in (1, 2):  # alternate, so a change in the machine's load hits both alike
                    runs[cache, tasks].append(timed_run(plan, tasks, cache, inputs))
        result["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
        result["spare_cores_after"] = spare_cores()
        for cache in caches:
            one, two = summarise(runs[cache, 1]), summarise(runs[cache, 2])
            result[cache] = {
                "one_task": one,
                "two_tasks": two,
                "speedup": round(one["median_wall_s"] / two["median_wall_s"], 2),
                "one_task_MiB_s": round(result["bytes_written"] / one["median_wall_s"] / 2**20, 1),
                "two_tasks_MiB_s": round(result["bytes_written"] / two["median_wall_s"] / 2**20, 1),
            }
        one = summarise(runs[caches[0], 1])
        measured = {"cpu": one["median_cpu_s"], "cores_per_task": one["cores_per_task"], "start": one["median_start_s"]}
        result["model"] = {
            "assumed": {"nic_gbps": args.nic_gbps, "store_gbps": args.store_gbps, "machine_cores": args.machine_cores},
            "from": f"{caches[0]} one-task run",
            "rows": model(args, body, measured, plan_s, one["median_commit_s"]),
        }
        print(json.dumps(result, indent=1))
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
