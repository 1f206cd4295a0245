"""Remote reads: `ckptio strip URL out` against a 16-way parallel download of just the kept bytes.

    python tools/bench_remote.py [--size 1G] [--shards 4] [--latency-ms 30] [--reps 3] [--work DIR]

Builds a TF1 Adam checkpoint (per layer attention q/k/v/o, two ffn kernels, biases, layer norm,
each with its /Adam and /Adam_1 slots right after it, so a strip keeps about a third) split over
several data shards, serves it with tools/http_range_server.py (a separate process, every request
answered after --latency-ms), and times in the same run, each as a fresh process:
  (a) ckptio strip URL local_out
  (b) the kept byte ranges (taken from the index) fetched with plain HTTP range requests, one per
      tensor, 16 at a time (threads + urllib), written into a local file: the floor for (a)
  (c) the same ranges with fsspec's batched async cat_ranges (what fsspec itself offers)
  (d) ckptio ls --json URL
and prints the ratio (a)/(b) (the issue's target: within 2x). The strip's output is compared byte
for byte with a local strip of the same checkpoint. The server's own CPU time during each is shown
too (on a small machine it competes with the client for the cores). Children run with compiled
bytecode cached under --work (as an installed ckptio has it), even where PYTHONDONTWRITEBYTECODE is set.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(float(text[:-1]) * units[text[-1].upper()]) if text[-1].upper() in units else int(text)


def build(prefix: str, total_bytes: int, shards: int) -> dict:
    """A TF1 Adam checkpoint of about total_bytes, layer i in data shard i % shards, a variable's slots beside it."""
    import numpy as np

    from ckptio.bundle.writer import BundleWriter

    d = 1024
    shapes = {}
    per_layer = (4 * d * d + 8 * d * d + 4 * d + 4 * d + d + 4 * d) * 4 * 3
    for i in range(max(1, round(total_bytes / per_layer))):
        base = f"transformer/layer_{i:03d}"
        for n in ("q", "k", "v", "o"):
            shapes[f"{base}/attention/{n}/kernel"] = (d, d)
            shapes[f"{base}/attention/{n}/bias"] = (d,)
        shapes[f"{base}/ffn/dense_1/kernel"] = (d, 4 * d)
        shapes[f"{base}/ffn/dense_1/bias"] = (4 * d,)
        shapes[f"{base}/ffn/dense_2/kernel"] = (4 * d, d)
        shapes[f"{base}/ffn/dense_2/bias"] = (d,)
        shapes[f"{base}/layer_norm/gamma"] = (d,)
        shapes[f"{base}/layer_norm/beta"] = (d,)
    rng = np.random.default_rng(0)
    pool = rng.standard_normal(8 << 20, dtype=np.float32)
    offset = 0
    with BundleWriter(prefix, shards, force=True) as w:
        for name, shape in sorted(shapes.items()):
            layer = int(name.split("/")[1].rsplit("_", 1)[1])
            for suffix, scale in (("", 1.0), ("/Adam", 1e-3), ("/Adam_1", 1e-6)):
                n = int(np.prod(shape))
                if offset + n > pool.size:
                    offset = 0
                w.add_array(name + suffix, (pool[offset : offset + n] * scale).reshape(shape), layer % shards)
                offset += 7919
        w.add_array("beta1_power", np.float32(0.9**100))
        w.add_array("beta2_power", np.float32(0.999**100))
        w.add_array("global_step", np.int64(100))
        w.finish(state_file=False)
    return {"tensors": 3 * len(shapes) + 3}


def kept_ranges(src_prefix: str, stripped_prefix: str) -> list[tuple[str, int, int]]:
    """(data file name, offset, size) in the source of every tensor the strip kept, in file order."""
    import ckptio
    from ckptio.bundle import naming

    with ckptio.open(stripped_prefix) as out, ckptio.open(src_prefix) as src:
        keep = set(out)
        entries = src.entries()
        base = os.path.basename(src_prefix)
        n = src._reader.header.num_shards
        found = [
            (os.path.basename(naming.data_path(base, e.shard_id, n)), e.offset, e.size)
            for name, e in entries.items()
            if name in keep and e.size
        ]
    return sorted(found)


PARALLEL = r"""
import json, os, sys, time, urllib.request
from concurrent.futures import ThreadPoolExecutor
base, out, ranges = sys.argv[1], sys.argv[2], json.load(open(sys.argv[3]))
fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
starts, pos = [], 0
for _, _, n in ranges:
    starts.append(pos); pos += n
def get(i):
    name, off, n = ranges[i]
    req = urllib.request.Request(f"{base}/{name}", headers={"Range": f"bytes={off}-{off + n - 1}"})
    with urllib.request.urlopen(req) as r:
        data = r.read()
    assert len(data) == n, (name, off, n, len(data))
    os.pwrite(fd, data, starts[i])
t = time.perf_counter()
with ThreadPoolExecutor(16) as pool:
    list(pool.map(get, range(len(ranges))))
os.close(fd)
print(json.dumps({"seconds": time.perf_counter() - t, "bytes": pos}))
"""

CAT_RANGES = r"""
import json, sys, time
import fsspec
base, ranges = sys.argv[1], json.load(open(sys.argv[2]))
fs = fsspec.filesystem("http")
t = time.perf_counter()
got = fs.cat_ranges([f"{base}/{r[0]}" for r in ranges], [r[1] for r in ranges], [r[1] + r[2] for r in ranges],
                    batch_size=16)
assert all(len(g) == r[2] for g, r in zip(got, ranges))
print(json.dumps({"seconds": time.perf_counter() - t}))
"""


