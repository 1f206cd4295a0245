"""Benchmark `ckptio merge` against reading its inputs once (`cat` to /dev/null), in one run.

    python tools/bench_merge.py [--size 3G[,SIZE...]] [--inputs 3] [--reps 3] [--workdir DIR] [--keep]

For each size, builds --inputs checkpoints of that many bytes each with ckptio's writer (float32
weights in 16 MiB tensors, a tenth of the bytes bfloat16, small biases and a global_step; values
differ per checkpoint), warms the page cache with an untimed `cat` and merge, then alternates
`ckptio merge` (mean; the output removed and `sync` before each run) with `cat` of every input
file to /dev/null. Reports medians of wall time (whole processes), their ratio, and the peak RSS
of the merge process (ru_maxrss of that child alone, as tools/bench.py measures it).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (tools/bench.py: process timing, RSS wrapper, sizes, machine line)

TENSOR = 16 << 20  # bytes per big tensor


def build(prefix: str, size: int, seed: int) -> int:
    """A weights-only checkpoint of about `size` bytes; returns its tensor count."""
    import ml_dtypes
    import numpy as np

    from ckptio.bundle.writer import BundleWriter

    rng = np.random.default_rng(seed)
    pool = rng.standard_normal(TENSOR // 4 + 4096, dtype=np.float32)  # sliced at shifting offsets
    count, done, i = 0, 0, 0
    with BundleWriter(prefix, force=True) as w:
        while done < size:
            shift = (i * 7919) % 4096
            if i % 10 == 9:  # bfloat16: combined in float64 too, cast back
                value = pool[shift:shift + TENSOR // 4].astype(ml_dtypes.bfloat16).reshape(-1, 1024)
            else:
                value = pool[shift:shift + TENSOR // 4].reshape(-1, 1024)
            w.add_array(f"model/layer_{i:05d}/kernel", value)
            w.add_array(f"model/layer_{i:05d}/bias", pool[shift:shift + 1024])
            done += value.nbytes + 4096
            count += 2
            i += 1
        w.add_array("global_step", np.int64(1000 * (seed + 1)))
        w.finish(state_file=False)
    return count + 1


# Like tools/bench.py's RSS wrapper (a small parent, so ru_maxrss is the child's alone), plus the
# child's CPU time: on a shared machine the wall time also counts waiting for a core.
_WRAPPER = r"""
import resource, subprocess, sys, time
start = time.perf_counter()
proc = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE)
wall = time.perf_counter() - start
use = resource.getrusage(resource.RUSAGE_CHILDREN)
sys.stdout.buffer.write(proc.stdout)
print()
print(wall, use.ru_maxrss * 1024, use.ru_utime + use.ru_stime, proc.returncode)
"""


def run_measured(cmd) -> tuple[float, int, float, str]:
    """(wall seconds, peak RSS bytes, CPU seconds, stdout) of a child process."""
    _, out = bench.run_timed([sys.executable, "-c", _WRAPPER, *cmd])
    text, _, last = out.rstrip("\n").rpartition("\n")
    wall, rss, cpu, rc = last.split()
    if rc != "0":
        raise RuntimeError(f"{' '.join(cmd)} exited {rc}")
    return float(wall), int(rss), float(cpu), text


def cpu_pressure() -> str:
    """The kernel's 'some' CPU pressure over the last 60 s: how often tasks waited for a core."""
    try:
        with open("/proc/pressure/cpu") as f:
            return f.readline().split()[2].split("=")[1] + "%"
    except (OSError, IndexError):
        return "n/a"


def files_of(prefix: str) -> list[str]:
    d, base = os.path.split(prefix)
    return sorted(os.path.join(d, n) for n in os.listdir(d) if n.startswith(base + "."))


