"""What keeps a strip fast and small, checked by behaviour rather than by the clock: unchanged
tensors are copied by the kernel, never through Python buffers, and peak memory does not grow
with the checkpoint (tools/bench.py measures the speed)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import ckptio
from ckptio.bundle import copy as copy_mod
from ckptio.bundle.copy import Copier
from ckptio.bundle.readahead import coalesce
from ckptio.bundle.writer import BundleWriter

REPO = Path(__file__).resolve().parents[1]
MIB = 1 << 20


def adam_checkpoint(prefix: str, layers: int, floats_per_tensor: int) -> int:
    """A TF1 Adam checkpoint of `layers` kernels with m and v slots; returns the bytes a strip keeps."""
    rng = np.random.default_rng(layers)
    value = rng.standard_normal(floats_per_tensor, dtype=np.float32)
    with BundleWriter(prefix) as w:
        for i in range(layers):
            for suffix in ("", "/Adam", "/Adam_1"):
                w.add_array(f"layer_{i:03d}/kernel{suffix}", value + i)
        w.add_array("global_step", np.int64(3))
        w.finish()
    return layers * floats_per_tensor * 4 + 8


def test_big_unchanged_tensors_never_pass_through_python(tmp_path, monkeypatch):
    src = str(tmp_path / "src" / "model.ckpt")
    kept = adam_checkpoint(src, 12, 300_000)  # 1.2 MB kernels and an 8-byte global_step
    copied, buffered = [], []
    real_copy, real_buffered = copy_mod._copy_range, copy_mod._copy_checked
    monkeypatch.setattr(copy_mod, "_copy_range", lambda s, o, off, n: copied.append(n) or real_copy(s, o, off, n))
    monkeypatch.setattr(
        copy_mod, "_copy_checked", lambda s, o, off, n, key: buffered.append(n) or real_buffered(s, o, off, n, key)
    )
    out = str(tmp_path / "out" / "model.ckpt")
    report = ckptio.rewrite(src, out, [ckptio.StripOptimizer()])
    assert report.bytes_after == kept
    assert copied == [1_200_000] * 12  # by the kernel
    assert buffered == [8]  # below KERNEL_COPY_MIN: read, checked and written in one go
    assert 8 < copy_mod.KERNEL_COPY_MIN < 1_200_000
    with ckptio.open(out) as ck:
        assert sorted(ck) == ["global_step"] + [f"layer_{i:03d}/kernel" for i in range(12)]
    assert ckptio.verify(out).ok


_PEAK = """
import sys
import time
from ckptio.cli.main import main
rc = main(sys.argv[1:])
# VmHWM, not ru_maxrss: the latter survives exec and so counts the forking parent's pages.
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print("PEAK", rc, hwm * 1024)
"""


def _peak(args) -> int:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", _PEAK, *args], capture_output=True, text=True, env=env, timeout=300)
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("PEAK")]
    assert line, r.stdout + r.stderr
    _, rc, peak = line[-1].split()
    assert rc == "0", r.stderr
    return int(peak)


@pytest.mark.parametrize("args", [[], ["--shards", "2"], ["--no-verify"]])
def test_strip_peak_memory_does_not_grow_with_the_checkpoint(tmp_path, args):
    """Tensors of 24 MiB: holding even one of them would show; the big one has 4x the bytes."""
    small, big = str(tmp_path / "small" / "model.ckpt"), str(tmp_path / "big" / "model.ckpt")
    adam_checkpoint(small, 2, 6 * MIB)
    adam_checkpoint(big, 8, 6 * MIB)
    peaks = [
        _peak(["strip", src, str(tmp_path / f"out{i}" / "model.ckpt"), "-q", *args])
        for i, src in enumerate((small, big))
    ]
    assert peaks[1] < 100 * MIB, peaks
    assert peaks[1] - peaks[0] < 8 * MIB, peaks  # 4x the data, one tensor is 24 MiB


def _python_calls(fn) -> int:
    """How many Python and C function calls fn makes on this thread: a clock-free measure of work."""
    calls = 0

    def count(frame, event, arg):
        nonlocal calls
        if event in ("call", "c_call"):
            calls += 1

    sys.setprofile(count)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return calls


def small_entries(prefix: str, count: int) -> None:
    with BundleWriter(prefix) as w:
        for i in range(count):
            w.add_array(f"block_{i // 100:03d}/var_{i % 100:02d}", np.full(4, i, np.float32))
            if i % 2:
                w.add_array(f"block_{i // 100:03d}/var_{i % 100:02d}/Adam", np.zeros(4, np.float32))
        w.finish()


@pytest.mark.parametrize("through_checker", [False, True])
def test_strip_work_grows_linearly_with_the_entry_count(tmp_path, monkeypatch, through_checker):
    """Once each tensor queued a check and rescanned every pending one: 100,000 entries took
    8 minutes. Four times the entries must cost about four times the calls, not sixteen."""
    if through_checker:  # tiny tensors too go through the kernel copy and the checker thread
        monkeypatch.setattr(copy_mod, "KERNEL_COPY_MIN", 0)
    work = []
    for n in (2_000, 8_000):
        src = str(tmp_path / f"src{n}" / "model.ckpt")
        small_entries(src, n)
        out = str(tmp_path / f"out{n}" / "model.ckpt")
        work.append(_python_calls(lambda src=src, out=out: ckptio.rewrite(src, out, [ckptio.StripOptimizer()])))
        with ckptio.open(out) as ck:
            assert len(ck) == n
    assert 3.5 < work[1] / work[0] < 4.5, work


def test_the_checker_never_lags_more_than_its_backlog(tmp_path, monkeypatch):
    """However slow the checker thread, copies wait for it once BACKLOG segments are queued, so
    a mismatch surfaces soon and the queue cannot grow with the entry count."""
    src = str(tmp_path / "src" / "model.ckpt")
    small_entries(src, 400)
    monkeypatch.setattr(copy_mod, "KERNEL_COPY_MIN", 0)
    queued = {"now": 0, "max": 0}
    real_check, real_crc = Copier._check, copy_mod._crc_segment

    def counting_check(self, fn, *args):
        real_check(self, fn, *args)
        queued["now"] += 1
        queued["max"] = max(queued["max"], queued["now"])

    def slow_crc(*args):
        time.sleep(0.002)
        real_crc(*args)
        queued["now"] -= 1

    monkeypatch.setattr(Copier, "_check", counting_check)
    monkeypatch.setattr(copy_mod, "_crc_segment", slow_crc)
    ckptio.rewrite(src, str(tmp_path / "out" / "model.ckpt"), [ckptio.StripOptimizer()])
    assert queued["now"] == 0
    assert copy_mod.BACKLOG <= queued["max"] <= copy_mod.BACKLOG + 1, queued


def test_copy_buffer_sized_to_what_passes_through_python(tmp_path, monkeypatch):
    """Small tensors go through a buffer as large as they need, not the 8 MiB one bulk copies use."""
    src = str(tmp_path / "src" / "model.ckpt")
    adam_checkpoint(src, 3, 300_000)
    sizes = []
    real_buffer = copy_mod.ShardFile.buffer
    monkeypatch.setattr(
        copy_mod.ShardFile, "buffer", lambda self, n: sizes.append(len(real_buffer(self, n))) or real_buffer(self, n)
    )
    ckptio.rewrite(src, str(tmp_path / "strip" / "model.ckpt"), [ckptio.StripOptimizer()])
    assert sizes == [8]  # only global_step went through Python
    monkeypatch.setattr(copy_mod, "_copy_range", lambda *args: False)  # no kernel copy (another filesystem)
    sizes.clear()
    out = str(tmp_path / "buffered" / "model.ckpt")
    ckptio.rewrite(src, out, [ckptio.StripOptimizer()])
    assert max(sizes) == 2 << 20 < copy_mod.CHUNK  # 1.2 MB tensors: a 2 MiB buffer
    assert ckptio.verify(out).ok


def test_kernel_asked_to_read_exactly_the_kept_tensors(tmp_path, monkeypatch):
    """From a cold cache, readahead would also read the dropped Adam slots beside each weight:
    the copy turns it off and asks for exactly each kept tensor's bytes."""
    src = str(tmp_path / "src" / "model.ckpt")
    adam_checkpoint(src, 4, 300_000)
    with ckptio.open(src) as ck:
        kept = sorted((e.offset, e.size) for n, e in ck.entries().items() if "Adam" not in n)
    advice = []
    real = os.posix_fadvise
    monkeypatch.setattr(
        os, "posix_fadvise", lambda fd, off, n, how: advice.append((off, n, how)) or real(fd, off, n, how)
    )
    ckptio.rewrite(src, str(tmp_path / "out" / "model.ckpt"), [ckptio.StripOptimizer()])
    asked = sorted((off, n) for off, n, how in advice if how == os.POSIX_FADV_WILLNEED)
    assert coalesce(asked, gap=0) == coalesce(kept, gap=0)  # in requests of at most the device's limit
    assert {how for *_, how in advice} == {os.POSIX_FADV_RANDOM, os.POSIX_FADV_WILLNEED}