CPU: dict[str, list[float]] = {}  # label -> CPU seconds (user + sys) of each run
SERVER_CPU: dict[str, list[float]] = {}  # label -> the server's CPU seconds during each run
SERVER_PID: list[int] = []


def process_cpu(pid: int) -> float:
    """user + sys seconds of a running process (Linux /proc; 0 elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed(cmd, label: str | None = None) -> tuple[float, str]:
    """(wall seconds, stdout + stderr) of a child process; its CPU time is added to CPU[label]."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_before = process_cpu(SERVER_PID[0]) if SERVER_PID else 0.0
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, env=ENV)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if label:
        cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
        CPU.setdefault(label, []).append(cpu)
        if SERVER_PID:
            SERVER_CPU.setdefault(label, []).append(process_cpu(SERVER_PID[0]) - server_before)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.decode()[-2000:]}")
    return wall, proc.stdout.decode() + proc.stderr.decode()


def server_cpu(label: str) -> str:
    return f"{median(SERVER_CPU[label]):.2f} s" if SERVER_CPU.get(label) else "n/a"


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def start_server(root: str, latency_ms: float):
    proc = subprocess.Popen(
        [sys.executable, os.path.join(REPO, "tools", "http_range_server.py"), root, "--port", "0"]
        + ["--latency-ms", str(latency_ms)],
        stdout=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()  # "serving ROOT at URL"
    return proc, line.rsplit(" ", 1)[-1].strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1G", help="checkpoint size with slots (default 1G)")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--latency-ms", type=float, default=30.0)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--work", help="keep the checkpoint here (reused when present)")
    args = parser.parse_args()

    work = args.work or tempfile.mkdtemp(prefix="ckptio-bench-remote-")
    ENV.pop("PYTHONDONTWRITEBYTECODE", None)  # compiled once (the warm-up strip below), not every run
    ENV["PYTHONPYCACHEPREFIX"] = os.path.join(work, "pycache")
    src = os.path.join(work, "www", "model.ckpt")
    if not os.path.exists(src + ".index"):
        os.makedirs(os.path.dirname(src), exist_ok=True)
        info = build(src, parse_size(args.size), args.shards)
        print(f"built {info['tensors']} tensors in {args.shards} shards at {src}")
        os.sync()  # its bytes written back now, not during the timed runs
    total = sum(os.path.getsize(os.path.join(work, "www", f)) for f in os.listdir(os.path.join(work, "www")))
    local = os.path.join(work, "local", "model.ckpt")
    timed([sys.executable, "-m", "ckptio", "strip", src, local, "-q", "--force"])
    ranges = kept_ranges(src, local)
    kept = sum(n for _, _, n in ranges)
    ranges_file = os.path.join(work, "ranges.json")
    with open(ranges_file, "w") as f:
        json.dump(ranges, f)

    server, url = start_server(os.path.join(work, "www"), args.latency_ms)
    SERVER_PID.append(server.pid)
    try:
        strip_s, inside_s, par_s, par_inside, cat_s, ls_s = [], [], [], [], [], []
        out = os.path.join(work, "out", "model.ckpt")
        for _ in range(args.reps):
            wall, text = timed([sys.executable, "-m", "ckptio", "strip", url + "/model.ckpt", out, "--force"], "a")
            strip_s.append(wall)
            inside_s.append(float(re.search(r" in ([0-9.]+) s", text)[1]))  # its own timing, after startup
            wall, text = timed(
                [sys.executable, "-c", PARALLEL, url, os.path.join(work, "parallel.bin"), ranges_file], "b"
            )
            par_s.append(wall)
            par_inside.append(json.loads(text)["seconds"])
            cat_s.append(timed([sys.executable, "-c", CAT_RANGES, url, ranges_file], "c")[0])
            ls_s.append(timed([sys.executable, "-m", "ckptio", "ls", "--json", url + "/model.ckpt"], "d")[0])
        same = all(
            filecmp.cmp(local + suffix, out + suffix, shallow=False) for suffix in (".index", ".data-00000-of-00001")
        )
    finally:
        server.terminate()
        server.wait()
    mib = 1 << 20
    print(f"checkpoint {total / mib:.0f} MiB in {args.shards} shards, {len(ranges)} kept tensors, {kept / mib:.0f} MiB")
    print(f"latency {args.latency_ms:g} ms per request; median of {args.reps}; each a fresh process")
    print("                                    process   (after startup)  CPU user+sys  (server's)")
    print(
        f"(a) ckptio strip URL out           {median(strip_s):7.2f} s  ({median(inside_s):.2f} s)  {median(CPU['a']):8.2f} s  ({server_cpu('a')})"
    )
    print(
        f"(b) 16-way urllib range download   {median(par_s):7.2f} s  ({median(par_inside):.2f} s)  {median(CPU['b']):8.2f} s  ({server_cpu('b')})"
    )
    print(
        f"(c) fsspec cat_ranges (batch 16)   {median(cat_s):7.2f} s  {'':10}  {median(CPU['c']):8.2f} s  ({server_cpu('c')})"
    )
    print(
        f"(d) ckptio ls --json URL           {median(ls_s):7.2f} s  {'':10}  {median(CPU['d']):8.2f} s  ({server_cpu('d')})"
    )
    print(
        f"strip / parallel download: {median(strip_s) / median(par_s):.2f}x as processes, "
        f"{median(inside_s) / median(par_inside):.2f}x after startup (target: within 2x)"
    )
    print(
        "runs: strip "
        + ", ".join(f"{x:.2f}" for x in strip_s)
        + " s; download "
        + ", ".join(f"{x:.2f}" for x in par_s)
        + " s"
    )
    print(f"strip output identical to a local strip: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
