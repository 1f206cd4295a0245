"""Exports through the store: .safetensors (one file or a sharded set) and .npz written to s3:// get
the local export's bytes, the index last; existing outputs are refused without --force; a failed
write leaves nothing behind, locally or on the object store."""

from __future__ import annotations

import os

import numpy as np
import pytest
from corrupt_support import make_fixture
from s3_support import need

from ckptio.bundle.writer import BundleWriter
from ckptio.cli.main import main
from ckptio.errors import WriteError
from ckptio.store import local
from ckptio.store.remote_output import RemoteSink

pytestmark = pytest.mark.usefixtures("s3")


def cli(*argv) -> int:
    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> str:
    """Tensors whose source order differs from the safetensors layout (dtype rank, then name), a big one
    (copied by the kernel locally), a partitioned one, and Adam slots that strip drops."""
    prefix = str(tmp_path_factory.mktemp("src") / "model.ckpt")
    rng = np.random.default_rng(7)
    with BundleWriter(prefix) as w:
        w.add_array("z/big", rng.standard_normal((512, 160)).astype(np.float32))  # 320 KiB
        w.add_array("z/big/Adam", np.zeros((512, 160), np.float32))
        w.add_array("a/half", np.arange(100, dtype=np.float16))
        w.add_array("m/step", np.array(42, np.int64))
        w.add_array("b/w", rng.standard_normal((3, 4)).astype(np.float32))
        w.add_array("b/w/Adam_1", np.ones((3, 4), np.float32))
        w.add_array("c/bytes", np.arange(7, dtype=np.uint8))
        w.finish(state_file=False)
    return prefix


def _listing(s3, prefix: str) -> dict[str, bytes]:
    return {p.rsplit("/", 1)[-1]: s3.cat_file(p) for p in s3.find(prefix)}


def test_safetensors_to_s3_is_the_local_export(s3, ckpt, tmp_path):
    st = need("safetensors.numpy")
    local_out = tmp_path / "model.safetensors"
    assert cli("strip", ckpt, local_out, "-q") == 0
    assert cli("strip", ckpt, "s3://bkt/export/one/model.safetensors", "-q") == 0
    got = s3.cat_file("bkt/export/one/model.safetensors")
    assert got == local_out.read_bytes()
    loaded, expected = st.load(got), st.load_file(str(local_out))
    assert sorted(loaded) == sorted(expected) == ["a/half", "b/w", "c/bytes", "m/step", "z/big"]
    for name in expected:
        np.testing.assert_array_equal(loaded[name], expected[name])
    assert s3.find("bkt/export/one") == ["bkt/export/one/model.safetensors"]  # no temp or lock files


def test_partitioned_variable_to_s3_is_the_local_export(s3, tmp_path):
    # Its slices are written in output order to the upload, by their place in the tensor locally.
    src = make_fixture("sliced", tmp_path)
    assert cli("strip", src, tmp_path / "s.safetensors", "-q") == 0
    assert cli("strip", src, "s3://bkt/export/sliced/s.safetensors", "-q") == 0
    assert s3.cat_file("bkt/export/sliced/s.safetensors") == (tmp_path / "s.safetensors").read_bytes()


def test_sharded_set_to_s3_is_the_local_set_and_the_index_comes_last(s3, ckpt, tmp_path, monkeypatch):
    local_dir = tmp_path / "set"
    assert cli("strip", ckpt, local_dir / "model.safetensors", "--max-shard-size", "100K", "-q") == 0
    closed: list[str] = []
    real_close = RemoteSink.close
    monkeypatch.setattr(RemoteSink, "close", lambda self: closed.append(self.name) or real_close(self))
    assert cli("strip", ckpt, "s3://bkt/export/set/model.safetensors", "--max-shard-size", "100K", "-q") == 0
    expected = {n: (local_dir / n).read_bytes() for n in os.listdir(local_dir)}
    assert len(expected) >= 3 and "model.safetensors.index.json" in expected
    assert _listing(s3, "bkt/export/set") == expected
    # On an object store a file is visible once its upload completes: the index must be the last one.
    names = [n.rsplit("/", 1)[-1] for n in dict.fromkeys(closed)]
    assert names[-1] == "model.safetensors.index.json" and sorted(names) == sorted(expected)


