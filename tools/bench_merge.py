"""Benchmark `ckptio merge` against reading its inputs once (`cat` to /dev/null), in one run.

    python tools/bench_merge.py [--size 3G[,SIZE...]] [--inputs 3] [--reps 3] [--workdir DIR] [--keep]

For each size, builds --inputs checkpoints of that many bytes each with ckptio's writer (float32
weights in 16 MiB tensors, a tenth of the bytes bfloat16, small biases and a global_step; values
differ per checkpoint), then alternates `ckptio merge` (mean; the output removed and `sync` before
each run) with `cat` of every input file to /dev/null: first with the page cache warm (every
input resident, pinned as tools/bench.py does, after an untimed run of each), then cold (every
input evicted with POSIX_FADV_DONTNEED after `sync` before each run, so both read the disk).
Reports medians of wall and CPU time (user + system of the whole child process), the ratios
merge/cat, the bytes cold runs read from disk, and the peak RSS of the merge process (ru_maxrss
of that child alone, as tools/bench.py measures it). On a shared machine compare the CPU times
too: wall time also counts waiting for a core.

Then the floor: what a merge cannot avoid beyond cat's reading, each part timed alone in this
process (CPU time of one thread; medians of three), with no Python per block: the float64 mean
of three float32 inputs in pure numpy from memory (no I/O), crc32c of the inputs, and writing
the output's bytes to the work directory. With cat's CPU time for the reading, their sum over
the cores is the least wall time a merge can take with every core busy the whole time.
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
                value = pool[shift : shift + TENSOR // 4].astype(ml_dtypes.bfloat16).reshape(-1, 1024)
            else:
                value = pool[shift : shift + TENSOR // 4].reshape(-1, 1024)
            w.add_array(f"model/layer_{i:05d}/kernel", value)
            w.add_array(f"model/layer_{i:05d}/bias", pool[shift : shift + 1024])
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


def timed(what: str, merge_cmd, cat_cmd) -> tuple[float, float, int]:
    """(wall, CPU seconds, peak RSS) of one run of merge or cat (the output removed and `sync` first)."""
    if what == "merge":
        wall, peak, cpu, text = run_measured(merge_cmd)
        json.loads(text.strip().splitlines()[-1])  # the report: merge really ran
        return wall, cpu, peak
    wall, _, cpu, _ = run_measured(cat_cmd)
    return wall, cpu, 0


def bench_size(work: str, size: int, n_inputs: int, reps: int, threads: int | None = None) -> dict:
    """Build inputs of one size, then time merge and cat alternately, page cache warm then cold."""
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
    if threads:
        merge_cmd += ["--threads", str(threads)]
    cat_cmd = ["sh", "-c", 'cat "$@" > /dev/null', "cat", *inputs]
    runs = {(cache, what): [] for cache in ("warm", "cold") for what in ("merge", "cat")}
    disk = {"merge": [], "cat": []}
    pressure = [cpu_pressure()]
    for cache in ("warm", "cold"):
        for f in inputs:  # warm: every input resident (and pinned); cold: evicted before each run
            bench.set_cache(f, whole=cache == "warm")
        if cache == "warm":
            bench.run_timed(cat_cmd)  # untimed: bytecode, and the first output's directory
            bench.run_timed(merge_cmd)
        for r in range(reps):
            for what in ("merge", "cat") if r % 2 == 0 else ("cat", "merge"):
                shutil.rmtree(os.path.dirname(out), ignore_errors=True)
                if cache == "cold":
                    bench.sync()
                    for f in inputs:
                        bench.set_cache(f, whole=False)
                bench.sync()
                before = bench.disk_reads()
                runs[cache, what].append(timed(what, merge_cmd, cat_cmd))
                if cache == "cold":
                    disk[what].append(bench.disk_reads() - before)
            pressure.append(cpu_pressure())
    for f in inputs:
        bench.set_cache(f, whole=False)  # unpin
    shutil.rmtree(os.path.dirname(out), ignore_errors=True)
    row = {
        "size": size,
        "inputs": n_inputs,
        "input_bytes": total,
        "tensors": tensors,
        "threads": threads,
        "runs": {f"{c}_{w}": v for (c, w), v in runs.items()},
        "cold_disk_reads": disk,
        "cpu_pressure": pressure,
    }
    med = statistics.median
    for (cache, what), v in runs.items():
        row[f"{cache}_{what}_s"] = med(w for w, _, _ in v)
        row[f"{cache}_{what}_cpu_s"] = med(c for _, c, _ in v)
    for cache in ("warm", "cold"):
        row[f"{cache}_ratio"] = row[f"{cache}_merge_s"] / row[f"{cache}_cat_s"]
    row["peak_rss"] = max(p for c in ("warm", "cold") for _, _, p in runs[c, "merge"])
    row["floor"] = floor(prefixes, d, row)
    return row


def _thread_cpu(fn) -> float:
    """CPU seconds (user + system) of this thread running fn(); the median of three runs."""
    import time

    times = []
    for _ in range(3):
        start = time.thread_time()
        fn()
        times.append(time.thread_time() - start)
    return statistics.median(times)


def floor(prefixes, work: str, row: dict, sample: int = 256 << 20) -> dict:
    """The parts of a merge timed alone on a sample of every input, scaled to the whole inputs."""
    import numpy as np

    from ckptio import merge_stream as ms
    from ckptio.sstable.coding import crc32c

    datas = [f for p in prefixes for f in files_of(p) if ".data-" in f]
    n = min(sample, *(os.path.getsize(f) for f in datas)) // 4
    xs = [np.fromfile(f, np.float32, count=n) for f in datas[:3]]  # bytes as float32: the cost is alike
    k = ms.BLOCK_ELEMENTS
    acc, out = np.empty(k, np.float64), np.empty(n, np.float32)

    def mean(cached: bool):  # merge_math's rule for mean, block by block (the sums stay in cache)
        with np.errstate(all="ignore"):
            for at in range(0, n - k + 1, k):
                a, b, c = (x[0:k] if cached else x[at : at + k] for x in xs)
                np.add(a, b, out=acc, dtype=np.float64)
                np.add(acc, c, out=acc, dtype=np.float64)
                np.divide(acc, 3, out=out[at : at + k], dtype=np.float64, casting="unsafe")

    def crc(cached: bool):
        for x in xs:
            for at in range(0, n - k + 1, k):
                crc32c(x[0:k] if cached else x[at : at + k])

    path = os.path.join(work, "floor-write.bin")
    chunk = np.ones(2 << 20, np.uint8)

    def write():  # the output's bytes, 2 MiB at a time, as merge writes a run
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            for _ in range(row["input_bytes"] // 3 // chunk.size):
                os.write(fd, chunk)
        finally:
            os.close(fd)
            os.unlink(path)

    per_byte = len(xs) * n * 4
    scale = row["input_bytes"] / per_byte
    # From cache: a merge reads a block and combines it at once, so the numbers come from the
    # cache as cat's copy left them; from memory: numpy on whole arrays, as often quoted.
    parts = {
        "mean_f64_s": _thread_cpu(lambda: mean(True)) * scale,
        "crc32c_s": _thread_cpu(lambda: crc(True)) * scale,
        "mean_f64_from_memory_s": _thread_cpu(lambda: mean(False)) * scale,
        "crc32c_from_memory_s": _thread_cpu(lambda: crc(False)) * scale,
    }
    bench.sync()
    parts["write_out_s"] = _thread_cpu(write)
    cores = len(os.sched_getaffinity(0))
    for cache in ("warm", "cold"):
        need = row[f"{cache}_cat_cpu_s"] + parts["mean_f64_s"] + parts["crc32c_s"] + parts["write_out_s"]
        # Warm, cat's wall time on an idle core is its CPU time (a loaded machine adds waiting);
        # cold, it is the disk's time, which a merge cannot beat either.
        cat = row["warm_cat_cpu_s"] if cache == "warm" else row["cold_cat_s"]
        parts[f"{cache}_floor_s"] = max(cat, need / cores)
        parts[f"{cache}_floor_ratio"] = parts[f"{cache}_floor_s"] / cat
    parts["cores"] = cores
    return parts


def render(rows: list[dict]) -> str:
    machine = bench.machine_line().split("; bytes read warm")[0]
    lines = [
        f"{machine}; `sync` before each run, medians; load average at the end {os.getloadavg()[0]:.2f}",
        "",
        "| inputs | page cache | ckptio merge: wall (CPU) | cat of the inputs: wall (CPU) | merge/cat wall "
        "| merge/cat CPU | merge peak RSS | merge throughput |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        for cache in ("warm", "cold"):
            ms, mc = r[f"{cache}_merge_s"], r[f"{cache}_merge_cpu_s"]
            cs, cc = r[f"{cache}_cat_s"], r[f"{cache}_cat_cpu_s"]
            lines.append(
                f"| {r['inputs']} x {bench.human(r['size'])} ({bench.human(r['input_bytes'])} read) | {cache} "
                f"| {ms:.2f} s ({mc:.2f} s) | {cs:.2f} s ({cc:.2f} s) | {r[f'{cache}_ratio']:.2f}x "
                f"| {mc / cc if cc else float('inf'):.1f}x | {bench.human(r['peak_rss'])} "
                f"| {bench.human(r['input_bytes'] / ms)}/s |"
            )
    for r in rows:
        for key, v in r["runs"].items():
            lines.append(
                f"- {bench.human(r['size'])} each, {key.replace('_', ' ')}: wall "
                f"{', '.join(f'{w:.2f}' for w, _, _ in v)} s; CPU {', '.join(f'{c:.2f}' for _, c, _ in v)} s"
                + (f"; peak RSS {', '.join(bench.human(p) for _, _, p in v)}" if key.endswith("merge") else "")
            )
        lines.append(
            f"- {bench.human(r['size'])} each, cold runs read from disk: merge "
            f"{', '.join(bench.human(x) for x in r['cold_disk_reads']['merge'])}; cat "
            f"{', '.join(bench.human(x) for x in r['cold_disk_reads']['cat'])}"
        )
        lines.append(f"- CPU pressure (some, avg60) before and after each repetition: {', '.join(r['cpu_pressure'])}")
        f = r.get("floor")
        if f:
            lines.append(
                f"- {bench.human(r['size'])} each, the floor (parts timed alone, CPU): float64 mean in numpy "
                f"without I/O {f['mean_f64_s']:.2f} s from cache ({f['mean_f64_from_memory_s']:.2f} s from "
                f"memory), crc32c {f['crc32c_s']:.2f} s ({f['crc32c_from_memory_s']:.2f} s), writing the output "
                f"{f['write_out_s']:.2f} s, plus cat's reading; on {f['cores']} cores at best "
                f"{f['warm_floor_s']:.2f} s warm ({f['warm_floor_ratio']:.2f}x cat's CPU time), "
                f"{f['cold_floor_s']:.2f} s cold ({f['cold_floor_ratio']:.2f}x cat)"
            )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="3G", help="bytes per input checkpoint; several comma-separated (default 3G)")
    ap.add_argument("--inputs", type=int, default=3, help="checkpoints merged (default 3)")
    ap.add_argument("--reps", type=int, default=3, help="timed runs of each tool per size (default 3)")
    ap.add_argument("--workdir", help="where to build the inputs (default: a temporary directory)")
    ap.add_argument("--keep", action="store_true", help="keep the built inputs")
    ap.add_argument("--threads", type=int, help="merge --threads N (default: merge's own default)")
    ap.add_argument("--json", metavar="FILE", help="also write the measurements as JSON")
    args = ap.parse_args()
    sizes = [bench.parse_size(s) for s in args.size.split(",")]
    work = args.workdir or tempfile.mkdtemp(prefix="ckptio-bench-merge-")
    try:
        rows = []
        for size in sizes:
            rows.append(bench_size(work, size, args.inputs, args.reps, args.threads))
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
