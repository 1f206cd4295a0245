"""Benchmark `ckptio strip` against `cp` of the kept bytes, cold and warm, ratios measured in one run.

    python tools/bench_cold.py [--sizes 512M,1G] [--reps 7] [--workdir DIR] [--baseline TREE] [--drop-caches]

Uses tools/bench.py's TF1 Adam checkpoints (weights 1/3 of the bytes, each weight followed by its two
Adam slots, so a strip reads every third tensor) and its `cp` source (a file as large as the kept
bytes). Cold: before each timed run the checkpoint's data file and the `cp` source are evicted from
the page cache (`sync`, then posix_fadvise DONTNEED on both; with --drop-caches also
`echo 1 > /proc/sys/vm/drop_caches`, which empties the whole machine's page cache), so both tools read
from the disk. Warm: the bytes each run reads are made resident first (and kept mapped, as bench.py
does). The tools alternate, so a noisy spell hits both; each strip is paired with the `cp` next to it
and the report gives the median of those per-pair ratios beside the ratio of the medians, the
bytes each child process read from the disk (its own I/O accounting, not the machine's), and the
read requests the disk served during the run (machine-wide, /sys/dev/block/*/stat: on a quiet
machine, how many pieces the tool's reads reached the disk in).
--baseline TREE also times the strip of another source tree (e.g. /work/main) in the same rotation.
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (tools/bench.py: building, cache control, sizes)

# Wall time, peak RSS and bytes read from the disk (ru_inblock, in 512-byte units) of one child,
# from a small parent (see bench.run_rss).
_WRAPPER = r"""
import resource, subprocess, sys, time
start = time.perf_counter()
proc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL)
wall = time.perf_counter() - start
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
print(wall, ru.ru_maxrss * 1024, ru.ru_inblock * 512, ru.ru_utime + ru.ru_stime, proc.returncode)
"""


def run(cmd, env, cwd: str) -> tuple[float, int, int, float]:
    """(wall seconds, peak RSS, bytes read from disk, CPU seconds) of one child process."""
    # cwd: `python -m ckptio` imports from the working directory before PYTHONPATH, so the children
    # run where no ckptio is, or every tree's strip would be the one of the directory we started in.
    proc = subprocess.run([sys.executable, "-c", _WRAPPER, *cmd], capture_output=True, env=env, text=True, cwd=cwd)
    wall, rss, read, cpu, rc = proc.stdout.split()
    if rc != "0" or proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} exited {rc}: {proc.stderr[-2000:]}")
    return float(wall), int(rss), int(read), float(cpu)


def disk_stat(path: str) -> tuple[int, int] | None:
    """(read requests completed, bytes read) so far by the block device holding path (machine-wide), or None."""
    dev = os.stat(path).st_dev
    try:
        with open(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}/stat") as f:
            fields = f.read().split()
        return int(fields[0]), int(fields[2]) * 512
    except OSError:
        return None


def drop_caches() -> bool:
    """Empty the machine's page cache (root only); False where not permitted."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("1\n")
        return True
    except OSError:
        return False


def prepare(work: str, size: int) -> dict:
    """Build (once) the checkpoint and the `cp` source; return paths and the kept/dropped ranges."""
    import ckptio
    from ckptio.cli.ls import roles_of

    tag = bench.human(size).replace(" ", "")
    prefix = os.path.join(work, f"adam_{tag}", "model.ckpt")
    if not os.path.exists(prefix + ".built"):
        print(f"building {tag} checkpoint ...", file=sys.stderr)
        info = bench.build_transformer(prefix, size)
        with open(prefix + ".built", "w") as f:
            json.dump(info, f)
    data = prefix + ".data-00000-of-00001"
    with ckptio.open(prefix) as ck:
        roles = roles_of(ck)
        entries = ck.entries()
        keep = [(e.offset, e.size) for n, e in entries.items() if roles[n] != "optimizer"]
        drop = [(e.offset, e.size) for n, e in entries.items() if roles[n] == "optimizer"]
    kept = sum(n for _, n in keep)
    floor = os.path.join(work, f"floor_{tag}.bin")
    if not os.path.exists(floor) or os.path.getsize(floor) != kept:
        with open(data, "rb") as src, open(floor, "wb") as dst:
            shutil.copyfileobj(src, dst, 8 << 20)
            dst.truncate(kept)
    return {
        "tag": tag,
        "prefix": prefix,
        "data": data,
        "floor": floor,
        "keep": keep,
        "drop": drop,
        "kept": kept,
        "total": os.path.getsize(data),
        "ranges": len([r for r in keep if r[1]]),
    }


