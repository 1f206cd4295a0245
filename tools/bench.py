"""Benchmark ckptio against `cp` and TensorFlow on one machine, in one run.

    python tools/bench.py [--sizes 1G,4G] [--reps 5] [--workdir DIR] [--update-readme]

Builds TF1-style transformer checkpoints trained with Adam (weights 1/3 of the bytes, Adam m and
v 2/3, several hundred tensors) with ckptio's own writer, then measures, alternating and taking
medians: `ckptio strip` wall time and peak RSS, `cp` of a file as large as the kept bytes, the
TensorFlow way (RestoreV2 + SaveV2 of the kept tensors, eager; timed as a whole process like
ckptio, and the two ops alone), `ckptio ls`
on a 100,000-entry checkpoint and on the big one vs `tf.train.list_variables`, `ckptio verify`
throughput, bytes read to get one tensor out, CLI start-up, and zstd archive ratio/throughput.
Before each timed run, `sync` and the page cache set so that exactly the bytes that run reads are
resident (see set_cache); then strip and `cp` once more with a cold cache (input read from disk).
For strip against `cp` alone, cold and warm with more repetitions and paired ratios (and another
source tree's strip in the same rotation), see tools/bench_cold.py (`--cold-only` here runs it).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
ENV = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), TF_CPP_MIN_LOG_LEVEL="3")
# Time commands as they run after a normal install, with their bytecode cached (a warm-up run
# writes it): without this, every ckptio run would recompile its modules from source.
ENV.pop("PYTHONDONTWRITEBYTECODE", None)
ENV.pop("PYTHONUNBUFFERED", None)  # and with the usual buffered output
CKPTIO = [sys.executable, "-m", "ckptio"]


def parse_size(text: str) -> int:
    from ckptio.cli.common import parse_size as p

    return p(text)


def human(n: float) -> str:
    from ckptio.cli.common import human as h

    return h(int(n))


# -- building inputs -------------------------------------------------------------------------------


def build_transformer(prefix: str, weight_bytes: int) -> dict:
    """A TF1 Adam checkpoint: per layer q/k/v/o [d,d], ffn [d,4d]+[4d,d], biases, layer norms; m and v slots."""
    import numpy as np

    from ckptio.bundle.writer import BundleWriter

    d = 1024
    per_layer = (4 * d * d + 8 * d * d + 4 * d + 4 * d + d + 4 * d) * 4
    layers = max(1, round(weight_bytes / per_layer))
    rng = np.random.default_rng(0)
    pool = rng.standard_normal(32 << 20, dtype=np.float32)  # 128 MiB of values to slice tensors from
    shapes = {}
    for i in range(layers):
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
    offset = 0
    with BundleWriter(prefix, force=True) as w:
        for name, shape in sorted(shapes.items()):
            for suffix, scale in (("", 1.0), ("/Adam", 1e-3), ("/Adam_1", 1e-6)):
                n = int(np.prod(shape))
                if offset + n > pool.size:
                    offset = 0
                w.add_array(name + suffix, (pool[offset : offset + n] * scale).reshape(shape))
                offset += 7919
        w.add_array("beta1_power", np.float32(0.9**100))
        w.add_array("beta2_power", np.float32(0.999**100))
        w.add_array("global_step", np.int64(100))
        w.finish()
    kept = sum(int(np.prod(s)) * 4 for s in shapes.values()) + 8
    return {"tensors": 3 * len(shapes) + 3, "kept_bytes": kept, "layers": layers}


def build_many(prefix: str, count: int) -> None:
    """A checkpoint with `count` small entries, for listing speed."""
    import numpy as np

    from ckptio.bundle.writer import BundleWriter

    with BundleWriter(prefix, force=True) as w:
        value = np.zeros(4, np.float32)
        for i in range(count):
            w.add_array(f"model/block_{i // 100:04d}/var_{i % 100:02d}", value)
        w.finish()


# -- measuring ----------------------------------------------------------------------------------------


def run_timed(cmd) -> tuple[float, str]:
    """(wall seconds, stdout) of a child process."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, env=ENV)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.decode()[-2000:]}")
    return wall, proc.stdout.decode()