def test_npz_to_s3_is_the_local_export(s3, ckpt, tmp_path):
    local_out = tmp_path / "model.npz"
    assert cli("strip", ckpt, local_out, "-q") == 0
    assert cli("strip", ckpt, "s3://bkt/export/npz/model.npz", "-q") == 0
    got = s3.cat_file("bkt/export/npz/model.npz")
    assert got == local_out.read_bytes()
    down = tmp_path / "down.npz"
    down.write_bytes(got)
    with np.load(down, allow_pickle=False) as a, np.load(local_out, allow_pickle=False) as b:
        assert sorted(a.files) == sorted(b.files) and "z/big" in a.files
        for name in b.files:
            np.testing.assert_array_equal(a[name], b[name])
    with ckpt_open(down) as ck:  # and ckptio reads it back as the stored byte ranges it wrote
        np.testing.assert_array_equal(ck["b/w"].read(), np.load(local_out)["b/w"])


def ckpt_open(path):
    import ckptio

    return ckptio.open(str(path))


def test_existing_outputs_on_s3_are_refused_without_force(s3, ckpt, capsys):
    url = "s3://bkt/export/exists/model.safetensors"
    assert cli("strip", ckpt, url, "-q") == 0
    before = s3.cat_file("bkt/export/exists/model.safetensors")
    for out in (url, "s3://bkt/export/exists/model.npz"):
        if out.endswith(".npz"):
            assert cli("strip", ckpt, out, "-q") == 0
        assert cli("strip", ckpt, out, "-q") == 2
        assert "already exists" in capsys.readouterr().err
    assert s3.cat_file("bkt/export/exists/model.safetensors") == before
    # --force: a sharded set replaces the single file, which is then gone.
    assert cli("strip", ckpt, url, "--max-shard-size", "100K", "--force", "-q") == 0
    names = sorted(p.rsplit("/", 1)[-1] for p in s3.find("bkt/export/exists"))
    assert "model.safetensors" not in names and "model.safetensors.index.json" in names
    assert "model-00002-of-00002.safetensors" in names  # z/big (320 KiB) alone, the rest in the other
    first = _listing(s3, "bkt/export/exists")
    # The same set again over itself: its index is replaced first, then every file is rewritten.
    assert cli("strip", ckpt, url, "--max-shard-size", "100K", "-q") == 2
    assert cli("strip", ckpt, url, "--max-shard-size", "100K", "--force", "-q") == 0
    assert _listing(s3, "bkt/export/exists") == first


def _fail_writes_to(monkeypatch, fragment: str) -> None:
    """Every sink write into a file whose name contains fragment raises, locally and on s3."""
    for cls in (local.LocalSink, RemoteSink):
        real = cls.write

        def write(self, data, real=real):
            if fragment in self.name:
                raise WriteError("disk on fire", path=self.name)
            return real(self, data)

        monkeypatch.setattr(cls, "write", write)


@pytest.mark.parametrize(
    ("name", "fragment", "extra"),
    [
        ("model.safetensors", "model.safetensors", ()),
        ("model.safetensors", "00002-of", ("--max-shard-size", "100K")),  # after shard 1 is complete
        ("model.safetensors", "index.json", ("--max-shard-size", "100K")),  # every shard complete
        ("model.npz", "model.npz", ()),
    ],
)
def test_a_failed_write_leaves_nothing_locally_or_on_s3(s3, ckpt, tmp_path, monkeypatch, capsys, name, fragment, extra):
    _fail_writes_to(monkeypatch, fragment)
    local_dir = tmp_path / "out"
    assert cli("strip", ckpt, local_dir / name, *extra, "-q") == 1
    assert "disk on fire" in capsys.readouterr().err
    assert os.listdir(local_dir) == []
    key = f"export/fail-{fragment}-{len(extra)}"
    assert cli("strip", ckpt, f"s3://bkt/{key}/{name}", *extra, "-q") == 1
    assert "disk on fire" in capsys.readouterr().err
    assert s3.find(f"bkt/{key}") == []


def test_a_local_output_file_seeks_and_a_stream_refuses(tmp_path):
    from ckptio.bundle.copy import ShardFile
    from ckptio.errors import UnsupportedError
    from ckptio.store.memory import MemoryStore

    output = local.LocalStore().output()
    out = ShardFile(output.create(str(tmp_path / "f.bin")))
    out.write(b"....")
    out.seek(1)
    out.write(b"ab")
    assert out.offset == 3 and out.sink.seekable
    output.commit()
    assert (tmp_path / "f.bin").read_bytes() == b".ab."
    stream = ShardFile(MemoryStore().output().create("m/f.bin"))
    stream.write(b"xy")
    stream.seek(2)  # where it is already: nothing to move
    with pytest.raises(UnsupportedError) as err:
        stream.seek(0)
    assert err.value.path == "m/f.bin" and stream.offset == 2 and not stream.sink.seekable
