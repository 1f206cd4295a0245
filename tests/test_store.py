"""The store layer (issue 13): local, memory and archive stores behind one interface, and one locate()
that finds every path form on any store, including one whose paths are URLs and that cannot list."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

import ckptio
from ckptio.bundle.locate import TABLE_MAGIC, Located, locate
from ckptio.bundle.writer import BundleWriter
from ckptio.errors import CheckpointNotFoundError, ReadError, StateFileWarning, TruncatedError, WrongFileError
from ckptio.store import for_path
from ckptio.store.local import FileSource, LocalStore, coalesce
from ckptio.store.memory import MemorySource, MemoryStore
from tests.support import require_corpus

FAKE_TABLE = b"\0" * 48 + TABLE_MAGIC  # locate only looks at a V1 table's footer magic
LFS = b"version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 9\n"


def _bundle(prefix: str) -> dict[str, np.ndarray]:
    arrays = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.ones(4, np.int64)}
    with BundleWriter(prefix) as w:
        for name, a in arrays.items():
            w.add_array(name, a)
        w.finish()
    return arrays


@pytest.fixture(scope="module")
def bundle_files(tmp_path_factory) -> dict[str, bytes]:
    """A written V2 checkpoint's files by name ('model.ckpt.index', ...)."""
    d = tmp_path_factory.mktemp("bundle")
    _bundle(str(d / "model.ckpt"))
    return {n: (d / n).read_bytes() for n in os.listdir(d) if n != "checkpoint"}  # tests write their own


class NoListing(MemoryStore):
    """A store that cannot list directories (plain HTTP)."""

    def list(self, directory: str) -> list[str]:
        return []


class LocalTree:
    """The local store over a temp directory: files given by '/'-paths relative to it."""

    def __init__(self, root) -> None:
        self.root, self.store = str(root), LocalStore()

    def put(self, files: dict[str, bytes]) -> None:
        for name, data in files.items():
            path = self.path(name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)

    def path(self, name: str) -> str:
        return os.path.join(self.root, *name.split("/"))


class MemoryTree:
    def __init__(self, store: MemoryStore, root: str = "mem/root") -> None:
        self.root, self.store = root, store

    def put(self, files: dict[str, bytes]) -> None:
        for name, data in files.items():
            self.store.write(self.path(name), data)

    def path(self, name: str) -> str:
        return f"{self.root}/{name}" if name else self.root


@pytest.fixture(params=["local", "memory", "url-nolist"])
def tree(request, tmp_path):
    if request.param == "local":
        return LocalTree(tmp_path)
    if request.param == "memory":
        return MemoryTree(MemoryStore())
    return MemoryTree(NoListing(), "https://host/run")


def _in(tree, directory: str, files: dict[str, bytes]) -> dict[str, bytes]:
    return {f"{directory}/{n}": data for n, data in files.items()}


def _loc(tree, name: str) -> Located:
    return locate(tree.store, tree.path(name))


def _lists(tree) -> bool:
    return not isinstance(tree.store, NoListing)


def test_prefix_index_and_data_shard(tree, bundle_files):
    tree.put(_in(tree, "d", bundle_files))
    expected = Located("v2", tree.path("d/model.ckpt"))
    assert _loc(tree, "d/model.ckpt") == expected
    assert _loc(tree, "d/model.ckpt.index") == expected
    assert _loc(tree, "d/model.ckpt.data-00000-of-00001") == expected


def test_data_shard_without_its_index(tree, bundle_files):
    tree.put({"d/model.ckpt.data-00000-of-00001": bundle_files["model.ckpt.data-00000-of-00001"]})
    with pytest.raises(CheckpointNotFoundError, match="is a data shard but .*model.ckpt.index is missing"):
        _loc(tree, "d/model.ckpt.data-00000-of-00001")


def test_directory_with_a_state_file(tree, bundle_files):
    files = _in(tree, "d", bundle_files) | {"d/other.index": bundle_files["model.ckpt.index"]}
    tree.put(files | {"d/checkpoint": b'model_checkpoint_path: "model.ckpt"\n'})
    assert _loc(tree, "d") == Located("v2", tree.path("d/model.ckpt"))
    assert _loc(tree, "d/") == Located("v2", tree.path("d/model.ckpt"))