# Peak RSS must be measured from a small parent: a child forked from this (large) process
# inherits its resident pages before exec, and ru_maxrss would count them.
_RSS_WRAPPER = r"""
import resource, subprocess, sys, time
start = time.perf_counter()
proc = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE)
wall = time.perf_counter() - start
sys.stdout.buffer.write(proc.stdout)
print()
print(wall, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024, proc.returncode)
"""


def run_rss(cmd) -> tuple[float, int, str]:
    """(wall seconds, peak RSS in bytes, stdout) of a child process."""
    _, out = run_timed([sys.executable, "-c", _RSS_WRAPPER, *cmd])
    text, _, last = out.rstrip("\n").rpartition("\n")
    wall, rss, rc = last.split()
    if rc != "0":
        raise RuntimeError(f"{' '.join(cmd)} exited {rc}")
    return float(wall), int(rss), text


def disk_reads() -> int:
    """Bytes this machine has read from block devices so far (/proc/vmstat pgpgin, in KiB)."""
    with open("/proc/vmstat") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("pgpgin ")) * 1024


def sync() -> None:
    os.sync()


_pins: dict[str, list] = {}  # path -> mmaps holding that file's resident ranges in place


def set_cache(path: str, keep=(), drop=(), whole: bool | None = None) -> None:
    """Make the byte ranges `keep` of a file resident and drop `drop` (or the whole file) from the page cache.

    Each timed run starts from the same cache: what it reads is resident, and what it does not
    read is evicted so that the input, the cp source and the outputs all fit in RAM without
    evicting each other mid-run (at 4 GiB kept they would not otherwise). The resident ranges
    stay mapped into this process until the next call for the file: this machine's kernel runs
    DAMON, which pages out unmapped page cache idle for about a minute, and before the pins it
    did so mid-benchmark, at random, sending either tool (strip or cp) to the disk for its input.
    """
    import mmap

    for m in _pins.pop(path, []):
        m.close()
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        if whole is False:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            return
        for offset, n in drop:
            os.posix_fadvise(fd, offset, n, os.POSIX_FADV_DONTNEED)
        pins = []
        for offset, n in _merged([(0, size)] if whole else keep):
            start = offset - offset % mmap.ALLOCATIONGRANULARITY
            pins.append(
                mmap.mmap(
                    fd, offset + n - start, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE, prot=mmap.PROT_READ, offset=start
                )
            )
        _pins[path] = pins
    finally:
        os.close(fd)


def _merged(ranges):
    """(offset, size) ranges, adjacent ones joined and empty ones left out."""
    out = []
    for offset, n in sorted(ranges):
        if n <= 0:
            continue
        if out and offset <= out[-1][0] + out[-1][1]:
            out[-1][1] = max(out[-1][1], offset + n - out[-1][0])
        else:
            out.append([offset, n])
    return [tuple(r) for r in out]


