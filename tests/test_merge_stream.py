"""ckptio.merge_stream: merge's chunks combined on several threads give the same bytes as one thread
(and as the serial path), in bounded memory, and errors on a worker thread abort the merge cleanly.
"""

from __future__ import annotations

import importlib
import os
import threading
import tracemalloc

import numpy as np
import pytest
from support import read_all
from test_merge import f64, model, write

import ckptio
from ckptio.cli.main import main
from ckptio.errors import ChecksumError, ReadError, TruncatedError

mm = importlib.import_module("ckptio.merge_math")
ms = importlib.import_module("ckptio.merge_stream")

METHODS = [
    dict(method="mean"),
    dict(method="weighted", weights=[1, 2, 3]),
    dict(method="ema", decay=0.9),
    dict(method="task-arithmetic", weights=[0.5, 0.25]),
    dict(method="slerp", weights=[0.3]),
]


@pytest.fixture
def run(tmp_path):
    """Three checkpoints with several combined tensors of float32, bfloat16 and float16."""
    values = [model(i, 100 * (i + 1), shape=(9, 7)) for i in range(3)]
    for i, v in enumerate(values):
        v["emb"] = np.random.default_rng(10 + i).standard_normal((50, 3)).astype(np.float32)
    prefixes = [write(tmp_path / "run" / f"model.ckpt-{100 * (i + 1)}", v) for i, v in enumerate(values)]
    return prefixes, values


def files(prefix) -> tuple[bytes, bytes]:
    prefix = str(prefix)
    with open(prefix + ".index", "rb") as f, open(prefix + ".data-00000-of-00001", "rb") as g:
        return f.read(), g.read()


def merged(prefixes, out, kwargs):
    kwargs = dict(kwargs)
    if kwargs["method"] == "task-arithmetic":
        return ckptio.merge(prefixes[1:], out, base=prefixes[0], **kwargs)
    if kwargs["method"] == "slerp":
        return ckptio.merge(prefixes[:2], out, **kwargs)
    return ckptio.merge(prefixes, out, **kwargs)


@pytest.mark.parametrize("inline", [0, 300], ids=["all-on-threads", "small-ones-inline"])
@pytest.mark.parametrize("kwargs", METHODS, ids=[k["method"] for k in METHODS])
def test_any_number_of_threads_writes_the_same_bytes_as_the_serial_path(run, tmp_path, monkeypatch, kwargs, inline):
    prefixes, values = run
    monkeypatch.setattr(mm, "CHUNK_ELEMENTS", 7)  # many runs per tensor, many tasks in flight across tensors
    monkeypatch.setattr(ms, "INLINE", inline)  # 300: the small tensors on the calling thread, emb (600 B) not
    outs = {}
    for threads in (1, 2, 4):
        outs[threads] = files(merged(prefixes, tmp_path / f"t{threads}" / "m", dict(kwargs, threads=threads)).dst)
    monkeypatch.setattr(ms, "streamable", lambda ckpts: False)  # the one-thread path V1 inputs take
    serial = files(merged(prefixes, tmp_path / "serial" / "m", kwargs).dst)
    assert outs[1] == outs[2] == outs[4] == serial
    if kwargs["method"] == "mean":
        got = read_all(tmp_path / "t4" / "m")
        for name in ("dense/kernel", "emb"):
            want = np.mean(np.stack(f64(values, name)), axis=0).astype(np.float32)
            assert got[name].tobytes() == want.tobytes()