def test_state_file_with_a_moved_absolute_path(tree, bundle_files):
    tree.put(_in(tree, "d", bundle_files) | {"d/checkpoint": b'model_checkpoint_path: "/gone/away/model.ckpt"\n'})
    assert _loc(tree, "d") == Located("v2", tree.path("d/model.ckpt"))


def test_state_file_naming_a_missing_checkpoint(tree, bundle_files):
    tree.put(_in(tree, "d", bundle_files) | {"d/checkpoint": b'model_checkpoint_path: "ckpt-9"\n'})
    if not _lists(tree):
        with pytest.raises(CheckpointNotFoundError, match="names 'ckpt-9', which does not exist"):
            _loc(tree, "d")
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _loc(tree, "d") == Located("v2", tree.path("d/model.ckpt"))
    assert any(issubclass(w.category, StateFileWarning) for w in caught)


def test_state_files_pointing_at_each_other(tree):
    tree.put({"a/checkpoint": b'model_checkpoint_path: "../b"\n', "b/checkpoint": b'model_checkpoint_path: "../a"\n'})
    tree.put({"a/x": b"x", "b/x": b"x"})  # the directories exist in every store
    with pytest.raises(CheckpointNotFoundError):
        _loc(tree, "a")


def test_directory_with_one_or_two_indexes(tree, bundle_files):
    tree.put(_in(tree, "one", bundle_files))
    tree.put({"two/a.index": bundle_files["model.ckpt.index"], "two/b.index": bundle_files["model.ckpt.index"]})
    if not _lists(tree):  # without a listing nothing names them
        with pytest.raises(CheckpointNotFoundError):
            _loc(tree, "one")
        return
    assert _loc(tree, "one") == Located("v2", tree.path("one/model.ckpt"))
    with pytest.raises(CheckpointNotFoundError, match="holds 2 checkpoints and no usable 'checkpoint' state file"):
        _loc(tree, "two")


def test_saved_model(tree, bundle_files):
    variables = {f"sm/variables/{n.replace('model.ckpt', 'variables')}": d for n, d in bundle_files.items()}
    tree.put(variables | {"sm/saved_model.pb": b"\x08\x01", "empty_sm/saved_model.pb": b"\x08\x01"})
    assert _loc(tree, "sm") == Located("v2", tree.path("sm/variables/variables"))
    with pytest.raises(CheckpointNotFoundError, match=r"this SavedModel \(saved_model.pb\) holds no variables"):
        _loc(tree, "empty_sm")
    with pytest.raises(WrongFileError, match="SavedModel's graph; pass the SavedModel directory"):
        _loc(tree, "sm/saved_model.pb")


def test_v1_file_shards_and_base(tree):
    tree.put({"v1/single.ckpt": FAKE_TABLE})
    tree.put({f"v1/sh-{i:05d}-of-00003": FAKE_TABLE for i in range(3)})
    assert _loc(tree, "v1/single.ckpt") == Located("v1", tree.path("v1/single.ckpt"), (tree.path("v1/single.ckpt"),))
    shards = tuple(tree.path(f"v1/sh-{i:05d}-of-00003") for i in range(3))
    assert _loc(tree, "v1/sh-00001-of-00003") == Located("v1", tree.path("v1/sh"), shards)
    if _lists(tree):
        assert _loc(tree, "v1/sh") == Located("v1", tree.path("v1/sh"), shards)


def test_v1_directory(tree):
    tree.put({"v1/model.ckpt": FAKE_TABLE, "v1/checkpoint": b'model_checkpoint_path: "model.ckpt"\n'})
    assert _loc(tree, "v1") == Located("v1", tree.path("v1/model.ckpt"), (tree.path("v1/model.ckpt"),))


def test_refusals_and_hints(tree, bundle_files):
    tree.put({"x/model.ckpt.index": LFS, "x/notes.txt": b"hello, world", "x/model.meta": b"\n\x02"})
    tree.put({"x/checkpoint": b'model_checkpoint_path: "model.ckpt"\n'})
    with pytest.raises(WrongFileError, match="Git LFS pointer"):
        _loc(tree, "x/model.ckpt.index")
    with pytest.raises(WrongFileError, match="not a TensorFlow checkpoint"):
        _loc(tree, "x/notes.txt")
    with pytest.raises(WrongFileError, match="MetaGraphDef"):
        _loc(tree, "x/model.meta")
    with pytest.raises(WrongFileError, match="text 'checkpoint' state file"):
        _loc(tree, "x/checkpoint")
    hint = "did you mean" if _lists(tree) else "no such checkpoint"
    with pytest.raises(CheckpointNotFoundError, match=hint):
        _loc(tree, "x/mod")


