"""Benchmark `ckptio ls --json` of a checkpoint with 100,000 tiny tensors, as a whole process.

    python tools/bench_ls.py [--entries 100000] [--reps 7] [--workdir DIR]

Builds the checkpoint once with ckptio's writer (tools/bench.py's build_many: 4-byte float
tensors, names model/block_NNNN/var_NN), runs one untimed warm-up (bytecode written, index in the
page cache), then times, alternating, the median of N runs each of: `ckptio ls --json`, `ckptio
ls` (text), `ckptio --help` (ckptio's start-up) and `python -c pass` (the interpreter's own
start-up, a floor no command can go under). Wall and CPU time of the child process, output
discarded.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  tools/bench.py: checkpoint builder, environment for timed children


def timed(cmd: list[str]) -> tuple[float, float]:
    """(wall, CPU) seconds of one child process; its output is read and thrown away, as a pipe would.

    CPU time (user + system) is reported beside wall time because it suffers less from other load.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, env=bench.ENV)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.decode()[-2000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--entries", type=int, default=100_000)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "ckptio-bench-ls"))
    args = p.parse_args()
    prefix = os.path.join(args.workdir, f"many_{args.entries}", "model.ckpt")
    if not os.path.exists(prefix + ".index"):
        print(f"building a {args.entries:,}-entry checkpoint ...", file=sys.stderr)
        bench.build_many(prefix, args.entries)
    commands = {
        "ls --json": bench.CKPTIO + ["ls", "--json", prefix],
        "ls": bench.CKPTIO + ["ls", prefix],
        "--help": bench.CKPTIO + ["--help"],
        "python -c pass": [sys.executable, "-c", "pass"],
    }
    for cmd in commands.values():  # warm-up
        timed(cmd)
    runs: dict[str, list[float]] = {k: [] for k in commands}
    cpu: dict[str, list[float]] = {k: [] for k in commands}
    for rep in range(args.reps):
        for name in list(commands) if rep % 2 == 0 else list(commands)[::-1]:
            wall, used = timed(commands[name])
            runs[name].append(wall)
            cpu[name].append(used)
    med = {k: bench.median(v) for k, v in runs.items()}
    print(
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, load average {os.getloadavg()[0]:.1f}; {args.entries:,} entries "
        f"({os.path.getsize(prefix + '.index'):,}-byte index), medians of {args.reps} runs, whole process."
    )
    print()
    print("| command | wall, median | runs ranged | CPU (user+sys), median |")
    print("|---|---|---|---|")
    for name, cmd in commands.items():
        shown = "ckptio " + name if cmd[: len(bench.CKPTIO)] == bench.CKPTIO else name
        print(
            f"| `{shown}` | {med[name]:.3f} s | {min(runs[name]):.3f}-{max(runs[name]):.3f} s "
            f"| {bench.median(cpu[name]):.3f} s |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
