"""bundle/readahead.py: ranges coalesced in read order, requested a bounded window ahead of the copy,
read errors typed (file, offset), threads stopped on finish and on failure; and its use by the copier."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

import ckptio
from ckptio.bundle import copy as copy_mod
from ckptio.bundle import readahead
from ckptio.bundle.copy import Copier, ShardFile
from ckptio.bundle.readahead import ReadAhead, coalesce
from ckptio.bundle.writer import BundleWriter
from ckptio.errors import ChecksumError, ReadError, TruncatedError
from ckptio.io import FileSource, MemorySource
from ckptio.sstable.coding import crc32c, mask

MiB = 1 << 20


def ahead_threads() -> list:
    return [t for t in threading.enumerate() if t.name == "ckptio-readahead"]


def wait_for(cond, timeout=30.0) -> bool:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            return False
        time.sleep(0.001)
    return True


@pytest.fixture
def source(tmp_path):
    data = os.urandom(6 * MiB + 123)
    path = tmp_path / "src.bin"
    path.write_bytes(data)
    src = FileSource(str(path))
    yield src, data
    src.close()


@pytest.fixture
def out(tmp_path):
    path = str(tmp_path / "out.bin")
    f = ShardFile(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), path)
    yield f
    os.close(f.fd)


@pytest.fixture
def advised(monkeypatch):
    """Record every WILLNEED instead of passing it to the kernel (other advice still goes through)."""
    calls = []
    real = os.posix_fadvise

    def fake(fd, offset, length, advice):
        if advice == os.POSIX_FADV_WILLNEED:
            calls.append((offset, length))
        else:
            real(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", fake)
    return calls


def test_coalesce_joins_small_gaps_and_overlaps_in_read_order():
    ranges = [(0, 10), (10, 5), (100, 10), (100_000, 10), (50, 20), (0, 0), (60, 100)]
    assert coalesce(ranges, gap=90) == [(0, 110), (100_000, 10), (50, 110)]
    assert coalesce(ranges, gap=0) == [(0, 15), (100, 10), (100_000, 10), (50, 110)]
    assert coalesce([], gap=10) == []


def test_requests_cover_the_coalesced_ranges_in_units_in_order(source, advised):
    src, _ = source
    ranges = [(0, 3 * MiB), (3 * MiB + 100, 1000), (5 * MiB, MiB)]  # the first two are 100 bytes apart
    ra = ReadAhead(src, ranges, gap=4096, unit=MiB, window=64 * MiB).start()
    assert wait_for(lambda: not ahead_threads())
    ra.close()
    assert advised == [(0, MiB), (MiB, MiB), (2 * MiB, MiB), (3 * MiB, 1100), (5 * MiB, MiB)]
    assert ra.requested == ra.total == 3 * MiB + 1100 + MiB


def test_never_more_than_the_window_ahead_of_the_copy(source, monkeypatch):
    src, _ = source
    ranges = [(i * MiB // 2, MiB // 2) for i in range(12)]  # adjacent: one 6 MiB request run
    seen = []
    ra = ReadAhead(src, ranges, unit=MiB // 4, window=MiB)
    real = ra._request

    def request(offset, size, buf):
        seen.append((offset + size, ra._done))  # how far requested, how far copied, at each request
        real(offset, size, buf)

    monkeypatch.setattr(ra, "_request", request)
    ra.start()
    assert wait_for(lambda: len(seen) == 4)  # one window's worth, then it waits for the copy
    time.sleep(0.05)
    assert len(seen) == 4
    for offset, size in ranges:
        ra.advance(offset, size)
    assert wait_for(lambda: len(seen) == 24)
    ra.close()
    assert all(end - done <= MiB for end, done in seen)
    assert not ahead_threads()


def test_close_stops_a_thread_waiting_for_the_copy(source):
    src, _ = source
    ra = ReadAhead(src, [(0, 6 * MiB)], unit=MiB, window=MiB).start()
    assert wait_for(lambda: ra.requested == MiB)
    ra.close()
    assert not ahead_threads() and ra.requested == MiB


def test_ranges_copied_out_of_order_or_not_at_all_still_move_the_window(source):
    src, _ = source
    ranges = [(0, MiB), (4 * MiB, MiB), (2 * MiB, MiB), (0, MiB)]  # 4 MiB apart: not joined
    ra = ReadAhead(src, ranges, gap=0, unit=MiB, window=MiB)
    assert ra._plan == ranges
    ra.advance(2 * MiB, MiB)  # the first two were read some other way: passed over
    assert ra._done == 3 * MiB
    ra.advance(5 * MiB + 10, 7)  # never announced: ignored
    assert ra._done == 3 * MiB
    ra.advance(0, MiB)  # the repeat, announced last
    assert ra._done == 4 * MiB
    ra.advance(4 * MiB, MiB)  # behind the copy now: ignored
    assert ra._done == 4 * MiB
    ra.close()


def test_read_mode_reads_the_ranges_through_one_bounded_buffer(source, monkeypatch):
    src, data = source
    got = []
    real = src.readinto

    def readinto(offset, buf):
        n = real(offset, buf)
        got.append((offset, bytes(buf[:n])))
        return n

    monkeypatch.setattr(src, "readinto", readinto)
    ranges = [(10, 2 * MiB), (4 * MiB, 1000)]
    ra = ReadAhead(src, ranges, unit=MiB, advise=False).start()
    assert wait_for(lambda: not ahead_threads())
    ra.close()
    assert [o for o, _ in got] == [10, 10 + MiB, 4 * MiB]
    assert all(len(b) <= MiB for _, b in got)
    assert b"".join(b for _, b in got) == data[10 : 10 + 2 * MiB] + data[4 * MiB : 4 * MiB + 1000]


def test_a_read_error_is_typed_with_file_and_offset_and_raised_by_the_copy(tmp_path):
    path = tmp_path / "short.bin"
    path.write_bytes(b"x" * (3 * MiB))
    src = FileSource(str(path))
    os.truncate(path, MiB + 5)  # shrinks under the reader: the second request comes up short
    ra = ReadAhead(src, [(0, 3 * MiB)], unit=MiB, advise=False).start()
    assert wait_for(lambda: ra.error is not None)
    with pytest.raises(ReadError) as info:
        ra.advance(0, 3 * MiB)
    assert info.value.path == str(path) and info.value.offset == MiB
    with pytest.raises(ReadError):
        ra.close()
    assert not ahead_threads()
    src.close()


def test_a_source_error_keeps_its_own_type(tmp_path):
    src = MemorySource(b"y" * MiB, name="mem")
    src.size = 3 * MiB  # claims more than it holds
    ra = ReadAhead(src, [(0, 3 * MiB)], unit=MiB, advise=False).start()
    assert wait_for(lambda: ra.error is not None)
    with pytest.raises(TruncatedError) as info:
        ra.close()
    assert info.value.path == "mem" and info.value.offset is not None


def test_too_little_to_read_starts_no_thread(source):
    src, _ = source
    assert readahead.start(src, [(0, 1000), (5000, 1000)]) is None


# -- in the copier -----------------------------------------------------------------------------------


def test_copier_reads_ahead_and_copies_identical_bytes(source, out, advised, monkeypatch):
    src, data = source
    exact = []
    monkeypatch.setattr(copy_mod, "_read_exactly", lambda *a: exact.append(a))
    ranges = [(5 * MiB, MiB), (0, 2 * MiB), (2 * MiB + 10, 300_000), (3 * MiB, 100)]
    copier = Copier()
    assert copier.read_ahead(out, src, ranges)
    for offset, size in ranges:
        copier.copy(src, offset, size, out, crc=mask(crc32c(data[offset : offset + size])), key="t")
    copier.wait()
    assert open(out.path, "rb").read() == b"".join(data[o : o + n] for o, n in ranges)
    assert not ahead_threads() and not out.ahead
    assert exact == []  # the read-ahead asked for the kernel-copied ranges already
    requested = sorted(advised)
    for offset, size in ranges:  # every copied byte was asked for
        assert any(o <= offset and offset + size <= o + n for o, n in coalesce(requested, gap=0))


def test_copier_passes_the_hint_on_for_sources_without_a_file(out):
    src = MemorySource(b"z" * MiB, name="mem")
    assert not Copier().read_ahead(out, src, [(0, MiB)])


def test_a_checksum_failure_cancels_the_read_ahead(source, out):
    src, data = source
    copier = Copier()
    copier.read_ahead(out, src, [(0, 100), (MiB, 2 * MiB)])
    ra = out.ahead[id(src)]
    with pytest.raises(ChecksumError):
        copier.copy(src, 0, 100, out, crc=mask(crc32c(data[:100])) ^ 1, key="t")
    copier.cancel()
    assert ra._stop and not ahead_threads() and not out.ahead


def test_strip_requests_the_kept_tensors_and_not_their_slots(tmp_path, advised):
    prefix = str(tmp_path / "src" / "model.ckpt")
    rng = np.random.default_rng(0)
    with BundleWriter(prefix) as w:
        for i in range(6):
            for suffix in ("", "/Adam", "/Adam_1"):
                w.add_array(f"layer_{i}/kernel{suffix}", rng.standard_normal((256, 256), dtype=np.float32))
        w.add_array("global_step", np.int64(7))
        w.finish()
    out = str(tmp_path / "out" / "model.ckpt")
    with ckptio.open(prefix) as ck:
        entries = ck.entries()
        kept = [(e.offset, e.size) for n, e in sorted(entries.items(), key=lambda x: x[1].offset) if "Adam" not in n]
        ckptio.rewrite(ck, out, [ckptio.StripOptimizer()])
    assert wait_for(lambda: not ahead_threads())
    requested = coalesce(sorted(advised), gap=0)
    assert sum(n for _, n in requested) == sum(n for _, n in kept)  # nothing of the slots
    with ckptio.open(out) as a, ckptio.open(prefix) as b:
        for name in a.entries():
            assert np.array_equal(a[name].read(), b[name].read())


def test_request_unit_is_the_device_limit_or_the_smallest_default(source, monkeypatch):
    src, _ = source
    unit = readahead.request_unit(src.fileno())
    assert readahead.UNIT <= unit <= readahead.MAX_UNIT
    monkeypatch.setattr(readahead, "_units", {})
    monkeypatch.setattr(os, "major", lambda dev: 999_999)  # no such device in sysfs
    assert readahead.request_unit(src.fileno()) == readahead.UNIT


def test_an_unannounced_range_longer_than_one_request_is_read_ahead_whole(source, out, advised, monkeypatch):
    src, data = source
    monkeypatch.setattr(readahead, "request_unit", lambda fd: 256 << 10)  # Linux would drop the rest of one ask
    monkeypatch.setattr(copy_mod, "SEGMENT", MiB)
    size = 5 * MiB + 7
    ra = copy_mod._read_exactly(src, 3, size)  # what a copy told of nothing in advance does first
    assert ra._plan == [(3, size)]  # its segments, back to back
    assert wait_for(lambda: ra.requested == 2 * MiB)  # two segments ahead of the copy
    for i in range(6):
        ra.advance(3 + i * MiB, min(MiB, size - i * MiB))
    assert wait_for(lambda: ra.requested == size)
    ra.close()
    assert coalesce(sorted(advised), gap=0) == [(3, size)]
    assert max(n for _, n in advised) <= 256 << 10
    copier = Copier()
    copier.copy(src, 3, size, out, crc=mask(crc32c(data[3 : 3 + size])), key="t")
    copier.wait()
    assert open(out.path, "rb").read() == data[3 : 3 + size]
    assert not ahead_threads()
