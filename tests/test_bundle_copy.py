"""bundle/copy.py's Copier on its own: exact bytes by either path, a mismatch reported, cancel stops the checker."""

from __future__ import annotations

import os
import threading
import time

import pytest

from ckptio.bundle import copy as copy_mod
from ckptio.bundle.copy import Copier, ShardFile
from ckptio.errors import ChecksumError, TruncatedError
from ckptio.io import FileSource, MemorySource
from ckptio.sstable.coding import crc32c, mask

BIG = copy_mod.KERNEL_COPY_MIN + 12_345  # goes through the kernel copy and the checker thread


def checker_threads() -> list:
    return [t for t in threading.enumerate() if t.name == "ckptio-crc"]


@pytest.fixture
def source(tmp_path):
    data = os.urandom(8) + bytes(range(256)) * (BIG // 256 + 1)
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


def good_crc(data: bytes, offset: int, size: int) -> int:
    return mask(crc32c(data[offset : offset + size]))


@pytest.mark.parametrize("size", [100, BIG])
def test_copies_exactly_the_range_and_checks_it(source, out, size, monkeypatch):
    src, data = source
    kernel = []
    real = copy_mod._copy_range
    monkeypatch.setattr(copy_mod, "_copy_range", lambda *a: kernel.append(a[3]) or real(*a))
    copier = Copier()
    copier.copy(src, 8, size, out, crc=good_crc(data, 8, size), key="t")
    copier.wait()
    assert out.offset == size
    assert open(out.path, "rb").read() == data[8 : 8 + size]
    assert kernel == ([] if size < copy_mod.KERNEL_COPY_MIN else [size])
    assert not checker_threads()


def test_a_mismatch_of_a_small_range_is_raised_at_once(source, out):
    src, data = source
    with pytest.raises(ChecksumError, match="checksum does not match"):
        Copier().copy(src, 8, 100, out, crc=good_crc(data, 9, 100), key="t")


def test_a_mismatch_found_by_the_checker_is_raised_by_wait(source, out):
    src, data = source
    copier = Copier()
    copier.copy(src, 8, BIG, out, crc=good_crc(data, 8, BIG) ^ 1, key="t")  # the checker reads meanwhile
    with pytest.raises(ChecksumError) as info:
        copier.wait()
    assert info.value.key == "t" and info.value.offset == 8
    assert not checker_threads()
    copier.wait()  # reported once; the copier is usable again


def test_unchecked_copies_never_start_the_checker(source, out):
    src, data = source
    copier = Copier()
    copier.copy(src, 0, BIG, out, crc=None)
    assert not checker_threads()
    copier.wait()
    assert open(out.path, "rb").read() == data[:BIG]


def test_a_range_past_the_end_of_the_source_is_refused(out):
    with pytest.raises(TruncatedError, match="past the end"):
        Copier().copy(MemorySource(b"abc"), 1, 3, out, crc=None, key="t")


def test_cancel_drops_queued_checks_and_stops_the_thread(source, out, monkeypatch):
    src, data = source
    monkeypatch.setattr(copy_mod, "SEGMENT", 4096)  # many segments queued for the checker
    monkeypatch.setattr(copy_mod, "BACKLOG", 1000)  # copy() does not wait for the held checker
    started, release, ran = threading.Event(), threading.Event(), []
    real = copy_mod._crc_segment

    def held_check(*args):
        ran.append(args[1])
        started.set()
        release.wait(30)  # the first check holds the checker until cancel() is under way
        real(*args)

    monkeypatch.setattr(copy_mod, "_crc_segment", held_check)
    copier = Copier()
    copier.copy(src, 8, BIG, out, crc=good_crc(data, 8, BIG) ^ 1, key="t")  # wrong: must not surface
    checker = copier._checker
    assert started.wait(30) and checker_threads()

    def release_once_cancelled():
        while not checker._cancelled:
            time.sleep(0.001)
        release.set()

    threading.Thread(target=release_once_cancelled, daemon=True).start()
    copier.cancel()
    assert not checker_threads()
    assert ran == [8]  # the other segments were dropped, the mismatched last one among them
    copier.wait()  # nothing left to report
