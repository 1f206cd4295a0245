"""BundleWriter(store, prefix) on every store: files committed in creation order with the index last,
nothing left by an abort or a failing sink, no overwrite without force; rewrite to a URL writes there
directly (no local temp directory) and to an archive through the store's output."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest

import ckptio
from ckptio.bundle import naming
from ckptio.bundle.writer import BundleWriter
from ckptio.errors import OutputExistsError, WriteError
from ckptio.store.local import LocalStore
from ckptio.store.memory import MemoryStore

fsspec = pytest.importorskip("fsspec")
from ckptio.store.remote import RemoteStore  # noqa: E402

ARRAYS = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.arange(5, dtype=np.int64), "c": np.float32(7)}
SHARDS = 2


class Recorder(dict):
    """A MemoryStore's files: remembers the order in which names became visible."""

    def __init__(self, *args):
        super().__init__(*args)
        self.order: list[str] = []

    def __setitem__(self, key, value):
        self.order.append(key)
        super().__setitem__(key, value)


@pytest.fixture(params=["local", "memory", "object-store", "remote-temp"])
def where(request, tmp_path, monkeypatch):
    """(store, prefix, names visible so far in order, every file there) for one kind of store."""
    kind = request.param
    if kind == "local":
        order: list[str] = []
        real_replace, real_link = os.replace, os.link
        monkeypatch.setattr(os, "replace", lambda a, b, **kw: (order.append(os.fspath(b)), real_replace(a, b, **kw))[1])
        monkeypatch.setattr(os, "link", lambda a, b, **kw: (order.append(os.fspath(b)), real_link(a, b, **kw))[1])
        directory = tmp_path / "out"

        def listing():
            return sorted(os.listdir(directory)) if directory.exists() else []

        yield LocalStore(), str(directory / "model.ckpt"), lambda: [os.path.basename(p) for p in order], listing
        return
    if kind == "memory":
        store = MemoryStore()
        store.files = Recorder()
        yield (
            store,
            "run/model.ckpt",
            lambda: [k.rsplit("/", 1)[-1] for k in store.files.order],
            lambda: sorted(k.rsplit("/", 1)[-1] for k in store.files),
        )
        return
    fs = fsspec.filesystem("memory")
    root = f"/writer-store-{os.getpid()}-{kind}"
    if fs.exists(root):
        fs.rm(root, recursive=True)
    # Object-store semantics: files written under their final names, a file visible once closed.
    use_temp = kind == "remote-temp"
    store = RemoteStore(fs, use_temp=use_temp)
    order = []
    real_open, real_mv = fs.open, fs.mv

    def opened(path, mode="rb", **kw):
        f = real_open(path, mode, **kw)
        if "w" in mode and not use_temp:
            close = f.close
            f.close = lambda: (close(), order.append(path))[0]
        return f

    monkeypatch.setattr(fs, "open", opened)
    monkeypatch.setattr(fs, "mv", lambda a, b, **kw: (order.append(b), real_mv(a, b, **kw))[1])
    yield (
        store,
        f"memory://{root}/model.ckpt",
        lambda: [p.rsplit("/", 1)[-1] for p in order],
        lambda: sorted(p.rsplit("/", 1)[-1] for p in fs.find(root)) if fs.exists(root) else [],
    )
    if fs.exists(root):
        fs.rm(root, recursive=True)


def write(store, prefix, *, force=False, state_file=False, arrays=ARRAYS):
    with BundleWriter(store, prefix, SHARDS, force=force) as w:
        for i, (name, value) in enumerate(arrays.items()):
            w.add_array(name, value, shard=i % SHARDS)
        w.finish(state_file=state_file)


def read_back(store, prefix) -> dict:
    from ckptio.bundle.locate import locate
    from ckptio.checkpoint import Checkpoint

    with Checkpoint(prefix, store=store, located=locate(store, prefix)) as ck:
        return {n: ck[n].read() for n in ck}