def test_tasks_in_flight_and_memory_are_bounded_whatever_the_tensor_size(tmp_path, monkeypatch):
    monkeypatch.setattr(mm, "CHUNK_ELEMENTS", 1 << 15)  # 128 KiB of float32 per input, 256 KiB as float64
    big = 4 << 20  # elements: 16 MiB of float32 per input, 32 MiB as float64
    prefixes = [
        write(tmp_path / f"m{i}", {"w": np.full(big, i, np.float32), "v": np.full(big // 2, i, np.float32)})
        for i in range(3)
    ]
    running, most, lock = [0], [0], threading.Lock()
    task = ms._task

    def counted(*args):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        try:
            return task(*args)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(ms, "_task", counted)
    tracemalloc.start()
    try:
        ckptio.merge(prefixes, tmp_path / "avg", threads=4)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert 1 <= most[0] <= 4
    # 6 slots of 3 x 128 KiB read + 256 KiB summed + 128 KiB out (4.5 MiB); whole tensors would be 80 MiB
    assert peak < 8 << 20, peak
    got = read_all(tmp_path / "avg")
    assert (got["w"] == 1.0).all() and (got["v"] == 1.0).all()


def test_a_read_error_on_a_worker_thread_aborts_the_merge_and_writes_nothing(run, tmp_path, monkeypatch):
    prefixes, _ = run
    monkeypatch.setattr(mm, "CHUNK_ELEMENTS", 7)
    monkeypatch.setattr(ms, "INLINE", 0)
    from ckptio.io import FileSource

    calls, readinto = [0], FileSource.readinto

    def failing(self, offset, buf):
        calls[0] += 1
        if calls[0] == 20:
            raise ReadError("cannot read: Input/output error", path=self.name, offset=offset)
        return readinto(self, offset, buf)

    monkeypatch.setattr(FileSource, "readinto", failing)
    before = threading.active_count()
    with pytest.raises(ReadError, match="Input/output error"):
        ckptio.merge(prefixes, tmp_path / "out" / "avg", threads=2)
    assert not os.path.exists(tmp_path / "out" / "avg.index")
    assert threading.active_count() == before  # the pool's threads are gone


def test_a_short_or_corrupt_input_is_refused_by_the_threaded_path(run, tmp_path, monkeypatch):
    prefixes, _ = run
    monkeypatch.setattr(mm, "CHUNK_ELEMENTS", 7)
    monkeypatch.setattr(ms, "INLINE", 0)
    with ckptio.open(prefixes[1]) as c:
        e = c.entries()["emb"]
        data = c._reader.shard_path(e.shard_id)
    with open(data, "r+b") as f:  # one flipped bit in the middle of a tensor of many runs
        f.seek(e.offset + e.size // 2)
        byte = f.read(1)
        f.seek(e.offset + e.size // 2)
        f.write(bytes([byte[0] ^ 4]))
    with pytest.raises(ChecksumError, match="checksum does not match"):
        ckptio.merge(prefixes, tmp_path / "out" / "avg", threads=2)
    assert not os.path.exists(tmp_path / "out" / "avg.index")
    os.truncate(data, e.offset + 3)
    with pytest.raises(TruncatedError):
        ckptio.merge(prefixes, tmp_path / "out" / "avg", threads=2)
    assert not os.path.exists(tmp_path / "out" / "avg.index")


def test_cli_threads(run, tmp_path, capsys):
    prefixes, values = run
    assert main(["merge", *prefixes, str(tmp_path / "m"), "--threads", "2", "-q"]) == 0
    want = np.mean(np.stack(f64(values, "emb")), axis=0).astype(np.float32)
    assert read_all(tmp_path / "m")["emb"].tobytes() == want.tobytes()
    assert main(["merge", *prefixes, str(tmp_path / "x"), "--threads", "0"]) == 2
    assert "--threads 0" in capsys.readouterr().err
    with pytest.raises(ckptio.errors.PlanError, match="threads"):
        ckptio.merge(prefixes, tmp_path / "y", threads=0)


def test_read_ahead_asks_for_every_byte_of_every_input_once(run, tmp_path, monkeypatch):
    prefixes, _ = run
    monkeypatch.setattr(mm, "CHUNK_ELEMENTS", 7)
    monkeypatch.setattr(ms, "INLINE", 0)
    monkeypatch.setattr(ms, "READ_AHEAD", 64)  # two runs of float32 ahead
    asked = []

    def advise(fd, offset, n, advice):  # which input: the file the descriptor is open on
        name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
        if ".data" in name:  # not an .index, which its reader announces whole on opening
            asked.append((name.split(".data")[0], offset, n, advice))

    monkeypatch.setattr(ms.os, "posix_fadvise", advise)
    ckptio.merge(prefixes, tmp_path / "m", threads=2)
    assert {a for *_, a in asked} == {os.POSIX_FADV_WILLNEED}
    want = set()
    for p in prefixes:
        with ckptio.open(p) as c:
            for name in ("dense/kernel", "dense/bias", "dense/scale", "emb"):
                e = c.entries()[name]
                want |= {(os.path.basename(p), b) for b in range(e.offset, e.offset + e.size)}
    got = [(name, b) for name, offset, n, _ in asked for b in range(offset, offset + n)]
    assert len(got) == len(set(got)) and set(got) == want


@pytest.mark.parametrize("kwargs", METHODS, ids=[k["method"] for k in METHODS])
def test_runs_combined_in_blocks_write_the_same_bytes_as_whole_runs(run, tmp_path, monkeypatch, kwargs):
    prefixes, _ = run
    monkeypatch.setattr(ms, "INLINE", 0)
    monkeypatch.setattr(mm, "CHUNK_ELEMENTS", 20)  # runs of 20 elements read in blocks of 7, 7 and 6
    monkeypatch.setattr(ms, "BLOCK_ELEMENTS", 7)
    blocks = files(merged(prefixes, tmp_path / "blocks" / "m", dict(kwargs, threads=2)).dst)
    monkeypatch.setattr(ms, "BLOCK_ELEMENTS", 1 << 20)  # one block a run
    whole = files(merged(prefixes, tmp_path / "whole" / "m", dict(kwargs, threads=2)).dst)
    monkeypatch.setattr(ms, "streamable", lambda ckpts: False)
    serial = files(merged(prefixes, tmp_path / "serial" / "m", kwargs).dst)
    assert blocks == whole == serial


def test_crc32c_combine_joins_the_crc32c_of_two_runs():
    from ckptio.sstable.coding import crc32c

    rng = np.random.default_rng(3)
    for n1, n2 in [(0, 0), (0, 5), (5, 0), (1, 1), (7, 4096), (4096, 7), (1 << 17, 12345), (3, 1 << 21)]:
        a, b = rng.bytes(n1), rng.bytes(n2)
        assert ms.crc32c_combine(crc32c(a), crc32c(b), len(b)) == crc32c(a + b)


def test_bfloat16_narrowing_without_ml_dtypes_rounds_as_ml_dtypes_does():
    from ml_dtypes import bfloat16 as bf16

    rng = np.random.default_rng(4)
    bits = rng.integers(0, 1 << 32, 100_000, dtype=np.uint64).astype(np.uint32)
    with np.errstate(all="ignore"):
        f32 = bits.view(np.float32).astype(np.float64)  # every kind of float32: NaNs, infs, subnormals
        mid = ((bits & 0xFFFF0000) | 0x8000).view(np.float32).astype(np.float64)  # bfloat16 midpoints
    x = np.concatenate(
        [
            rng.standard_normal(100_000) * 10.0 ** rng.integers(-45, 39, 100_000),
            f32,
            np.nextafter(f32, np.inf),
            mid,
            np.nextafter(mid, np.inf),
            np.nextafter(mid, -np.inf),
            [0.0, -0.0, np.inf, -np.inf, 3.3895313892515355e38, 3.4e38, 1e300, -1e300, 5e-324, -1e-41],
            np.array([0x7FF4000000000000, 0xFFF0000000000001, 0x7FF7FFFFFFFFFFFF], np.uint64).view(np.float64),
        ]
    )
    with np.errstate(all="ignore"):
        want = x.astype(bf16).view(np.uint16)
        got = np.empty(x.size, np.uint16)
        mm.to_bfloat16(x, got)
        as_bf16 = np.empty(x.size, bf16)
        mm.to_bfloat16(x, as_bf16)
    assert (got == want).all(), x[got != want][:5]
    assert (as_bf16.view(np.uint16) == want).all()


def test_merge_of_bfloat16_needs_no_ml_dtypes_import(run, tmp_path):
    import subprocess
    import sys

    prefixes, _ = run
    code = "import sys, ckptio; ckptio.merge(sys.argv[1:4], sys.argv[4]);print('ml_dtypes' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code, *prefixes, str(tmp_path / "m")], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"  # its import costs more CPU time than combining a gigabyte


def test_widen_turns_only_bfloat16_and_its_bits_into_float32():
    from ml_dtypes import bfloat16 as bf16

    x = np.array([1.5, -3.25, 0.0, np.inf, 1e-40, 65504.0], np.float32)
    as_bf16 = x.astype(bf16)
    want = as_bf16.astype(np.float32)
    assert mm.widen(as_bf16).tobytes() == want.tobytes()
    assert mm.widen(as_bf16.view(np.uint16)).tobytes() == want.tobytes()
    for other in (x.astype(np.float16), np.arange(6, dtype=np.int16), x):  # 2-byte types that are not bfloat16
        assert mm.widen(other) is other


def test_bfloat16_means_on_and_near_midpoints_round_as_ml_dtypes_does():
    from ml_dtypes import bfloat16 as bf16

    rng = np.random.default_rng(5)
    a, b = (rng.standard_normal(50_000).astype(bf16).astype(np.float64) for _ in range(2))
    mean = (a + b) / 2  # a fifth land exactly on a bfloat16 midpoint: true ties, rounded to even
    x = np.concatenate([mean, np.nextafter(mean, np.inf), np.nextafter(mean, -np.inf), [np.nan, -np.nan]])
    got = np.empty(x.size, np.uint16)
    with np.errstate(all="ignore"):
        mm.to_bfloat16(x, got, mm.Combiner("mean", 14)._buffer)  # with reused buffers, as merge calls it
        want = x.astype(bf16).view(np.uint16)
    assert (got == want).all(), x[got != want][:5]


@pytest.mark.parametrize("n", [2, 3])
def test_bfloat16_mean_on_threads_and_serially_equals_ml_dtypes_rounding(tmp_path, monkeypatch, n):
    from ml_dtypes import bfloat16 as bf16

    rng = np.random.default_rng(6)
    values = [
        {"w": rng.standard_normal(4099).astype(bf16), "h": rng.standard_normal(77).astype(np.float16)} for _ in range(n)
    ]
    prefixes = [write(tmp_path / f"in{i}", v) for i, v in enumerate(values)]
    monkeypatch.setattr(mm, "CHUNK_ELEMENTS", 1000)  # odd-sized last runs, several tasks per tensor
    monkeypatch.setattr(ms, "BLOCK_ELEMENTS", 333)
    monkeypatch.setattr(ms, "INLINE", 0)
    threaded = files(ckptio.merge(prefixes, tmp_path / "t" / "m", threads=2).dst)
    monkeypatch.setattr(ms, "streamable", lambda ckpts: False)
    serial = files(ckptio.merge(prefixes, tmp_path / "s" / "m").dst)
    assert threaded == serial
    got = read_all(tmp_path / "t" / "m")
    for name, dtype in (("w", bf16), ("h", np.float16)):
        with np.errstate(all="ignore"):
            want = (np.sum(np.stack(f64(values, name)), axis=0) / n).astype(dtype)  # summed in order, then divided
        assert got[name].tobytes() == want.tobytes()
