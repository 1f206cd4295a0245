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
    reports its own wall and CPU seconds; `cores_per_task` = CPU / wall. Near the cores the machine
    gives us: CPU-bound, a second task has nothing left to run on. Far below 1: the task waits
    (for the disk, or for the kernel's writeback of the output's dirty pages), and a second task
    gains only if what it waits for has capacity to spare.
  - load: other processes take the cores. `spare_cores` runs a pure-Python spinner in 1 and in 2
    processes for a fixed time before and after the runs: 2 x (work per spinner with 2) / (work
    with 1). 2.0 on an idle 2-core machine; near 1.0 when the machine is busy.
  - one disk and one page cache: both tasks read the same source files and write to one disk.
    `--cache cold` evicts the source's pages (posix_fadvise DONTNEED, our files only) before each
    run, so the reads come from the disk; `warm` reads them from memory. Each task's ru_inblock /
    ru_oublock (512-byte blocks read from / written to the block device) show which one happened.
  - the disk's write speed: `--out-dir /dev/shm` puts the output (and its staging) in memory, so
    what remains is CPU and memory bandwidth.
  - fixed costs: `start` (interpreter and imports, launch to main()), the input check, plan and
    commit (main() alone, in their own processes) do not shrink with more tasks.

The model of N machines (printed last) scales the job to --model-gib GiB written in --model-shards
shards, with the read/write ratio of this plan. A machine runs one task per core (--machine-cores)
at the output rate per CPU second measured here, and each byte read and each byte written crosses
its network card once (--nic-gbps; inputs and output on an object store or a shared filesystem);
all machines share the storage's aggregate bandwidth (--store-gbps). Ray moves only the plan
through its object store (one ray.put), never tensor bytes, so the object store is no limit here.
    k(N) = ceil(shards / N), the busiest machine's shards
    data(N) = max(k x shard bytes / min(k x CPU rate, NIC rate for output bytes), bytes moved / store)
    T(N) = plan + task start + data(N) + commit        (plan and commit as measured here)
A real cluster adds scheduling time (Ray: tens of ms a task; Slurm: seconds) and the slowest shard's
skew; plan and commit grow with the number of tensors and shards, not with bytes.
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
# "start": from the launch (the parent's clock, passed in the environment) to main(): interpreter and imports.
TASK = """
import json, os, resource, sys, time
from ckptio.cli.main import main
t0, start = time.perf_counter(), time.time() - float(os.environ["BENCH_LAUNCHED"])
code = main(sys.argv[1:])
r = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"code": code, "wall": time.perf_counter() - t0, "start": start,
                  "cpu": r.ru_utime + r.ru_stime, "inblock": r.ru_inblock, "oublock": r.ru_oublock}))
"""