FILES = [naming.data_path("model.ckpt", i, SHARDS) for i in range(SHARDS)] + ["model.ckpt.index"]


def test_files_are_committed_in_creation_order_index_last(where):
    store, prefix, order, listing = where
    write(store, prefix)
    assert order() == FILES  # data shards in order, then the index: the commit
    assert listing() == sorted(FILES)
    got = read_back(store, prefix)
    assert got.keys() == ARRAYS.keys() and all(np.array_equal(got[n], ARRAYS[n]) for n in ARRAYS)


def test_abort_leaves_nothing(where):
    store, prefix, _, listing = where
    with pytest.raises(RuntimeError, match="stop"):
        with BundleWriter(store, prefix, SHARDS) as w:
            w.add_array("a", ARRAYS["a"])
            raise RuntimeError("stop")
    assert listing() == []


def test_a_failing_sink_mid_write_leaves_no_index(where):
    store, prefix, order, listing = where
    with pytest.raises(WriteError, match="disk full"):
        with BundleWriter(store, prefix, SHARDS) as w:
            w.add_array("a", ARRAYS["a"], shard=0)

            def full(data):
                raise WriteError("disk full", path=w.shards[1].path)

            w.shards[1].sink.write = full
            w.add_array("b", ARRAYS["b"], shard=1)
            w.finish()
    assert "model.ckpt.index" not in order()
    assert listing() == []


def test_overwrite_is_refused_without_force(where):
    store, prefix, _, listing = where
    write(store, prefix)
    with pytest.raises(OutputExistsError, match="already exists"):
        write(store, prefix)
    newer = {"z": np.arange(3, dtype=np.float32)}
    with BundleWriter(store, prefix, 1, force=True) as w:  # one shard now: the old shards go
        w.add_array("z", newer["z"])
        w.finish(state_file=False)
    got = read_back(store, prefix)
    assert list(got) == ["z"] and np.array_equal(got["z"], newer["z"])
    assert listing() == ["model.ckpt.data-00000-of-00001", "model.ckpt.index"]


def test_the_older_call_form_writes_local_files(tmp_path):
    prefix = str(tmp_path / "m")
    with BundleWriter(prefix, 2, force=False) as w:
        w.add_array("a", ARRAYS["a"], shard=1)
        w.finish(state_file=False)
    with BundleWriter(None, str(tmp_path / "n")) as w:  # store None: local files
        w.add_array("a", ARRAYS["a"])
        w.finish(state_file=False)
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["m.index", "m.data-00000-of-00002", "m.data-00001-of-00002", "n.index", "n.data-00000-of-00001"]
    )


def test_the_input_is_refused_as_output_on_a_memory_store():
    store = MemoryStore()
    write(store, "run/model.ckpt")
    with pytest.raises(OutputExistsError, match="output is the input"):
        BundleWriter(store, "run//model.ckpt", inputs=["./run/model.ckpt"], force=True)


def test_the_state_file_is_written_through_the_store():
    store = MemoryStore()
    write(store, "run/model.ckpt", state_file=True)
    assert b'model_checkpoint_path: "model.ckpt"' in store.files["run/checkpoint"]
    before = store.files["run/checkpoint"]
    write(store, "run/other.ckpt", state_file=True)  # a state file listing another checkpoint is left alone
    assert store.files["run/checkpoint"] == before


# -- rewrite: one write path for every store ------------------------------------------------------------


@pytest.fixture
def source(tmp_path):
    prefix = str(tmp_path / "src" / "model.ckpt")
    rng = np.random.default_rng(0)
    with BundleWriter(prefix) as w:
        for name in ("dense/kernel", "dense/bias"):
            value = rng.standard_normal((300, 40) if "kernel" in name else 40).astype(np.float32)
            w.add_array(name, value)
            w.add_array(name + "/Adam", value * 0.1)
            w.add_array(name + "/Adam_1", value * 0.01)
        w.add_array("global_step", np.int64(5))
        w.finish(state_file=False)
    return prefix


