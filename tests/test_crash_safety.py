"""Rewrites never lose a byte: kill -9 mid-write, Ctrl-C, and a file-size limit.

After any of them the destination holds either no checkpoint or a complete valid one, the input
is byte-identical, and (except after kill -9, which no process can clean up after) no temp file
is left behind; the next writer in that directory removes a killed writer's leftovers.
"""

from __future__ import annotations

import hashlib
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from support import ROOT, child_env

import ckptio
from ckptio.bundle.writer import BundleWriter
from ckptio.verify import verify


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A ~96 MiB TF1-style Adam checkpoint in two shards, so a rewrite takes long enough to interrupt."""
    prefix = str(tmp_path_factory.mktemp("src") / "model.ckpt")
    rng = np.random.default_rng(0)
    with BundleWriter(prefix, 2) as w:
        for i in range(8):
            for j, suffix in enumerate(("", "/Adam", "/Adam_1")):
                w.add_array(
                    f"layer_{i}/kernel{suffix}", rng.standard_normal((1024, 1024), dtype=np.float32), shard=(i + j) % 2
                )
        w.add_array("global_step", np.int64(7))
        w.finish()
    return prefix


def _hashes(prefix: str) -> dict:
    d = os.path.dirname(prefix)
    return {n: hashlib.sha256(open(os.path.join(d, n), "rb").read()).hexdigest() for n in sorted(os.listdir(d))}


def _temps(directory) -> list[str]:
    return [n for n in os.listdir(directory) if ".ckptio-tmp-" in n] if os.path.isdir(directory) else []


def _expected(source: str) -> dict:
    with ckptio.open(source) as ck:
        return {n: ck[n].read() for n in ck if "Adam" not in n}


def _assert_none_or_complete(out: str, expected: dict) -> str:
    """'none' if no checkpoint is visible at out, 'complete' if it is whole and equal to expected."""
    if not os.path.exists(out + ".index"):
        return "none"
    with ckptio.open(out) as ck:
        assert verify(ck).ok
        assert set(ck) == set(expected)
        for name, value in expected.items():
            assert np.array_equal(ck[name].read(), value), name
    return "complete"


def test_kill_9_at_random_points(source, tmp_path):
    before = _hashes(source)
    expected = _expected(source)
    rng = np.random.default_rng(1)
    # Time a full run, then kill runs at points spread over it (and some past its end).
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "ckptio", "strip", source, str(tmp_path / "timing" / "m"), "-q", "--shards", "2"],
        check=True,
        env=child_env(),
    )
    full = time.perf_counter() - start
    outcomes = []
    # The last run is killed only after it has exited: on a loaded machine a timed delay alone
    # cannot promise that any kill lands after the finish.
    delays = [*sorted(rng.uniform(0.05, full * 1.1, size=10)), None]
    for i, delay in enumerate(delays):
        out = str(tmp_path / f"run{i}" / "model.ckpt")
        proc = subprocess.Popen(
            [sys.executable, "-m", "ckptio", "strip", source, out, "-q", "--shards", "2"],
            env=child_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if delay is None:
            proc.wait()
        else:
            time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        outcomes.append(_assert_none_or_complete(out, expected))
        if os.path.isdir(os.path.dirname(out)):
            # A later writer in the same directory succeeds and sweeps the dead writer's temp files.
            retry = str(tmp_path / f"run{i}" / "again.ckpt")
            ckptio.rewrite(source, retry, [ckptio.StripOptimizer()])
            assert _temps(os.path.dirname(out)) == []
            assert _assert_none_or_complete(retry, expected) == "complete"
    assert _hashes(source) == before
    assert "none" in outcomes  # the kills really landed mid-write ...
    assert outcomes[-1] == "complete"  # ... and a kill after the finish changes nothing


def test_ctrl_c_cleans_up(source, tmp_path):
    before = _hashes(source)
    out = tmp_path / "o" / "model.ckpt"
    for delay in (0.3, 0.6, 0.9):
        proc = subprocess.Popen(
            [sys.executable, "-m", "ckptio", "strip", source, str(out), "-q", "--force"],
            env=child_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate()
        if proc.returncode == 130:
            assert b"interrupted" in err and b"Traceback" not in err
        else:  # finished before the signal arrived
            assert proc.returncode == 0
        assert _temps(out.parent) == []
        assert _assert_none_or_complete(str(out), _expected(source)) in ("none", "complete")
    assert _hashes(source) == before


def _limit_file_size(limit: int):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG from write() instead of a signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_file_size_limit_fails_cleanly(source, tmp_path):
    before = _hashes(source)
    out = tmp_path / "o" / "model.ckpt"
    proc = subprocess.run(
        [sys.executable, "-m", "ckptio", "strip", source, str(out), "-q"],
        env=child_env(),
        capture_output=True,
        text=True,
        preexec_fn=_limit_file_size(8 << 20),
    )
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert "too large" in lines[0].lower() and "model.ckpt" in lines[0]
    assert not os.path.exists(str(out) + ".index")
    assert _temps(out.parent) == []
    assert _hashes(source) == before


def test_error_midway_leaves_nothing(source, tmp_path):
    """A normal error (a corrupt input tensor found while copying) removes every temp file."""
    broken = tmp_path / "broken"
    broken.mkdir()
    with ckptio.open(source) as ck:  # a kept tensor in the second shard
        entry = next(ck[n].entry for n in ck if "Adam" not in n and ck[n].entry.shard_id == 1)
    for name in os.listdir(os.path.dirname(source)):
        data = open(os.path.join(os.path.dirname(source), name), "rb").read()
        if name.endswith("data-00001-of-00002"):
            data = bytearray(data)
            data[entry.offset + entry.size // 2] ^= 0xFF
        (broken / name).write_bytes(bytes(data))
    out = tmp_path / "o" / "model.ckpt"
    with pytest.raises(ckptio.ChecksumError):
        ckptio.rewrite(str(broken / "model.ckpt"), str(out), [ckptio.StripOptimizer()])
    assert not os.path.exists(str(out) + ".index")
    assert _temps(out.parent) == []


def test_batch_ctrl_c_with_workers_prints_no_traceback(tmp_path):
    """Worker processes ignore SIGINT; the parent reports the interrupt once and exits 130."""
    sample = ROOT / "examples" / "sample"
    inputs = []
    for i in range(400):  # many small inputs: still running whenever the signal lands
        d = tmp_path / f"in{i:03d}"
        d.mkdir()
        for name in os.listdir(sample):
            if name != "checkpoint":
                os.symlink(sample / name, d / name)
        inputs.append(str(d / "model.ckpt-1"))
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ckptio", "strip", "--out-dir", str(out), "--jobs", "2", "-q", *inputs],
        env=child_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while not (out.is_dir() and any(n.endswith(".index") for n in os.listdir(out))):  # workers are busy
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal does: the whole process group
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert b"Traceback" not in err and b"KeyboardInterrupt" not in err, err.decode()
    assert err.decode().strip().splitlines()[-1] == "ckptio: interrupted"


def test_output_must_be_a_prefix(source, tmp_path):
    for bad in (str(tmp_path) + "/", str(tmp_path / "d") + "/."):
        with pytest.raises(ckptio.PlanError, match="prefix"):
            ckptio.rewrite(source, bad, [ckptio.StripOptimizer()])
    assert [n for n in os.listdir(tmp_path) if n.endswith(".index")] == []


def test_a_plan_that_keeps_nothing_is_refused(source, tmp_path):
    with pytest.raises(ckptio.PlanError, match="keeps no tensor"):
        ckptio.rewrite(source, str(tmp_path / "o" / "m"), [ckptio.Select(include=("^nothing$",))])
    assert not os.path.exists(tmp_path / "o" / "m.index")