def test_patterns_where_the_store_takes_them(tree, bundle_files):
    if isinstance(tree.store, NoListing):
        return  # a URL's '?' is a query, not a pattern
    tree.put(_in(tree, "p", bundle_files) | {"p/checkpoint": b'model_checkpoint_path: "model.ckpt"\n'})
    assert _loc(tree, "p/*") == Located("v2", tree.path("p/model.ckpt"))
    with pytest.raises(CheckpointNotFoundError, match="no file matches"):
        _loc(tree, "p/zz*")


def test_a_fifo_is_refused_before_it_is_opened(tmp_path):
    fifo = tmp_path / "m.ckpt"
    os.mkfifo(fifo)
    with pytest.raises(ReadError, match="is a FIFO, not a regular file"):
        locate(LocalStore(), str(fifo))


# -- checkpoints over stores ----------------------------------------------------------------------


def test_checkpoint_over_a_memory_store(tmp_path):
    arrays = _bundle(str(tmp_path / "model.ckpt"))
    store = MemoryStore({f"run/{n}": (tmp_path / n).read_bytes() for n in os.listdir(tmp_path)})
    with ckptio.Checkpoint("run", store=store) as ck:
        assert ck.prefix == "run/model.ckpt" and not ck.sequential and ck.reader is ck._reader
        assert sorted(ck) == sorted(arrays)
        for name, a in arrays.items():
            assert np.array_equal(ck[name].read(), a)
        assert ck.bytes_read > 0


def test_v1_checkpoint_over_a_memory_store():
    corpus = require_corpus()
    d = corpus / "v1_savenet"
    store = MemoryStore({f"v1/{n}": (d / n).read_bytes() for n in os.listdir(d)})
    with ckptio.Checkpoint("v1", store=store) as ck, ckptio.open(d) as local:
        assert ck.format == "v1" and sorted(ck) == sorted(local)
        for name in ck:
            assert np.array_equal(ck[name].read(), local[name].read())


def test_open_source_keyword_still_works(tmp_path):
    arrays = _bundle(str(tmp_path / "model.ckpt"))
    opened = []
    with ckptio.Checkpoint(tmp_path / "model.ckpt", open_source=lambda p: opened.append(p) or FileSource(p)) as ck:
        assert np.array_equal(ck["w"].read(), arrays["w"])
    assert opened == [str(tmp_path / "model.ckpt.index"), str(tmp_path / "model.ckpt.data-00000-of-00001")]


def test_archive_store_reads_forward(tmp_path):
    from ckptio.archive import pack

    arrays = _bundle(str(tmp_path / "model.ckpt"))
    pack(str(tmp_path / "model.ckpt"), str(tmp_path / "m.tar.zst"))
    store, inner = for_path(str(tmp_path / "m.tar.zst"))
    assert inner == "" and not store.random_access
    with ckptio.open(tmp_path / "m.tar.zst") as ck:
        assert ck.sequential and [m.name for m in ck.store.stream.members] == ["model.ckpt.index"]  # opened: no further
        assert ck.store.size(ck.store.path_of("model.ckpt.index")) > 0
        assert np.array_equal(ck["w"].read(), arrays["w"])
        assert ck.store.stream.passes == 1
        # a size scans forward to its member; a listing scans every header
        assert ck.store.list(ck.store.name) == ["model.ckpt.data-00000-of-00001", "model.ckpt.index"]
        assert ck.store.size(ck.store.path_of("nothing")) is None
        shard = ck.store.open(ck.store.path_of("model.ckpt.data-00000-of-00001"))
        assert shard.sequential
    store.close()


def test_for_path_routes_local_paths(tmp_path):
    store, path = for_path(f"file://{tmp_path}/model.ckpt")
    assert isinstance(store, LocalStore) and path == f"{tmp_path}/model.ckpt"
    with pytest.raises(TypeError):
        for_path("model.ckpt", anon=True)


# -- sources and outputs --------------------------------------------------------------------------