SPIN = (
    "import time\nn, end = 0, time.perf_counter() + {seconds}\nwhile time.perf_counter() < end:\n    n += 1\n"
    "print(n, time.process_time() / {seconds})\n"
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
        env=dict(_env(), BENCH_LAUNCHED=repr(time.time())),
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


def spare_cores(seconds: float = 1.0) -> dict:
    """What the machine gives us now: the CPU share of one spinning process, and how many cores two get.

    cores: 2 x (work per spinner with two) / (work with one); 2.0 on an idle 2-core machine, near
    1.0 when other jobs (or a cgroup's CPU quota) leave us one core's worth whatever we start."""

    def spin(k: int) -> tuple[float, float]:
        procs = [
            subprocess.Popen([sys.executable, "-c", SPIN.format(seconds=seconds)], stdout=subprocess.PIPE, text=True)
            for _ in range(k)
        ]
        out = [p.communicate()[0].split() for p in procs]
        return sum(int(n) for n, _ in out) / k, sum(float(c) for _, c in out) / k

    (one, share), (two, _) = spin(1), spin(2)
    return {"cores": round(2 * two / one, 2), "one_process_cpu_share": round(share, 2)}


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
    commit = wait_all([ckptio("commit", plan, "-q")])[0]["wall"]
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


def model(args, plan: dict, one: dict, plan_s: float, commit_s: float) -> dict:
    """Time for N machines: the plan's read/write ratio and the measured rates, scaled to --model-gib."""
    read, written = plan_bytes(plan)
    out_bytes = args.model_gib * 2**30
    in_bytes = out_bytes * read / written
    shards = args.model_shards
    cpu_rate = written / max(one["cpu"], 1e-9)  # output bytes per CPU second of one task, measured here
    machine_cpu = cpu_rate * args.machine_cores  # one task per core
    nic = args.nic_gbps * 1e9 / 8  # each byte read and each byte written crosses the machine's NIC once
    store = args.store_gbps * 1e9 / 8
    nic_out = nic * out_bytes / (in_bytes + out_bytes)  # output bytes per second one NIC carries
    rows = []
    for n in (1, 2, 4, 8, 16, 32, 64, 128):
        k = math.ceil(shards / n)  # shards on the busiest machine, run min(k, cores) at a time
        rate = min(cpu_rate * min(k, args.machine_cores), nic_out)
        data = max(k * out_bytes / shards / rate, (in_bytes + out_bytes) / store)
        total = plan_s + one["start"] + data + commit_s
        rows.append({"machines": n, "data_s": round(data, 1), "total_s": round(total, 1)})
    for r in rows:
        r["speedup"] = round(rows[0]["total_s"] / r["total_s"], 2)
    return {
        "assumed": {
            "written_GiB": args.model_gib,
            "read_GiB": round(in_bytes / 2**30, 1),
            "shards": shards,
            "nic_gbps": args.nic_gbps,
            "store_gbps": args.store_gbps,
            "machine_cores": args.machine_cores,
        },
        "measured_here": {
            "output_MiB_per_cpu_s": round(cpu_rate / 2**20, 1),
            "plan_s": round(plan_s, 2),
            "commit_s": round(commit_s, 2),
            "task_start_s": round(one["start"], 2),
        },
        "machine_MiB_s": round(min(machine_cpu, nic_out) / 2**20, 1),
        "machine_limited_by": "cpu" if machine_cpu < nic_out else "network",
        "rows": rows,
    }


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
        "median_start_s": round(statistics.median(t["start"] for t in tasks), 3),
        "median_read_MiB_from_disk": round(
            statistics.median(sum(t["inblock"] for t in r["tasks"]) for r in runs) / 2048, 1
        ),
        "median_written_MiB_to_disk": round(
            statistics.median(sum(t["oublock"] for t in r["tasks"]) for r in runs) / 2048, 1
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
    ap.add_argument("--model-gib", type=float, default=330.0, help="model: GiB written (read scales as measured)")
    ap.add_argument("--model-shards", type=int, default=256, help="model: output shards")
    ap.add_argument("--dir", help="work directory (default: a temp dir, removed at the end)")
    ap.add_argument(
        "--out-dir",
        help="where the output and its staging go (e.g. /dev/shm: memory, so the disk's write speed "
        "is out of the measurement); default: beside the source",
    )
    args = ap.parse_args()
    work = Path(args.dir or tempfile.mkdtemp(prefix="bench_plan_"))
    global PYCACHE
    PYCACHE = str(work / "pycache")
    out_root = None
    try:
        srcs = [work / "src" / "model.ckpt"] + ([work / "src2" / "model.ckpt"] if args.workload == "merge" else [])
        for seed, src in enumerate(srcs):
            if not Path(str(src) + ".index").exists():
                make_source(str(src), args.mib, seed)
        inputs = [f for src in srcs for f in src.parent.iterdir() if f.name.startswith("model.ckpt")]
        plan = work / "plan.json"
        out_root = Path(tempfile.mkdtemp(prefix="bench_plan_out_", dir=args.out_dir)) if args.out_dir else work
        out = out_root / "out" / "model.ckpt"
        what = {
            "strip": ["strip", srcs[0], out],
            "cast": ["rewrite", srcs[0], out, "--strip-optimizer", "--cast", "bfloat16"],
            "merge": ["merge", *srcs, out],
        }[args.workload]
        plan_s = wait_all([ckptio("plan", *what, "--shards", args.shards, "--out-plan", plan, "-q")])[0]["wall"]
        body = json.loads(plan.read_text())
        caches = ("warm", "cold") if args.cache == "both" else (args.cache,)
        result = {
            "workload": args.workload,
            "out_dir": args.out_dir or "beside the source",
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
        measured = {"cpu": one["median_cpu_s"], "start": one["median_start_s"]}
        result["model"] = model(args, body, measured, plan_s, one["median_commit_s"])
        print(json.dumps(result, indent=1))
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)
        if args.out_dir and out_root is not None:
            shutil.rmtree(out_root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
