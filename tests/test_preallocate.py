"""Output shards are preallocated to their planned size: a full disk fails before any copying,
an over-estimate is given back, and filesystems without fallocate still work."""

from __future__ import annotations

import ctypes
import errno
import os

import numpy as np
import pytest
from support import read_all, same

import ckptio
from ckptio import output as ckio  # preallocate and its libc lookup live on the output side
from ckptio.bundle import writer as writer_mod
from ckptio.bundle.writer import BundleWriter
from ckptio.cli.main import main


@pytest.fixture
def src(tmp_path):
    """A TF1-style Adam checkpoint in two shards, ~3 MiB."""
    prefix = str(tmp_path / "src" / "model.ckpt")
    rng = np.random.default_rng(0)
    with BundleWriter(prefix, 2) as w:
        for i in range(4):
            for suffix in ("", "/Adam", "/Adam_1"):
                w.add_array(f"layer_{i}/kernel{suffix}", rng.standard_normal((256, 256), dtype=np.float32), shard=i % 2)
        w.add_array("global_step", np.int64(7))
        w.finish()
    return prefix


def _files(directory) -> list[str]:
    return sorted(os.listdir(directory)) if os.path.isdir(directory) else []


def _fake_fallocate(err: int, calls: list):
    def fallocate(fd, mode, offset, length):
        calls.append(length)
        ctypes.set_errno(err)
        return -1

    return fallocate


def test_each_shard_is_reserved_at_its_final_size(src, tmp_path, monkeypatch):
    calls = []
    real = ckio.preallocate  # the local store's sinks reserve through it (store/local.py)

    def spy(fd, length):
        calls.append(length)
        return real(fd, length)

    monkeypatch.setattr(ckio, "preallocate", spy)
    out = str(tmp_path / "out" / "model.ckpt")
    ckptio.rewrite(src, out, [ckptio.StripOptimizer()], num_shards=2)
    sizes = [os.path.getsize(f"{out}.data-{i:05d}-of-00002") for i in range(2)]
    assert calls == sizes and sum(sizes) > 0
    want = {n: a for n, a in read_all(src).items() if "Adam" not in n}
    got = read_all(out)
    assert got.keys() == want.keys() and all(same(got[n], want[n]) for n in want)


def test_an_over_estimate_is_given_back(tmp_path):
    prefix = str(tmp_path / "model.ckpt")
    with BundleWriter(prefix) as w:
        w.reserve(0, 64 << 20)
        assert w.shards[0].reserved == 64 << 20, "this filesystem should support fallocate"
        w.add_array("x", np.arange(10, dtype=np.float32))
        w.finish()
    st = os.stat(prefix + ".data-00000-of-00001")
    assert st.st_size == 40
    assert st.st_blocks * 512 < (1 << 20)  # the 64 MiB of reserved blocks were released
    assert list(read_all(prefix)["x"]) == list(range(10))


@pytest.mark.parametrize("err, text", [(errno.ENOSPC, "No space left on device"), (errno.EDQUOT, "quota exceeded")])
def test_a_full_disk_fails_before_copying_anything(src, tmp_path, monkeypatch, capsys, err, text):
    calls, copies = [], []
    monkeypatch.setattr(ckio, "_fallocate", _fake_fallocate(err, calls))
    from ckptio.bundle import copy as copy_mod

    real_copy = copy_mod._copy_range
    monkeypatch.setattr(copy_mod, "_copy_range", lambda *a: copies.append(a) or real_copy(*a))
    before = {n: open(os.path.join(os.path.dirname(src), n), "rb").read() for n in _files(os.path.dirname(src))}
    out = tmp_path / "out" / "model.ckpt"
    rc = main(["strip", src, str(out), "-q"])
    err_text = capsys.readouterr().err
    assert rc == 1
    lines = err_text.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err_text
    assert "model.ckpt.data-00000-of-00001" in lines[0] and text in lines[0] and "reserve" in lines[0]
    assert calls and copies == []
    assert _files(out.parent) == []  # no checkpoint, no temp file
    assert {n: open(os.path.join(os.path.dirname(src), n), "rb").read() for n in _files(os.path.dirname(src))} == before


def test_the_api_raises_a_write_error(src, tmp_path, monkeypatch):
    monkeypatch.setattr(ckio, "_fallocate", _fake_fallocate(errno.ENOSPC, []))
    with pytest.raises(ckptio.errors.WriteError) as info:
        ckptio.rewrite(src, str(tmp_path / "o" / "model.ckpt"), [ckptio.StripOptimizer()])
    assert info.value.path.endswith("model.ckpt.data-00000-of-00001")


@pytest.mark.parametrize("err", [errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL])
def test_filesystems_without_fallocate_still_work(src, tmp_path, monkeypatch, err):
    calls = []
    monkeypatch.setattr(ckio, "_fallocate", _fake_fallocate(err, calls))
    out = str(tmp_path / "out" / "model.ckpt")
    ckptio.rewrite(src, out, [ckptio.StripOptimizer()])
    assert calls
    want = {n: a for n, a in read_all(src).items() if "Adam" not in n}
    got = read_all(out)
    assert got.keys() == want.keys() and all(same(got[n], want[n]) for n in want)
    assert ckptio.verify(out).ok


def test_verify_takes_a_path_as_well_as_a_checkpoint(src):
    by_path = ckptio.verify(src)
    with ckptio.open(src) as ck:
        by_object = ckptio.verify(ck)
    assert by_path.ok and by_object.ok and by_path.problems == by_object.problems == []