def no_temp_dirs(monkeypatch):
    def refuse(*args, **kw):
        raise AssertionError("a local temp directory was made")

    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    monkeypatch.setattr(tempfile, "TemporaryDirectory", refuse)


def tensors(path) -> dict:
    with ckptio.open(path) as ck:
        return {n: ck[n].read() for n in ck}


def test_strip_to_a_url_writes_there_directly(source, tmp_path, monkeypatch):
    fs = fsspec.filesystem("memory")
    url = f"memory://writer-strip-{os.getpid()}/run/model.ckpt"
    local = str(tmp_path / "local" / "model.ckpt")
    ckptio.rewrite(source, local, [ckptio.StripOptimizer()])
    no_temp_dirs(monkeypatch)
    cwd_before = sorted(os.listdir(tmp_path))
    report = ckptio.rewrite(source, url, [ckptio.StripOptimizer()], num_shards=2)
    assert report.dst == url and len(report.dropped) == 4
    assert sorted(os.listdir(tmp_path)) == cwd_before
    root = fs._strip_protocol(url).rsplit("/", 1)[0]
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.find(root)) == [
        "checkpoint",
        "model.ckpt.data-00000-of-00002",
        "model.ckpt.data-00001-of-00002",
        "model.ckpt.index",
    ]
    want, got = tensors(local), tensors(url)
    assert got.keys() == want.keys() and all(np.array_equal(got[n], want[n]) for n in want)
    with pytest.raises(OutputExistsError, match="already exists"):
        ckptio.rewrite(source, url, [ckptio.StripOptimizer()])
    fs.rm(root.rsplit("/", 1)[0], recursive=True)


def test_rewrite_to_an_object_store_url_commits_the_index_last(source, monkeypatch):
    from ckptio.rewrite_exec import rewrite_local

    fs = fsspec.filesystem("memory")
    root = f"/writer-object-{os.getpid()}"
    closed: list[str] = []
    real_open = fs.open

    def opened(path, mode="rb", **kw):
        f = real_open(path, mode, **kw)
        if "w" in mode:
            close = f.close
            f.close = lambda: (close(), closed.append(path.rsplit("/", 1)[-1]))[0]
        return f

    monkeypatch.setattr(fs, "open", opened)
    no_temp_dirs(monkeypatch)
    with ckptio.open(source) as ck:
        rewrite_local(ck, f"memory://{root}/m", [ckptio.StripOptimizer()], store=RemoteStore(fs, use_temp=False))
    assert closed == ["m.data-00000-of-00001", "m.index", "checkpoint"]
    assert not any(".ckptio-tmp-" in p for p in fs.find(root))
    fs.rm(root, recursive=True)


def test_rewrite_into_an_archive_goes_through_its_output(source, tmp_path, monkeypatch):
    from ckptio.store import archive_output

    packed = []
    real = archive_output.write_archive
    monkeypatch.setattr(
        archive_output, "write_archive", lambda f, m, *a: packed.append([n for n, _ in m]) or real(f, m, *a)
    )
    out = tmp_path / "arch" / "m.tar.zst"
    ckptio.rewrite(source, str(out), [ckptio.StripOptimizer()], num_shards=2)
    # Index first (a reader streams forward), then the shards; nothing staged is left beside it.
    assert packed == [["model.ckpt.index", "model.ckpt.data-00000-of-00002", "model.ckpt.data-00001-of-00002"]]
    assert os.listdir(tmp_path / "arch") == ["m.tar.zst"]
    local = str(tmp_path / "local" / "model.ckpt")
    ckptio.rewrite(source, local, [ckptio.StripOptimizer()])
    want, got = tensors(local), tensors(out)
    assert got.keys() == want.keys() and all(np.array_equal(got[n], want[n]) for n in want)
    with pytest.raises(OutputExistsError, match="the archive already exists"):
        ckptio.rewrite(source, str(out), [ckptio.StripOptimizer()])