TF_STRIP = r"""
import json, resource, sys, time
import tensorflow as tf
prefix, out, names = sys.argv[1], sys.argv[2], json.loads(open(sys.argv[3]).read())
reader = tf.train.load_checkpoint(prefix)
dtypes = reader.get_variable_to_dtype_map()
start = time.perf_counter()
tensors = tf.raw_ops.RestoreV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                               dtypes=[dtypes[n] for n in names])
tf.raw_ops.SaveV2(prefix=out, tensor_names=names, shape_and_slices=[""] * len(names), tensors=tensors)
wall = time.perf_counter() - start
print(json.dumps({"seconds": wall, "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""

TF_LIST = r"""
import json, sys, time
import tensorflow as tf
start = time.perf_counter()
n = len(tf.train.list_variables(sys.argv[1]))
print(json.dumps({"seconds": time.perf_counter() - start, "n": n}))
"""


def tf_available() -> bool:
    return subprocess.run([sys.executable, "-c", "import tensorflow"], env=ENV, capture_output=True).returncode == 0


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def bench_size(work: str, size: int, reps: int, use_tf: bool, rows: dict) -> None:
    import ckptio
    from ckptio.cli.ls import roles_of

    tag = human(size).replace(" ", "")
    prefix = os.path.join(work, f"adam_{tag}", "model.ckpt")
    marker = prefix + ".built"
    if not os.path.exists(marker):
        print(f"building {tag} checkpoint ...", file=sys.stderr)
        info = build_transformer(prefix, size)
        with open(marker, "w") as f:
            json.dump(info, f)
    info = json.load(open(marker))
    with ckptio.open(prefix) as ck:
        total = sum(e.size for e in ck.entries().values())
        roles = roles_of(ck)
        kept_names = [n for n, r in roles.items() if r != "optimizer"]
        kept = sum(ck.entries()[n].size for n in kept_names)
    names_file = os.path.join(work, f"kept_{tag}.json")
    with open(names_file, "w") as f:
        json.dump(kept_names, f)
    floor = os.path.join(work, f"floor_{tag}.bin")
    if not os.path.exists(floor) or os.path.getsize(floor) != kept:
        with open(prefix + ".data-00000-of-00001", "rb") as src, open(floor, "wb") as dst:
            shutil.copyfileobj(src, dst, 8 << 20)
            dst.truncate(kept)
    data = prefix + ".data-00000-of-00001"
    kept_set = set(kept_names)
    with ckptio.open(prefix) as ck:
        ranges = {n: (e.offset, e.size) for n, e in ck.entries().items()}
    keep = [r for n, r in ranges.items() if n in kept_set]
    drop = [r for n, r in ranges.items() if n not in kept_set]
    # Untimed warm-up runs: bytecode written, and the memory a run touches faulted in once (on a
    # virtual machine the first run after an idle spell otherwise pays for the host's page faults).
    set_cache(data, keep=keep, drop=drop)
    warm_dir = os.path.join(work, "warm-up")
    run_timed(CKPTIO + ["strip", prefix, os.path.join(warm_dir, "model.ckpt"), "-q"])
    run_timed(["cp", floor, os.path.join(warm_dir, "floor.bin")])
    shutil.rmtree(warm_dir)
    strip_t, strip_in, strip_rss, cp_t, tf_t, tf_whole, tf_rss, verify_t = [], [], [], [], [], [], [], []

    def timed_strip() -> tuple[float, int, float]:
        """(wall seconds, peak RSS, ckptio's own seconds) of one strip."""
        out = os.path.join(work, "out_strip", "model.ckpt")
        shutil.rmtree(os.path.dirname(out), ignore_errors=True)
        wall, rss, text = run_rss(CKPTIO + ["strip", prefix, out, "-q", "--json"])
        shutil.rmtree(os.path.dirname(out), ignore_errors=True)
        return wall, rss, json.loads(text)["seconds"]

    def timed_cp() -> float:
        target = os.path.join(work, "out_cp.bin")
        wall = run_timed(["cp", floor, target])[0]
        os.unlink(target)
        return wall

    # Two strip/cp pairs per repetition (they are cheap, and their ratio is the noisiest target).
    order = ("strip", "cp", "tf", "cp", "strip", "verify")
    for rep in range(reps):
        for step in order if rep % 2 == 0 else order[::-1]:
            if step == "verify":  # reads everything: the whole input resident, the cp source not
                set_cache(floor, whole=False)
                set_cache(data, whole=True)
            else:
                set_cache(data, keep=keep, drop=drop)
                set_cache(floor, whole=True)
            sync()
            if step == "strip":
                wall, rss, seconds = timed_strip()
                strip_t.append(wall)
                strip_rss.append(rss)
                strip_in.append(seconds)
            elif step == "cp":
                cp_t.append(timed_cp())
            elif step == "tf" and use_tf:
                out = os.path.join(work, "out_tf", "model.ckpt")
                shutil.rmtree(os.path.dirname(out), ignore_errors=True)
                whole, text = run_timed([sys.executable, "-c", TF_STRIP, prefix, out, names_file])
                res = json.loads(text.strip().splitlines()[-1])
                tf_t.append(res["seconds"])
                tf_whole.append(whole)
                tf_rss.append(res["rss"])
                shutil.rmtree(os.path.dirname(out), ignore_errors=True)
            elif step == "verify":
                wall, _ = run_timed(CKPTIO + ["verify", prefix, "-q"])
                verify_t.append(wall)
    # Cold cache: nothing of the input or the cp source resident, so both read from the disk.
    cold = {"strip": [], "cp": []}  # step -> [(wall seconds, bytes read from disk)]
    for rep in range(reps):
        for step in ("strip", "cp") if rep % 2 == 0 else ("cp", "strip"):
            set_cache(data, whole=False)
            set_cache(floor, whole=False)
            sync()
            before = disk_reads()
            wall = timed_strip()[0] if step == "strip" else timed_cp()
            cold[step].append((wall, disk_reads() - before))
    ls_t = [run_timed(CKPTIO + ["ls", prefix])[0] for _ in range(reps)]
    with ckptio.open(prefix) as ck:
        name = kept_names[len(kept_names) // 2]
        ck[name].read()
        one = {
            "name": name,
            "tensor": ck[name].nbytes,
            "read": ck.bytes_read,
            "index": os.path.getsize(prefix + ".index"),
        }
    rows[tag] = {
        "total": total,
        "kept": kept,
        "tensors": info["tensors"],
        "strip": median(strip_t),
        "strip_in": median(strip_in),
        "strip_rss": max(strip_rss),
        "cp": median(cp_t),
        "tf": median(tf_t) if tf_t else None,
        "tf_whole": median(tf_whole) if tf_whole else None,
        "tf_rss": max(tf_rss) if tf_rss else None,
        "runs": {
            "strip": strip_t,
            "strip_in": strip_in,
            "cp": cp_t,
            "tf": tf_t,
            "tf_whole": tf_whole,
            "verify": verify_t,
            "cold": cold,
        },
        "cold_strip": median([w for w, _ in cold["strip"]]),
        "cold_cp": median([w for w, _ in cold["cp"]]),
        "cold_read_strip": median([n for _, n in cold["strip"]]),
        "cold_read_cp": median([n for _, n in cold["cp"]]),
        "verify": median(verify_t),
        "ls": median(ls_t),
        "one_tensor": one,
    }
    if use_tf:
        rows[tag]["tf_list"], rows[tag]["tf_list_whole"] = tf_list(prefix, reps)
    print(json.dumps({tag: rows[tag]}), file=sys.stderr)


def bench_many(work: str, reps: int, use_tf: bool) -> dict:
    prefix = os.path.join(work, "many", "model.ckpt")
    if not os.path.exists(prefix + ".index"):
        print("building 100,000-entry checkpoint ...", file=sys.stderr)
        build_many(prefix, 100_000)
    ls = [run_timed(CKPTIO + ["ls", prefix])[0] for _ in range(reps)]
    ls_json = [run_timed(CKPTIO + ["ls", "--json", prefix])[0] for _ in range(reps)]
    out = os.path.join(work, "many_out", "model.ckpt")
    strip = []
    for _ in range(reps):  # per-entry cost of a rewrite: 100,000 tiny tensors, nothing dropped
        shutil.rmtree(os.path.dirname(out), ignore_errors=True)
        strip.append(run_timed(CKPTIO + ["strip", prefix, out, "-q"])[0])
    shutil.rmtree(os.path.dirname(out), ignore_errors=True)
    inside, whole = tf_list(prefix, reps) if use_tf else (None, None)
    return {
        "ls": median(ls),
        "ls_json": median(ls_json),
        "strip": median(strip),
        "tf_list": inside,
        "tf_list_whole": whole,
    }


def tf_list(prefix: str, reps: int) -> tuple[float, float]:
    """Medians of tf.train.list_variables: (inside the process, TF import excluded; whole process)."""
    inside, whole = [], []
    for _ in range(reps):
        wall, text = run_timed([sys.executable, "-c", TF_LIST, prefix])
        inside.append(json.loads(text.strip().splitlines()[-1])["seconds"])
        whole.append(wall)
    return median(inside), median(whole)


def bench_startup(reps: int) -> float:
    return median([run_timed(CKPTIO + ["--help"])[0] for _ in range(max(reps, 5))])


def bench_archive(work: str) -> dict | None:
    try:
        from ckptio import archive
    except ImportError:
        return None
    import ml_dtypes
    import numpy as np

    from ckptio.bundle.writer import BundleWriter

    rng = np.random.default_rng(1)
    out = {}
    n = 16 << 20  # 64 MiB of float32 per kind
    w = rng.standard_normal(n, dtype=np.float32) * 0.02
    kinds = {
        "float32 weights": w,
        "bfloat16 weights": w.astype(ml_dtypes.bfloat16),
        "Adam m/v slots": np.concatenate([w[: n // 2] * 1e-3, (w[n // 2 :] ** 2) * 1e-6]).astype(np.float32),
    }
    for label, arr in kinds.items():
        prefix = os.path.join(work, "arch", label.split()[0] + label.split()[1][0], "model.ckpt")
        with BundleWriter(prefix, force=True) as bw:
            for i, chunk in enumerate(np.array_split(arr, 16)):
                bw.add_array(f"w{i}", chunk)
            bw.finish()
        target = prefix + ".tar.zst"
        if os.path.exists(target):
            os.unlink(target)
        start = time.perf_counter()
        archive.pack(prefix, target)
        seconds = time.perf_counter() - start
        size_in = sum(os.path.getsize(prefix + s) for s in (".index", ".data-00000-of-00001"))
        out[label] = {"in": size_in, "out": os.path.getsize(target), "seconds": seconds}
        outdir = os.path.join(work, "arch", "unpacked")
        shutil.rmtree(outdir, ignore_errors=True)
        start = time.perf_counter()
        archive.unpack(target, outdir)
        out[label]["unpack_seconds"] = time.perf_counter() - start
    return out


def machine_line() -> str:
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30)
    fs = subprocess.run(["df", "-T", "/tmp"], capture_output=True, text=True).stdout.splitlines()[-1].split()[1]
    return (
        f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, {fs} disk, Python {platform.python_version()}, "
        f"{datetime.date.today().isoformat()}; bytes read warm in the page cache, `sync` before each run, medians"
    )


def render(rows: dict, many: dict, startup: float, arch: dict | None) -> str:
    lines = [f"Machine: {machine_line()}.", ""]
    lines.append(
        "| checkpoint | ckptio strip (process; in-process) | peak RSS | cp of kept bytes | ckptio/cp | "
        "TF RestoreV2+SaveV2 (process; ops alone) | TF peak RSS | TF/ckptio (process; in-process) | verify | ls |"
    )
    lines.append("|---|---|---|---|---|---|---|---|---|---|")
    for _tag, r in rows.items():
        tf = f"{r['tf_whole']:.2f} s; {r['tf']:.2f} s" if r["tf"] else "n/a"
        tf_rss = human(r["tf_rss"]) if r["tf_rss"] else "n/a"
        ratio_tf = f"{r['tf_whole'] / r['strip']:.1f}x; {r['tf'] / r['strip_in']:.1f}x" if r["tf"] else "n/a"
        lines.append(
            f"| {human(r['total'])}, {r['tensors']} tensors ({human(r['kept'])} kept) | {r['strip']:.2f} s; {r['strip_in']:.2f} s | "
            f"{human(r['strip_rss'])} | {r['cp']:.2f} s | {r['strip'] / r['cp']:.2f}x | {tf} | {tf_rss} | "
            f"{ratio_tf} | {human(r['total'] / r['verify'])}/s ({r['verify']:.2f} s) | {r['ls']:.2f} s |"
        )
    lines.append("")
    tf_list = (
        f"{many['tf_list_whole']:.2f} s as a process, {many['tf_list']:.2f} s without the TF import"
        if many["tf_list"] is not None
        else "n/a"
    )
    lines.append(
        f"- `ckptio ls` of a 100,000-entry checkpoint: {many['ls']:.2f} s ({many['ls_json']:.2f} s with "
        f"`--json`), whole process; `tf.train.list_variables`: {tf_list}. `ckptio strip` of it "
        f"(100,000 tensors rewritten): {many['strip']:.2f} s."
    )
    for tag, r in rows.items():
        runs = r["runs"]
        lines.append(
            f"- {tag}: runs ranged: strip {min(runs['strip']):.2f}-{max(runs['strip']):.2f} s, `cp` "
            f"{min(runs['cp']):.2f}-{max(runs['cp']):.2f} s; against `cp`'s fastest run, strip's median "
            f"is {r['strip'] / min(runs['cp']):.2f}x."
        )
    for tag, r in rows.items():
        lines.append(
            f"- {tag}, cold page cache (input and `cp` source evicted, read from the disk): strip "
            f"{r['cold_strip']:.2f} s, `cp` {r['cold_cp']:.2f} s: {r['cold_strip'] / r['cold_cp']:.2f}x; "
            f"read from disk: strip {human(r['cold_read_strip'])}, `cp` {human(r['cold_read_cp'])}."
        )
    for tag, r in rows.items():
        one = r["one_tensor"]
        if r.get("tf_list") is not None:
            lines.append(
                f"- {tag}: `ckptio ls` {r['ls']:.2f} s (process); `tf.train.list_variables` "
                f"{r['tf_list_whole']:.2f} s as a process, {r['tf_list']:.3f} s without the TF import."
            )
        lines.append(
            f"- {tag}: reading one {human(one['tensor'])} tensor read {human(one['read'])} from disk "
            f"(index {human(one['index'])} + the tensor's bytes)."
        )
    lines.append(f"- `ckptio --help` start-up: {startup * 1000:.0f} ms.")
    if arch:
        lines.append("")
        lines.append("| archive (zstd, level 3, all cores) | input | packed | ratio | pack | unpack |")
        lines.append("|---|---|---|---|---|---|")
        for label, a in arch.items():
            lines.append(
                f"| {label} | {human(a['in'])} | {human(a['out'])} | {a['in'] / a['out']:.2f} | "
                f"{human(a['in'] / a['seconds'])}/s | {human(a['in'] / a['unpack_seconds'])}/s |"
            )
    return "\n".join(lines)


def update_readme(text: str) -> None:
    path = os.path.join(ROOT, "README.md")
    readme = open(path).read()
    start, end = "<!-- bench:start -->", "<!-- bench:end -->"
    if start not in readme:
        raise SystemExit("README.md has no bench markers")
    new = re.sub(re.escape(start) + ".*?" + re.escape(end), start + "\n" + text + "\n" + end, readme, flags=re.S)
    with open(path, "w") as f:
        f.write(new)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1G,4G", help="weight sizes to build (total is ~3x), e.g. 1G,4G")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "ckptio-bench"))
    p.add_argument("--no-tf", action="store_true", help="skip the TensorFlow measurements")
    p.add_argument("--update-readme", action="store_true", help="write the table into README.md")
    p.add_argument("--cold-only", action="store_true", help="only strip vs cp, cold and warm (tools/bench_cold.py)")
    args = p.parse_args()
    if args.cold_only:
        import bench_cold

        sys.argv = [sys.argv[0], "--sizes", args.sizes, "--reps", str(args.reps), "--workdir", args.workdir]
        return bench_cold.main()
    os.makedirs(args.workdir, exist_ok=True)
    use_tf = not args.no_tf and tf_available()
    rows = {}
    for size in [parse_size(s) for s in args.sizes.split(",")]:
        bench_size(args.workdir, size, args.reps, use_tf, rows)
    many = bench_many(args.workdir, args.reps, use_tf)
    startup = bench_startup(args.reps)
    arch = bench_archive(args.workdir)
    text = render(rows, many, startup, arch)
    print(text)
    if args.update_readme:
        update_readme(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
