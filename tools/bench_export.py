"""Benchmark an export to safetensors (and .npz) against `cp` of the kept bytes, in one run.

    python tools/bench_export.py [--sizes 1G,2G] [--reps 5] [--workdir DIR]

Builds the same TF1 Adam checkpoints as tools/bench.py (weights 1/3 of the bytes), then times,
alternating and taking medians: `ckptio strip IN OUT.safetensors` as a whole process with its
peak RSS, `cp` of a file as large as the kept bytes, `ckptio strip IN OUT.npz`, and the same
strip into a TF prefix (the copy path the export reuses, as a baseline on the same machine state), each with
its CPU time (user + system, which scatters less than wall time on a loaded machine). Before each
timed run the page cache holds exactly the bytes that run reads (tools/bench.py's set_cache),
then `sync`. Two sizes show whether peak RSS stays flat as the checkpoint grows.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  tools/bench.py: checkpoint builder, timing, page-cache control

CKPTIO = bench.CKPTIO

# bench.run_rss's wrapper, also reporting the child's CPU time (user + system, all threads): on a
# loaded machine wall times scatter, CPU time much less, and it shows where a run's time goes.
_WRAPPER = r"""
import resource, subprocess, sys, time
start = time.perf_counter()
proc = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE)
wall = time.perf_counter() - start
use = resource.getrusage(resource.RUSAGE_CHILDREN)
print(wall, use.ru_maxrss * 1024, use.ru_utime + use.ru_stime, proc.returncode)
"""


def run_measured(cmd) -> tuple[float, int, float]:
    """(wall seconds, peak RSS in bytes, CPU seconds) of a child process."""
    _, out = bench.run_timed([sys.executable, "-c", _WRAPPER, *cmd])
    wall, rss, cpu, rc = out.strip().splitlines()[-1].split()
    if rc != "0":
        raise RuntimeError(f"{' '.join(cmd)} exited {rc}")
    return float(wall), int(rss), float(cpu)


def bench_size(work: str, size: int, reps: int) -> dict:
    import ckptio
    from ckptio.cli.ls import roles_of

    tag = bench.human(size).replace(" ", "")
    prefix = os.path.join(work, f"adam_{tag}", "model.ckpt")
    marker = prefix + ".built"
    if not os.path.exists(marker):
        print(f"building {tag} checkpoint ...", file=sys.stderr)
        info = bench.build_transformer(prefix, size)
        with open(marker, "w") as f:
            json.dump(info, f)
    with ckptio.open(prefix) as ck:
        entries = ck.entries()
        roles = roles_of(ck)
    kept_names = {n for n, r in roles.items() if r != "optimizer"}
    kept = sum(entries[n].size for n in kept_names)
    keep = [(e.offset, e.size) for n, e in entries.items() if n in kept_names]
    drop = [(e.offset, e.size) for n, e in entries.items() if n not in kept_names]
    data = prefix + ".data-00000-of-00001"
    floor = os.path.join(work, f"floor_{tag}.bin")
    if not os.path.exists(floor) or os.path.getsize(floor) != kept:
        with open(data, "rb") as src, open(floor, "wb") as dst:
            shutil.copyfileobj(src, dst, 8 << 20)
            dst.truncate(kept)
    out_dir = os.path.join(work, "out_export")

    def timed_export(suffix: str) -> tuple[float, int, float]:
        shutil.rmtree(out_dir, ignore_errors=True)
        measured = run_measured(CKPTIO + ["strip", prefix, os.path.join(out_dir, "model" + suffix), "-q"])
        shutil.rmtree(out_dir, ignore_errors=True)
        return measured

    def timed_cp() -> tuple[float, float]:
        target = os.path.join(work, "out_cp.bin")
        wall, _, cpu = run_measured(["cp", floor, target])
        os.unlink(target)
        return wall, cpu

    bench.set_cache(data, keep=keep, drop=drop)
    timed_export(".safetensors")  # warm-up: bytecode written, memory faulted in once
    timed_cp()
    times = {"safetensors": [], "cp": [], "npz": [], "tf": []}
    cpu = {k: [] for k in times}
    rss = {"safetensors": [], "npz": [], "tf": []}
    order = ("safetensors", "cp", "tf", "npz", "cp", "safetensors")
    for rep in range(reps):
        for step in order if rep % 2 == 0 else order[::-1]:
            bench.set_cache(data, keep=keep, drop=drop)
            bench.set_cache(floor, whole=True)
            bench.sync()
            if step == "cp":
                wall, used = timed_cp()
            else:
                wall, peak, used = timed_export(".ckpt" if step == "tf" else "." + step)
                rss[step].append(peak)
            times[step].append(wall)
            cpu[step].append(used)
    bench.set_cache(data, whole=False)
    bench.set_cache(floor, whole=False)
    med = {k: bench.median(v) for k, v in times.items()}
    return {
        "tag": tag,
        "total": sum(e.size for e in entries.values()),
        "kept": kept,
        "tensors": len(entries),
        "kept_tensors": len(kept_names),
        "seconds": med,
        "runs": times,
        "cpu": {k: bench.median(v) for k, v in cpu.items()},
        "rss": {k: max(v) for k, v in rss.items()},
        "ratio": med["safetensors"] / med["cp"],
        "ratio_npz": med["npz"] / med["cp"],
        "ratio_tf": med["tf"] / med["cp"],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1G,2G", help="kept (weight) bytes per checkpoint, comma-separated")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "ckptio-bench-export"))
    args = p.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    rows = [bench_size(args.workdir, bench.parse_size(s), args.reps) for s in args.sizes.split(",")]
    h = bench.human
    print(
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, load average {os.getloadavg()[0]:.1f}; warm page cache (exactly the bytes "
        f"each run reads), medians of {args.reps} repetitions (two safetensors/cp runs each)."
    )
    print()
    print(
        "| checkpoint | kept | ckptio strip -> .safetensors | peak RSS | cp of kept bytes | safetensors/cp "
        "| strip -> TF prefix (same copy path) | tf/cp | strip -> .npz | peak RSS | npz/cp |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        s = r["seconds"]
        print(
            f"| {h(r['total'])}, {r['tensors']} tensors | {h(r['kept'])} ({r['kept_tensors']} tensors) "
            f"| {s['safetensors']:.2f} s | {h(r['rss']['safetensors'])} | {s['cp']:.2f} s | {r['ratio']:.2f}x "
            f"| {s['tf']:.2f} s | {r['ratio_tf']:.2f}x "
            f"| {s['npz']:.2f} s | {h(r['rss']['npz'])} | {r['ratio_npz']:.2f}x |"
        )
    print()
    for r in rows:
        c = r["cpu"]
        print(
            f"- {r['tag']}: CPU time (user + system, all threads), medians: safetensors {c['safetensors']:.2f} s, "
            f"cp {c['cp']:.2f} s, TF prefix {c['tf']:.2f} s, npz {c['npz']:.2f} s"
        )
        print(
            f"- {r['tag']}: runs ranged: safetensors {min(r['runs']['safetensors']):.2f}-"
            f"{max(r['runs']['safetensors']):.2f} s, cp {min(r['runs']['cp']):.2f}-{max(r['runs']['cp']):.2f} s, "
            f"TF prefix {min(r['runs']['tf']):.2f}-{max(r['runs']['tf']):.2f} s, "
            f"npz {min(r['runs']['npz']):.2f}-{max(r['runs']['npz']):.2f} s"
        )
        # On a VM, memory freed by one run and taken by the next can cost either tool a fault per page
        # (seen as system time, in cp's runs more often); each tool's fastest run shows the floor.
        fast, fast_cp = min(r["runs"]["safetensors"]), min(r["runs"]["cp"])
        print(
            f"- {r['tag']}: fastest runs: safetensors {fast:.2f} s against cp {fast_cp:.2f} s: {fast / fast_cp:.2f}x; "
            f"safetensors' median against cp's fastest: {r['seconds']['safetensors'] / fast_cp:.2f}x"
        )
    print(json.dumps(rows), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
