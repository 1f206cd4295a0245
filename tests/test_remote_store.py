"""store/remote.py and store/readahead.py: RemoteStore over fsspec's memory:// and over a real HTTP
server on 127.0.0.1 (tools/http_range_server.py, whose request log shows what was fetched), read-ahead
(coalescing, no range fetched twice, bounded memory, failures surfacing on the read that needs them),
and the requests `ls`, `show` and `strip` make."""

from __future__ import annotations

import filecmp
import os
import sys
import threading
import uuid
from pathlib import Path

import numpy as np
import pytest

import ckptio
from ckptio.bundle.writer import BundleWriter
from ckptio.cli.main import main
from ckptio.errors import CheckpointNotFoundError, ReadError
from ckptio.store.readahead import Budget, Readahead
from ckptio.store.remote import RemoteSource, RemoteStore
from ckptio.store.remote_output import RemoteFiles

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))
from http_range_server import serve  # noqa: E402

fsspec = pytest.importorskip("fsspec")
KiB, MiB = 1 << 10, 1 << 20


def _require_http() -> None:
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("http(s):// needs aiohttp (CI is set: remote tests may not skip)", pytrace=False)
        pytest.skip("http(s):// needs aiohttp")


def adam_checkpoint(prefix, *, shards=2, sizes=(300 * KiB, 40 * KiB, 2 * MiB, 4 * KiB, 700 * KiB)) -> None:
    """Weights with /Adam and /Adam_1 slots beside them (a strip keeps a third), over `shards` shards."""
    rng = np.random.default_rng(1)
    with BundleWriter(str(prefix), shards, force=True) as w:
        for i, size in enumerate(sizes):
            for suffix in ("", "/Adam", "/Adam_1"):
                w.add_array(f"layer_{i}/w{suffix}", rng.standard_normal(size // 4).astype(np.float32), i % shards)
        w.add_array("beta1_power", np.float32(0.9))
        w.add_array("beta2_power", np.float32(0.99))
        w.add_array("global_step", np.int64(7))
        w.finish(state_file=False)


@pytest.fixture(scope="module")
def www(tmp_path_factory):
    """(server, root) over a 2-shard Adam checkpoint `m/model.ckpt` and a 4 MiB file `blob`."""
    _require_http()
    root = tmp_path_factory.mktemp("www")
    (root / "m").mkdir()
    adam_checkpoint(root / "m" / "model.ckpt")
    (root / "blob").write_bytes(np.random.default_rng(2).bytes(4 * MiB))
    with serve(root) as server:
        yield server, root


@pytest.fixture
def mem():
    """A RemoteStore over a fresh memory:// directory holding a/x (10 bytes) and a/sub/y."""
    fs = fsspec.filesystem("memory")
    base = f"memory://t-{uuid.uuid4().hex}"
    fs.pipe(base + "/a/x", b"0123456789")
    fs.pipe(base + "/a/sub/y", b"y")
    yield RemoteStore(fs), base
    fs.rm(base, recursive=True)


def _gets(server, path: str) -> list[tuple[int, int]]:
    """(start, end exclusive) of each GET of path, from the server's log."""
    out = []
    for method, p, rng, _status, _sent in server.requests:
        if method == "GET" and p == path:
            a, b = rng.split("=")[1].split("-")
            out.append((int(a), int(b) + 1))
    return out


# -- the Store methods -----------------------------------------------------------------------------


def test_store_methods_over_memory(mem):
    store, base = mem
    assert store.size(base + "/a/x") == 10 and store.is_file(base + "/a/x")
    assert store.size(base + "/a/nope") is None and not store.is_file(base + "/a/nope")  # missing: None, no raise
    assert store.size(base + "/a") is None and store.is_dir(base + "/a") and not store.is_dir(base + "/a/x")
    assert store.list(base + "/a") == ["sub", "x"]
    assert store.list(base + "/nothing") == []
    assert store.glob(base + "/a/*") == [base + "/a/sub", base + "/a/x"] and store.glob(base + "/a/z*") == []
    assert store.isabs(base + "/a/x") and not store.isabs("a/x") and not store.isabs("/train/run/model.ckpt")
    assert store.join(base + "/a", "x") == base + "/a/x"
    assert store.dirname(base + "/a/x") == base + "/a" and store.basename(base + "/a/x") == "x"
    assert store.dirname("gs://bucket/m.index") == "gs://bucket" == store.dirname("gs://bucket/")
    src = store.open(base + "/a/x")
    assert src.read(2, 3) == b"234" and src.requests == 1 and src.bytes_read == 3
    whole = store.open(base + "/a/x", prefetch=True)
    assert whole.read(5, 5) == b"56789" and whole.read(0, 2) == b"01" and whole.requests == 1
    announced = store.open(base + "/a/x")
    announced.will_need([(0, 10)])  # a small file announced whole: one request, kept
    assert announced.read(8, 2) == b"89" and announced.read(0, 10) == b"0123456789" and announced.requests == 1
    with pytest.raises(CheckpointNotFoundError, match="nope"):
        store.open(base + "/a/nope")


def test_store_methods_over_http(www):
    server, root = www
    store = RemoteStore.from_url(server.url)
    blob = server.url + "/blob"
    assert store.size(blob) == 4 * MiB and store.is_file(blob)
    assert store.size(server.url + "/missing") is None and not store.is_file(server.url + "/missing")
    assert not store.is_dir(blob)
    names = ["model.ckpt.data-00000-of-00002", "model.ckpt.data-00001-of-00002", "model.ckpt.index"]
    assert store.list(server.url + "/m") == names == store.list(server.url + "/m/")  # the index page's links
    assert store.list(blob) == []  # no page, no listing
    for directory in (server.url + "/m", server.url + "/m/"):  # a page at a URL ending in '/' (after redirects)
        assert store.is_dir(directory) and not store.is_file(directory) and store.size(directory) is None
    assert store.glob(server.url + "/m/*") is None
    assert store.dirname(blob) == server.url and store.basename(blob) == "blob"
    server.reset()
    assert store.open(blob).read(100, 50) == (root / "blob").read_bytes()[100:150]
    assert _gets(server, "/blob") == [(100, 150)]


def test_will_open_stats_files_together_and_open_reuses_it(www, mem):
    server, root = www
    store = RemoteStore.from_url(server.url)
    blob, missing = server.url + "/blob", server.url + "/missing"
    shard = server.url + "/m/model.ckpt.data-00000-of-00002"
    server.reset()
    store.will_open([blob, missing, shard, blob])
    heads = sorted(p for method, p, *_ in server.requests if method == "HEAD")
    assert heads == ["/blob", "/m/model.ckpt.data-00000-of-00002", "/missing"]
    server.reset()
    assert store.size(blob) == 4 * MiB and store.size(missing) is None
    assert store.open(shard).size == (root / "m" / "model.ckpt.data-00000-of-00002").stat().st_size
    assert server.requests == []  # every size came from the one round of HEADs
    mem_store, base = mem  # a filesystem without async calls: a no-op, sizes asked for as before
    mem_store.will_open([base + "/a/x", base + "/a/nope"])
    assert mem_store.size(base + "/a/x") == 10 and mem_store.size(base + "/a/nope") is None


def test_a_bundle_stats_all_its_shards_when_it_opens_the_first(www):
    server, root = www
    with ckptio.open(server.url + "/m/model.ckpt") as ckpt:
        server.reset()
        ckpt.reader.shard(1)
        heads = sorted(p for method, p, *_ in server.requests if method == "HEAD")
        assert heads == ["/m/model.ckpt.data-00000-of-00002", "/m/model.ckpt.data-00001-of-00002"]
        server.reset()
        assert ckpt.reader.shard(0).size == (root / "m" / "model.ckpt.data-00000-of-00002").stat().st_size
        assert server.requests == []


@pytest.mark.parametrize("use_temp", [True, False])
def test_output_commits_in_order_or_leaves_nothing(mem, use_temp):
    store, base = mem
    out = store.output(use_temp=use_temp)
    assert isinstance(out, RemoteFiles)
    for name in ("m.data-00000-of-00001", "m.index"):
        sink = out.create(f"{base}/o/{name}")
        sink.write(b"abc")
        sink.write(b"de")
        sink.close()
    assert store.is_file(f"{base}/o/m.index") != use_temp  # under temp names until commit
    out.commit()
    assert store.open(f"{base}/o/m.index").read(0, 5) == b"abcde" and store.size(f"{base}/o/m.data-00000-of-00001") == 5

    out = store.output(use_temp=use_temp)
    out.create(f"{base}/p/m.index").write(b"x")
    out.abort()
    assert store.list(f"{base}/p") == []


# -- read-ahead ------------------------------------------------------------------------------------


def test_read_ahead_gives_identical_bytes_and_fetches_no_range_twice(www):
    server, root = www
    data = (root / "blob").read_bytes()
    rng = np.random.default_rng(3)
    ranges, pos = [], 0
    while pos < len(data) - 200 * KiB:  # ranges with gaps: some coalesced, some not
        n = int(rng.integers(1, 150 * KiB))
        ranges.append((pos, n))
        pos += n + int(rng.choice([0, 10, 100 * KiB, 400 * KiB]))
    src = RemoteStore.from_url(server.url).open(server.url + "/blob")
    server.reset()
    src.will_need(ranges)
    for offset, n in ranges:
        buf = memoryview(bytearray(n))
        assert src.readinto(offset, buf) == n and bytes(buf) == data[offset : offset + n]
    gets = sorted(_gets(server, "/blob"))
    assert all(a[1] <= b[0] for a, b in zip(gets, gets[1:])), "a byte was fetched twice"
    assert len(gets) == src.requests < len(ranges)  # coalesced
    assert sum(b - a for a, b in gets) == src.bytes_read
    src.close()


def test_ranges_are_coalesced_within_the_gap_and_split_at_the_request_cap():
    calls = []
    ahead = Readahead(lambda o, n: calls.append((o, n)) or bytes(n), "f", gap=10, max_request=100, window=1 << 30)
    ahead.plan([(0, 10), (15, 10), (40, 10), (50, 250), (30, 5)])
    chunks = [(c.start, c.end) for c in ahead._live]
    # (0,10)+(15,10) coalesce over a 5-byte gap; (40,10) is 15 away; 50..300 joins it up to the
    # 100-byte cap, then splits; (30,5) lies between chunks already made and becomes its own
    assert chunks == [(0, 25), (30, 35), (40, 140), (140, 240), (240, 300)]
    for offset, n in [(0, 10), (15, 10), (40, 10), (50, 250), (30, 5)]:
        assert ahead.take(offset, n) == bytes(n)
    assert ahead._live == [] and ahead.charged == 0
    assert sorted(calls) == [(0, 25), (30, 5), (40, 100), (140, 100), (240, 60)]
    ahead.plan([(0, 10)])  # announced again later: fetched again (it was dropped once read)
    assert ahead.take(0, 10) == bytes(10)
    assert ahead.take(5, 5) is None  # not announced: the caller fetches it


def test_prefetch_memory_is_bounded_by_the_window_and_the_budget():
    fetched = []
    gate = threading.Event()

    def fetch(offset, n):
        gate.wait(5)
        fetched.append(offset)
        return bytes(n)

    budget = Budget(250)
    a = Readahead(fetch, "a", gap=0, max_request=50, window=150, budget=budget)
    b = Readahead(fetch, "b", gap=0, max_request=50, window=150, budget=budget)
    a.plan([(i * 100, 50) for i in range(10)])  # ten 50-byte chunks
    b.plan([(i * 100, 50) for i in range(10)])
    assert a.charged == 150 and b.charged == 100 and budget.used == 250  # a's window, then what is left
    gate.set()
    for chunk in a._live + b._live:
        if chunk.future is not None:
            chunk.future.result(timeout=10)
    assert sorted(fetched) == [0, 0, 100, 100, 200]  # nothing past the caps was requested
    assert a.take(0, 50) == bytes(50)  # read: its memory goes back, and the next request starts
    assert a.charged == 150 and budget.used == 250
    a.close()  # a's share goes to b, which was waiting for room
    assert b.charged == 150 and budget.used == 150
    for i in range(10):  # b reads through, never holding more than its window
        assert b.take(i * 100, 50) == bytes(50)
        assert b.charged <= 150 and budget.used <= 250
    assert budget.used == 0


def test_a_range_not_yet_requested_is_fetched_by_the_reader():
    """A read that gets ahead of the budget fetches on its own thread (so readers never deadlock)."""
    budget = Budget(10)
    budget.used = 10  # someone else holds it all
    ahead = Readahead(lambda o, n: bytes([o % 256]) * n, "f", budget=budget)
    ahead.plan([(7, 3)])
    assert ahead.charged == 0 and ahead._live[0].future is None
    assert ahead.take(7, 3) == b"\x07\x07\x07"
    assert budget.used == 10


def test_a_failure_mid_prefetch_is_a_typed_error_on_the_read_that_needs_it():
    class Flaky(fsspec.AbstractFileSystem):
        def cat_file(self, path, start=None, end=None, **kw):
            if start == 3 * MiB:
                raise ConnectionResetError("peer went away")
            return bytes(end - start)

    src = RemoteSource(Flaky(), "/f", name="flaky://f", size=10 * MiB)
    src.will_need([(i * MiB, 500) for i in range(10)])  # ten requests: the gaps are too wide to coalesce
    for i in range(3):
        assert src.read(i * MiB, 500) == bytes(500)
    with pytest.raises(ReadError, match="flaky://f") as info:
        src.read(3 * MiB, 500)
    assert isinstance(info.value, OSError) and info.value.offset == 3 * MiB and "peer went away" in str(info.value)
    assert src.read(4 * MiB, 500) == bytes(500)  # the others still arrive
    src.close()


# -- what the commands fetch -----------------------------------------------------------------------


def test_ls_makes_at_most_4_requests_and_show_one_data_request(www, capsys):
    server, root = www
    url = server.url + "/m/model.ckpt"
    server.reset()
    assert main(["ls", url]) == 0
    assert len(server.requests) <= 4
    assert all(p == "/m/model.ckpt.index" for _, p, _, _, _ in server.requests)
    with ckptio.open(root / "m" / "model.ckpt") as local:
        entry = local.entries()["layer_2/w"]
    server.reset()
    assert main(["show", url, "layer_2/w"]) == 0
    data = [r for r in server.requests if r[1].startswith("/m/model.ckpt.data") and r[0] == "GET"]
    assert [(r[1], r[2]) for r in data] == [
        (f"/m/model.ckpt.data-0000{entry.shard_id}-of-00002", f"bytes={entry.offset}-{entry.offset + entry.size - 1}")
    ]
    capsys.readouterr()


def test_strip_over_http_equals_the_local_strip(www, tmp_path):
    server, root = www
    assert main(["strip", str(root / "m" / "model.ckpt"), str(tmp_path / "local" / "m"), "-q"]) == 0
    server.reset()
    assert main(["strip", server.url + "/m/model.ckpt", str(tmp_path / "http" / "m"), "-q"]) == 0
    for name in ("m.index", "m.data-00000-of-00001"):
        assert filecmp.cmp(tmp_path / "local" / name, tmp_path / "http" / name, shallow=False), name
    for shard in ("/m/model.ckpt.data-00000-of-00002", "/m/model.ckpt.data-00001-of-00002"):
        gets = sorted(_gets(server, shard))
        assert all(a[1] <= b[0] for a, b in zip(gets, gets[1:])), f"{shard}: a byte was fetched twice"
    kept = os.path.getsize(tmp_path / "local" / "m.data-00000-of-00001")
    assert server.sent() < kept + os.path.getsize(root / "m" / "model.ckpt.index") + 2 * 256 * KiB  # ~ the kept bytes


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_read_ahead_works_in_a_forked_child():
    """A child inherits the fetch pool without its threads; read-ahead there starts a new one."""
    ahead = Readahead(lambda o, n: bytes(n), "f")
    ahead.plan([(0, 10)])
    assert ahead.take(0, 10) == bytes(10)  # the pool now exists in this process
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit status, whatever happens
        code = 1
        try:
            child = Readahead(lambda o, n: b"x" * n, "g")
            child.plan([(0, 3)])
            child._live[0].future.result(timeout=10)
            code = 0 if child.take(0, 3) == b"xxx" else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