def bench_one(work: str, c: dict, reps: int, trees: dict, drop: bool) -> dict:
    """Alternate cold and warm runs of each tree's strip and `cp`; per-run results."""
    out_dir = os.path.join(work, "out_cold")
    cp_target = os.path.join(work, "out_cp.bin")

    def step(name: str) -> tuple[float, int, int, float, int]:
        """(wall, peak RSS, bytes read, CPU seconds, read requests the disk served meanwhile)."""
        shutil.rmtree(out_dir, ignore_errors=True)
        if os.path.exists(cp_target):
            os.unlink(cp_target)
        os.sync()
        before = disk_stat(c["data"])
        if name == "cp":
            res = run(["cp", c["floor"], cp_target], bench.ENV, work)
        else:
            res = run(
                [sys.executable, "-m", "ckptio", "strip", c["prefix"], os.path.join(out_dir, "model.ckpt"), "-q"],
                trees[name],
                work,
            )
        after = disk_stat(c["data"])
        return (*res, after[0] - before[0] if before and after else -1)

    steps = [*trees, "cp"]
    results = {mode: {s: [] for s in steps} for mode in ("cold", "warm")}
    bench.set_cache(c["data"], keep=c["keep"], drop=c["drop"])  # untimed warm-up: bytecode, faults
    for s in steps:
        step(s)
    for mode in ("cold", "warm"):
        for rep in range(reps):
            order = steps if rep % 2 == 0 else steps[::-1]
            for s in order:
                if mode == "cold":
                    bench.set_cache(c["data"], whole=False)
                    bench.set_cache(c["floor"], whole=False)
                    if drop:
                        drop_caches()
                else:
                    bench.set_cache(c["data"], keep=c["keep"], drop=c["drop"])
                    bench.set_cache(c["floor"], whole=True)
                os.sync()
                results[mode][s].append(step(s))
    bench.set_cache(c["data"], whole=False)
    bench.set_cache(c["floor"], whole=False)
    shutil.rmtree(out_dir, ignore_errors=True)
    if os.path.exists(cp_target):
        os.unlink(cp_target)
    return results


def summary(c: dict, results: dict, trees: dict) -> list[str]:
    lines = []
    for mode, res in results.items():
        cp = [r[0] for r in res["cp"]]
        cp_cpu = statistics.median(r[3] for r in res["cp"])
        for name in trees:
            walls = [r[0] for r in res[name]]
            pairs = [s / k for s, k in zip(walls, cp)]
            reads = statistics.median(r[2] for r in res[name])
            cpu = statistics.median(r[3] for r in res[name])
            requests = statistics.median(r[4] for r in res[name])
            cp_requests = statistics.median(r[4] for r in res["cp"])
            lines.append(
                f"| {bench.human(c['total'])} ({bench.human(c['kept'])} kept, {c['ranges']} ranges) | {mode} | "
                f"{name} | {statistics.median(walls):.2f} s ({min(walls):.2f}-{max(walls):.2f}) | "
                f"{statistics.median(cp):.2f} s ({min(cp):.2f}-{max(cp):.2f}) | "
                f"{statistics.median(walls) / statistics.median(cp):.2f}x | {statistics.median(pairs):.2f}x | "
                f"{min(walls) / min(cp):.2f}x | {cpu:.2f} s; {cp_cpu:.2f} s | {bench.human(reads)} | "
                f"{requests:.0f}; {cp_requests:.0f} | "
                f"{bench.human(max(r[1] for r in res[name]))} |"
            )
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="512M,1G", help="weight sizes to build (the checkpoint is ~3x)")
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "ckptio-bench"))
    p.add_argument("--baseline", help="another ckptio source tree whose strip is timed in the same rotation")
    p.add_argument("--drop-caches", action="store_true", help="also empty the machine's page cache (root)")
    p.add_argument("--json", help="write every run's figures here")
    args = p.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    if args.drop_caches and not drop_caches():
        print("cannot write /proc/sys/vm/drop_caches: evicting with fadvise only", file=sys.stderr)
        args.drop_caches = False
    trees = {"strip": bench.ENV}
    if args.baseline:
        base = os.path.abspath(args.baseline)
        trees["baseline"] = dict(bench.ENV, PYTHONPATH=base)
    lines = [
        f"Machine: {bench.machine_line().split(';')[0]}; load average before: "
        f"{open('/proc/loadavg').read().split()[:3]}.",
        "",
        "| checkpoint | cache | tool | strip median (range) | cp of kept bytes median (range) | "
        "ratio of medians | median of paired ratios | fastest/fastest | CPU: strip; cp | strip read from disk | "
        "disk read requests: strip; cp | strip peak RSS |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    everything = {}
    for size in [bench.parse_size(s) for s in args.sizes.split(",")]:
        c = prepare(args.workdir, size)
        results = bench_one(args.workdir, c, args.reps, trees, args.drop_caches)
        everything[c["tag"]] = results
        lines += summary(c, results, trees)
        print("\n".join(lines[-2 * len(trees) :]), file=sys.stderr)
    lines.append("")
    lines.append(f"Load average after: {open('/proc/loadavg').read().split()[:3]}.")
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(everything, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
