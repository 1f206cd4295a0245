"""Peak RSS and wall time of `ckptio diff` and `ckptio fit` on the Adam benchmark checkpoint (issue 14 (f)).

    python tools/bench_diff_fit.py [--size 3G] [--work DIR] [--grow 8]

Builds (or reuses, from --work) the TF1 Adam transformer checkpoint of tools/bench.py (its
build_transformer; --size is the whole checkpoint, weights a third of it, so 3G is the checkpoint
bench.py builds for `--sizes 1G` and the two share a --work dir), then with ckptio: a template (its
`strip`), a `--cast bfloat16` copy, and a template whose --grow largest tensors have a larger
leading size (rewritten with ckptio's API). Runs each diff and fit once as a whole process from a
small parent, so that ru_maxrss is the child's alone, and prints a Markdown table with the load
average before each run. Not a timed test: the page cache is left as it is, and on a shared
machine the wall times also count waiting for a core.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # (tools/bench.py: the checkpoint generator, process timing, sizes)

# A small parent runs the command: a child forked from this (larger) process would inherit its
# resident pages before exec, and ru_maxrss would count them.
_WRAPPER = r"""
import resource, subprocess, sys, time
start = time.perf_counter()
proc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL)
wall = time.perf_counter() - start
use = resource.getrusage(resource.RUSAGE_CHILDREN)
print(wall, use.ru_maxrss * 1024, use.ru_utime + use.ru_stime, proc.returncode)
"""


def run_measured(cmd, ok=(0,)) -> tuple[float, int, float, int]:
    """(wall seconds, peak RSS bytes, CPU seconds, exit code) of one child process."""
    _, out = bench.run_timed([sys.executable, "-c", _WRAPPER, *cmd])
    wall, rss, cpu, rc = out.split()
    if int(rc) not in ok:
        raise RuntimeError(f"{' '.join(cmd)} exited {rc}")
    return float(wall), int(rss), float(cpu), int(rc)


def checkpoint(work: str, size: int) -> str:
    """The benchmark checkpoint of about `size` bytes, built unless --work already has it (bench.py's layout)."""
    weights = size // 3
    tag = bench.human(weights).replace(" ", "")
    prefix = os.path.join(work, f"adam_{tag}", "model.ckpt")
    marker = prefix + ".built"
    if not os.path.exists(marker):
        print(f"building {bench.human(size)} checkpoint ({tag} of weights) ...", file=sys.stderr)
        info = bench.build_transformer(prefix, weights)
        with open(marker, "w") as f:
            json.dump(info, f)
    return prefix


def grown_template(template: str, out: str, count: int) -> list[str]:
    """A copy of `template` whose `count` largest tensors have 128 more rows; returns their names."""
    import numpy as np

    import ckptio
    from ckptio.bundle.writer import BundleWriter

    with ckptio.open(template) as ck:
        names = sorted(ck, key=lambda n: (-ck[n].nbytes, n))[:count]
        with BundleWriter(out, force=True) as w:
            for name in sorted(ck):
                t = ck[name]
                if name in names:
                    shape = (t.shape[0] + 128, *t.shape[1:])
                    w.add_array(name, np.full(shape, 0.5, dtype=t.dtype))
                else:
                    w.add_array(name, t.read(), dtype=t.entry.dtype)  # one tensor in memory at a time
            w.finish()
    return names


def total_bytes(prefix: str) -> int:
    d, base = os.path.split(prefix)
    return sum(os.path.getsize(os.path.join(d, n)) for n in os.listdir(d) if n.startswith(base + "."))


def bench_size(work: str, size: int, grow: int) -> list[dict]:
    """Inputs for one size, then one measured run of each diff and fit command."""
    src = checkpoint(work, size)
    d = os.path.join(work, f"difffit_{bench.human(size).replace(' ', '')}")
    shutil.rmtree(d, ignore_errors=True)
    template, cast = os.path.join(d, "template", "model.ckpt"), os.path.join(d, "cast", "model.ckpt")
    grown = os.path.join(d, "grown", "model.ckpt")
    bench.run_timed([*bench.CKPTIO, "strip", src, template, "-q"])
    bench.run_timed([*bench.CKPTIO, "rewrite", src, cast, "--cast", "bfloat16", "-q"])
    grown_template(template, grown, grow)
    out = os.path.join(d, "out", "model.ckpt")
    runs = [
        ("`diff A TEMPLATE`", ["diff", src, template], (1,)),
        ("`diff A TEMPLATE --values`", ["diff", src, template, "--values"], (1,)),
        ("`diff A CAST --values`", ["diff", src, cast, "--values"], (1,)),
        ("`fit A --template TEMPLATE OUT`", ["fit", src, "--template", template, out, "--force"], (0,)),
        (
            f"`fit A --template GROWN OUT --on-mismatch slice` ({grow} tensors grown)",
            ["fit", src, "--template", grown, out, "--force", "--on-mismatch", "slice"],
            (0,),
        ),
    ]
    bench.run_timed([*bench.CKPTIO, "--help"])  # untimed: bytecode written
    rows = []
    for label, args, ok in runs:
        load = os.getloadavg()[0]
        wall, rss, cpu, rc = run_measured([*bench.CKPTIO, *args], ok)
        rows.append(
            {"size": total_bytes(src), "command": label, "rss": rss, "wall": wall, "cpu": cpu, "exit": rc, "load": load}
        )
        print(f"{label}: {bench.human(rss)} peak RSS, {wall:.1f} s", file=sys.stderr)
    shutil.rmtree(d, ignore_errors=True)
    return rows


def render(rows: list[dict]) -> str:
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = [
        f"Machine: {bench.machine_line().split('; ')[0]}; load average (1/5/15 min) at the end: {load}.",
        "",
        "| checkpoint | command | peak RSS | wall | CPU | exit | load (1 min) before |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {bench.human(r['size'])} | {r['command']} | {bench.human(r['rss'])} | {r['wall']:.1f} s | "
            f"{r['cpu']:.1f} s | {r['exit']} | {r['load']:.2f} |"
        )
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="3G", help="whole checkpoint sizes, comma-separated (e.g. 1G,2G); default 3G")
    p.add_argument(
        "--work",
        default=os.path.join(tempfile.gettempdir(), "ckptio-bench"),
        help="work directory; a checkpoint already built there (also by tools/bench.py) is reused",
    )
    p.add_argument("--grow", type=int, default=8, help="how many of the largest template tensors get more rows")
    args = p.parse_args()
    os.makedirs(args.work, exist_ok=True)
    rows = []
    for size in [bench.parse_size(s) for s in args.size.split(",")]:
        rows += bench_size(args.work, size, args.grow)
    print(render(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