def test_sources_read_exactly_and_count(tmp_path):
    (tmp_path / "f").write_bytes(b"0123456789")
    for src in (FileSource(tmp_path / "f"), MemorySource(b"0123456789", "m")):
        assert src.read(2, 3) == b"234" and src.bytes_read == 3
        buf = bytearray(4)
        assert src.readinto(8, memoryview(buf)) == 2 and buf[:2] == b"89"
        with pytest.raises(TruncatedError):
            src.read(8, 3)
        src.will_need([(0, 4), (6, 2)])
        src.close()


def test_will_need_ranges_are_coalesced():
    assert coalesce([(100, 10), (0, 10), (5, 10), (1 << 30, 1)], gap=50) == [(0, 15), (100, 10), (1 << 30, 1)]


def test_will_need_advises_the_ranges_and_nothing_between(tmp_path, monkeypatch):
    import ckptio.store.local as local

    (tmp_path / "f").write_bytes(bytes(100))
    advice = []
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, off, n, how: advice.append((off, n, how)))
    monkeypatch.setattr(local, "WILL_NEED_AHEAD", 25)
    src = FileSource(tmp_path / "f")
    src.will_need([(50, 10), (0, 10), (10, 5), (80, 20)])
    src.close()
    assert advice == [(0, 15, os.POSIX_FADV_WILLNEED), (50, 10, os.POSIX_FADV_WILLNEED)]


@pytest.mark.parametrize("kind", ["local", "memory"])
def test_output_commits_in_order_or_leaves_nothing(kind, tmp_path):
    store = LocalStore() if kind == "local" else MemoryStore()
    root = str(tmp_path) if kind == "local" else "out"
    out = store.output()
    for name in ("a.data", "a.index"):
        out.create(f"{root}/{name}").write(name.encode())
    assert store.size(f"{root}/a.index") is None  # nothing visible before commit
    out.commit()
    assert store.size(f"{root}/a.index") == len(b"a.index")
    out = store.output()
    out.create(f"{root}/b.index").write(b"x")
    out.abort()
    assert store.size(f"{root}/b.index") is None
    assert sorted(n for n in store.list(root)) == ["a.data", "a.index"]


class FsspecMemory(MemoryStore):
    """A store whose paths are fsspec memory:// URLs (a stand-in for the remote store)."""

    def __init__(self) -> None:
        import fsspec

        super().__init__(name="memory://")
        self.fs = fsspec.filesystem("memory")

    def write(self, path: str, data: bytes) -> None:
        self.fs.pipe_file(path, data)

    def _info(self, path: str):
        try:
            return self.fs.info(path)
        except FileNotFoundError:
            return None

    def open(self, path: str) -> MemorySource:
        info = self._info(path)
        if info is None or info["type"] != "file":
            raise CheckpointNotFoundError("no such file", path=path)
        return MemorySource(self.fs.cat_file(path), name=path)

    def size(self, path: str) -> int | None:
        info = self._info(path)
        return info["size"] if info is not None and info["type"] == "file" else None

    def is_dir(self, path: str) -> bool:
        return self.fs.isdir(path)

    def list(self, directory: str) -> list[str]:
        try:
            return sorted(p.rstrip("/").rpartition("/")[2] for p in self.fs.ls(directory, detail=False))
        except FileNotFoundError:
            return []

    def glob(self, pattern: str):
        return None

    def isabs(self, path: str) -> bool:
        return "://" in path


def test_locate_over_fsspec_urls(bundle_files):
    store = FsspecMemory()
    tree = MemoryTree(store, f"memory://ckptio-test-{os.getpid()}/run")
    tree.put(_in(tree, "d", bundle_files) | {"d/checkpoint": b'model_checkpoint_path: "model.ckpt"\n'})
    tree.put({f"sm/variables/{n.replace('model.ckpt', 'variables')}": d for n, d in bundle_files.items()})
    expected = Located("v2", tree.path("d/model.ckpt"))
    for name in ("d", "d/", "d/model.ckpt", "d/model.ckpt.index", "d/model.ckpt.data-00000-of-00001"):
        assert _loc(tree, name) == expected, name
    assert _loc(tree, "sm") == Located("v2", tree.path("sm/variables/variables"))
    with pytest.raises(CheckpointNotFoundError):
        _loc(tree, "nothing/here")
    with ckptio.Checkpoint(tree.path("d"), store=store) as ck:
        assert ck.prefix == tree.path("d/model.ckpt") and len(ck) == 2