def bench_size(work: str, size: int, n_inputs: int, reps: int) -> dict:
    """Build inputs of one size, then time merge and cat alternately; medians and peak RSS."""
    d = os.path.join(work, f"size_{size}")
    os.makedirs(d, exist_ok=True)
    prefixes = [os.path.join(d, f"model.ckpt-{1000 * (i + 1)}") for i in range(n_inputs)]
    tensors = 0
    for i, p in enumerate(prefixes):
        if not os.path.exists(p + ".index"):
            print(f"building {p} ({bench.human(size)})", file=sys.stderr)
            tensors = build(p, size, i)
    inputs = [f for p in prefixes for f in files_of(p)]
    total = sum(os.path.getsize(f) for f in inputs)
    out = os.path.join(d, "out", "avg")
    merge_cmd = [*bench.CKPTIO, "merge", *prefixes, out, "--force", "-q", "--json"]
    cat_cmd = ["sh", "-c", 'cat "$@" > /dev/null', "cat", *inputs]
    bench.run_timed(cat_cmd)  # warm-up: page cache, bytecode
    bench.run_timed(merge_cmd)
    merges, cats, rss, inner, merge_cpu, cat_cpu = [], [], [], [], [], []
    pressure = [cpu_pressure()]
    for r in range(reps):
        order = ("merge", "cat") if r % 2 == 0 else ("cat", "merge")
        for what in order:
            shutil.rmtree(os.path.dirname(out), ignore_errors=True)
            bench.sync()
            if what == "merge":
                wall, peak, cpu, text = run_measured(merge_cmd)
                merges.append(wall)
                merge_cpu.append(cpu)
                rss.append(peak)
                inner.append(json.loads(text.strip().splitlines()[-1])["seconds"])
            else:
                wall, _, cpu, _ = run_measured(cat_cmd)
                cats.append(wall)
                cat_cpu.append(cpu)
        pressure.append(cpu_pressure())
    merge_s, cat_s = statistics.median(merges), statistics.median(cats)
    return {"size": size, "inputs": n_inputs, "input_bytes": total, "tensors": tensors,
            "merge_s": merge_s, "merge_runs": merges, "merge_inner_s": statistics.median(inner),
            "merge_cpu_s": statistics.median(merge_cpu), "cat_cpu_s": statistics.median(cat_cpu),
            "cat_s": cat_s, "cat_runs": cats, "ratio": merge_s / cat_s, "peak_rss": max(rss), "rss_runs": rss,
            "cpu_pressure": pressure}


def render(rows: list[dict]) -> str:
    lines = [bench.machine_line(), "",
             "| inputs | ckptio merge (process; in-process) | merge CPU | peak RSS | cat of the inputs (CPU) "
             "| merge/cat | merge throughput |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['inputs']} x {bench.human(r['size'])} ({bench.human(r['input_bytes'])} read) "
                     f"| {r['merge_s']:.2f} s; {r['merge_inner_s']:.2f} s | {r['merge_cpu_s']:.2f} s "
                     f"| {bench.human(r['peak_rss'])} | {r['cat_s']:.2f} s ({r['cat_cpu_s']:.2f} s) | {r['ratio']:.2f}x "
                     f"| {bench.human(r['input_bytes'] / r['merge_s'])}/s |")
    for r in rows:
        lines.append(f"- {bench.human(r['size'])} each: merge runs {', '.join(f'{s:.2f}' for s in r['merge_runs'])} s; "
                     f"cat runs {', '.join(f'{s:.2f}' for s in r['cat_runs'])} s; peak RSS per run "
                     f"{', '.join(bench.human(x) for x in r['rss_runs'])}; CPU pressure (some, avg60) "
                     f"before and after each repetition: {', '.join(r['cpu_pressure'])}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="3G", help="bytes per input checkpoint; several comma-separated (default 3G)")
    ap.add_argument("--inputs", type=int, default=3, help="checkpoints merged (default 3)")
    ap.add_argument("--reps", type=int, default=3, help="timed runs of each tool per size (default 3)")
    ap.add_argument("--workdir", help="where to build the inputs (default: a temporary directory)")
    ap.add_argument("--keep", action="store_true", help="keep the built inputs")
    ap.add_argument("--json", metavar="FILE", help="also write the measurements as JSON")
    args = ap.parse_args()
    sizes = [bench.parse_size(s) for s in args.size.split(",")]
    work = args.workdir or tempfile.mkdtemp(prefix="ckptio-bench-merge-")
    try:
        rows = []
        for size in sizes:
            rows.append(bench_size(work, size, args.inputs, args.reps))
            if not args.keep:
                shutil.rmtree(os.path.join(work, f"size_{size}"), ignore_errors=True)
        print(render(rows))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1)
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
