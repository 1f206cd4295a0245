"""Remote checkpoints: byte-range reads against a real HTTP server on 127.0.0.1 that honours Range
(tools/http_range_server.py) with the bytes it sends counted, URL resolution like local paths,
and writes (upload, pack, rewrite) to fsspec's memory:// filesystem, committed only when complete."""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
from support import same

import ckptio
from ckptio import archive, remote
from ckptio.bundle import dtypes
from ckptio.bundle.writer import BundleWriter
from ckptio.cli.main import main
from ckptio.errors import (
    CheckpointNotFoundError,
    MissingShardError,
    OutputExistsError,
    UnsupportedError,
    WrongFileError,
)

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))
from http_range_server import parse_range, serve  # noqa: E402

fsspec = pytest.importorskip("fsspec")
UINT8 = dtypes.BY_NAME["uint8"].enum
MiB = 1 << 20


def _require_http() -> None:
    try:
        import aiohttp  # noqa: F401  (fsspec's http:// filesystem needs it)
    except ImportError:
        msg = "http(s):// needs aiohttp: pip install 'ckptio[remote]'"
        if os.environ.get("CI"):
            pytest.fail(msg + " (CI is set: remote tests may not skip)", pytrace=False)
        pytest.skip(msg)


def make_checkpoint(prefix, sizes_by_shard, *, seed=0) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    kept = {}
    with BundleWriter(str(prefix), len(sizes_by_shard)) as w:
        for shard, sizes in enumerate(sizes_by_shard):
            for i, size in enumerate(sizes):
                kept[f"s{shard}/t{i:03d}"] = data = rng.bytes(size)
                w.add_bytes(f"s{shard}/t{i:03d}", UINT8, (size,), [data], shard)
        w.finish(state_file=False)
    return kept


def same_tensors(a, b) -> None:
    assert list(a) == list(b)
    entries = a.entries()
    for name in sorted(entries, key=lambda n: (entries[n].shard_id, entries[n].offset)):
        try:
            want = a[name].read()
        except ckptio.UnsupportedError:
            continue
        assert same(b[name].read(), want), name


@pytest.fixture(scope="module")
def www(tmp_path_factory, corpus):
    """(server, root): a Range-capable HTTP server on 127.0.0.1 over copies of corpus checkpoints,
    a SavedModel layout, and a synthetic 2-shard checkpoint with 1 MiB tensors (plus its archive)."""
    _require_http()
    root = tmp_path_factory.mktemp("www")
    for name in ("tf2_keras_weights_2shard", "tf1_t2t_transformer", "v1_vocal_adam", "est_tfx_taxi_2019"):
        shutil.copytree(corpus / name, root / name)
    (root / "savedmodel" / "variables").mkdir(parents=True)
    for f in os.listdir(corpus / "sm_a2c_2shard"):
        shutil.copy(corpus / "sm_a2c_2shard" / f, root / "savedmodel" / "variables" / f)
    (root / "big").mkdir()
    make_checkpoint(root / "big" / "m", [[MiB, MiB, MiB], [2 * MiB]])
    archive.pack(root / "big" / "m", root / "big.tar.zst")
    for p in root.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    with serve(root) as server:
        yield server, root


def _path(server, url: str) -> str:
    return url[len(server.url) :]


# -- the test server itself ----------------------------------------------------------------------


def test_parse_range():
    assert parse_range(None, 100) is None
    assert parse_range("bytes=10-19", 100) == (10, 20)
    assert parse_range("bytes=90-", 100) == (90, 100)
    assert parse_range("bytes=95-200", 100) == (95, 100)
    assert parse_range("bytes=-10", 100) == (90, 100)
    assert parse_range("bytes=100-", 100) == "bad"
    assert parse_range("bytes=0-1,5-6", 100) is None  # multi-range: whole file


def test_server_answers_ranges_with_206_and_counts_bytes(www):
    server, root = www
    server.reset()
    url = server.url + "/big/m.index"
    size = (root / "big" / "m.index").stat().st_size
    req = urllib.request.Request(url, headers={"Range": "bytes=3-9"})
    with urllib.request.urlopen(req) as r:
        assert r.status == 206 and r.headers["Content-Range"] == f"bytes 3-9/{size}"
        assert r.read() == (root / "big" / "m.index").read_bytes()[3:10]
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(urllib.request.Request(url, headers={"Range": f"bytes={size}-"}))
    assert exc.value.code == 416
    with urllib.request.urlopen(urllib.request.Request(url, method="HEAD")) as r:
        assert r.status == 200 and int(r.headers["Content-Length"]) == size
    assert server.sent("/big/m.index") == 7


# -- reading over HTTP ---------------------------------------------------------------------------


def test_ls_fetches_only_the_index(www, capsys):
    server, root = www
    index_size = (root / "big" / "m.index").stat().st_size
    server.reset()
    assert main(["ls", server.url + "/big/m", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["num_tensors"] == 4
    assert server.sent("/big/m.index") == index_size
    assert server.sent() == index_size  # not one byte of the 5 MiB of data
    assert [r[0] for r in server.requests] == ["HEAD", "GET"]


def test_show_fetches_only_that_tensors_bytes(www, capsys):
    server, root = www
    index_size = (root / "big" / "m.index").stat().st_size
    with ckptio.open(root / "big" / "m") as local:
        entry = local["s0/t001"].entry
    server.reset()
    assert main(["show", server.url + "/big/m", "s0/t001", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["shape"] == [MiB]
    assert server.sent("/big/m.data-00000-of-00002") == entry.size == MiB  # of a 3 MiB file
    assert server.sent("/big/m.data-00001-of-00002") == 0
    assert server.sent() == index_size + entry.size
    ranges = [r[2] for r in server.requests if r[1] == "/big/m.data-00000-of-00002" and r[0] == "GET"]
    assert ranges == [f"bytes={entry.offset}-{entry.offset + entry.size - 1}"]


@pytest.mark.parametrize(
    "suffix, prefix, fmt",
    [
        ("/big/m", "/big/m", "v2"),
        ("/big/m.index", "/big/m", "v2"),
        ("/big/m.data-00001-of-00002", "/big/m", "v2"),
        ("/tf1_t2t_transformer", "/tf1_t2t_transformer/model.ckpt-1", "v2"),  # 'checkpoint' state file
        ("/tf1_t2t_transformer/", "/tf1_t2t_transformer/model.ckpt-1", "v2"),
        ("/savedmodel", "/savedmodel/variables/variables", "v2"),  # SavedModel directory
        ("/v1_vocal_adam/model.ckpt", "/v1_vocal_adam/model.ckpt", "v1"),  # V1 table file
        ("/v1_vocal_adam", "/v1_vocal_adam/model.ckpt", "v1"),
    ],
)
def test_urls_resolve_like_local_paths(www, suffix, prefix, fmt):
    server, _ = www
    with ckptio.open(server.url + suffix) as ckpt:
        assert (ckpt.format, ckpt.prefix) == (fmt, server.url + prefix)
        assert len(ckpt) > 0


def test_missing_remote_checkpoints(www, tmp_path, capsys):
    server, root = www
    with pytest.raises(CheckpointNotFoundError):
        ckptio.open(server.url + "/nothing/here")
    assert main(["ls", server.url + "/nothing/here"]) == 1
    assert "no such checkpoint" in capsys.readouterr().err  # locate's wording, as for a local path
    with pytest.raises(CheckpointNotFoundError, match="is missing"):
        ckptio.open(server.url + "/big/gone.data-00000-of-00001")
    shutil.copytree(root / "big", root / "half")
    os.unlink(root / "half" / "m.data-00001-of-00002")
    with ckptio.open(server.url + "/half/m") as ckpt:
        assert len(ckpt["s0/t000"].read()) == MiB
        with pytest.raises(MissingShardError):
            ckpt["s1/t000"].read()


def test_a_remote_file_that_is_not_a_checkpoint(bucket):
    fs, base = bucket
    fs.pipe_file(fs._strip_protocol(f"{base}/readme.txt"), b"x" * 100)
    with pytest.raises(WrongFileError, match="not a TensorFlow checkpoint"):
        ckptio.open(f"{base}/readme.txt")


def test_remote_reads_equal_local_reads(www):
    server, root = www
    for suffix in ("tf2_keras_weights_2shard", "tf1_t2t_transformer", "v1_vocal_adam", "savedmodel", "big"):
        with ckptio.open(root / suffix) as local, ckptio.open(f"{server.url}/{suffix}") as far:
            same_tensors(local, far)


def test_verify_over_http_reads_each_byte_once(www, capsys):
    server, root = www
    server.reset()
    assert main(["verify", server.url + "/big/m", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True
    files = ["m.index", "m.data-00000-of-00002", "m.data-00001-of-00002"]
    assert server.sent() == sum((root / "big" / f).stat().st_size for f in files)


def test_rewrite_remote_to_local_matches_local_to_local(www, tmp_path):
    from ckptio.rewrite import rewrite
    from ckptio.transform import StripOptimizer

    server, root = www
    rewrite(f"{server.url}/est_tfx_taxi_2019", tmp_path / "a" / "m", [StripOptimizer()], num_shards=2)
    rewrite(root / "est_tfx_taxi_2019", tmp_path / "b" / "m", [StripOptimizer()], num_shards=2)
    for f in ("m.index", "m.data-00000-of-00002", "m.data-00001-of-00002"):
        assert filecmp.cmp(tmp_path / "a" / f, tmp_path / "b" / f, shallow=False), f
    from ckptio.bundle.state import read_state  # the state files differ only in their timestamps

    a, b = read_state(str(tmp_path / "a")), read_state(str(tmp_path / "b"))
    assert a.paths == b.paths == ("m",) and len(a.timestamps) == len(b.timestamps) == 1


def test_pack_and_download_a_remote_checkpoint(www, tmp_path):
    server, root = www
    files = ("m.index", "m.data-00000-of-00002", "m.data-00001-of-00002")
    server.reset()
    archive.pack(server.url + "/big/m", tmp_path / "m.tar.zst")
    assert server.sent() == sum((root / "big" / f).stat().st_size for f in files)  # each byte fetched once
    archive.unpack(tmp_path / "m.tar.zst", tmp_path / "un")
    remote.download_checkpoint(server.url + "/big", str(tmp_path / "down") + "/")
    for f in files:
        assert filecmp.cmp(root / "big" / f, tmp_path / "un" / f, shallow=False)
        assert filecmp.cmp(root / "big" / f, tmp_path / "down" / f, shallow=False)


def test_archive_over_http_streams_from_the_start(www):
    server, root = www
    size = (root / "big.tar.zst").stat().st_size
    server.reset()
    with ckptio.open(server.url + "/big.tar.zst") as ckpt:
        assert len(ckpt) == 4
        assert server.sent() < 512 << 10 < size  # the index is at the front; the data is not fetched
        for name in ("s0/t000", "s0/t001", "s0/t002", "s1/t000"):
            ckpt[name].read()
        assert ckpt.archive.passes == 1
    assert server.sent("/big.tar.zst") == size  # every byte fetched exactly once


def test_range_ignored_by_the_server_still_gives_the_right_bytes():
    data = bytes(range(200))

    class WholeFileFS:  # a server that ignores Range and always sends the whole file
        def cat_file(self, path, start=None, end=None):
            return data

    src = remote.RemoteSource(WholeFileFS(), "x", size=len(data))
    assert src.read(10, 5) == data[10:15]


def test_unknown_protocols_and_missing_backends():
    with pytest.raises(UnsupportedError):
        ckptio.open("nosuchprotocol://bucket/model.ckpt")
    assert main(["ls", "nosuchprotocol://bucket/model.ckpt"]) == 1


def test_file_urls_are_local_paths(corpus):
    with ckptio.open("file://" + str(corpus / "tf2_golf_int32")) as ckpt:
        assert type(ckpt) is ckptio.Checkpoint and len(ckpt) == 26


# -- writing to memory:// ------------------------------------------------------------------------


@pytest.fixture
def bucket():
    """A fresh memory:// directory, removed afterwards."""
    fs = fsspec.filesystem("memory")
    name = f"/bucket-{uuid.uuid4().hex}"
    yield fs, f"memory://{name}"
    if fs.exists(name):
        fs.rm(name, recursive=True)


def _listing(fs, url) -> list[str]:
    path = fs._strip_protocol(url)
    return sorted(p.rsplit("/", 1)[-1] for p in fs.find(path)) if fs.exists(path) else []


def test_upload_then_read_back(corpus, bucket):
    fs, base = bucket
    src = corpus / "tf2_keras_weights_2shard" / "model.ckpt"
    stats = remote.upload_checkpoint(src, f"{base}/run/model.ckpt")
    assert stats.bytes == sum(
        os.path.getsize(f"{src}{s}") for s in (".index", ".data-00000-of-00002", ".data-00001-of-00002")
    )
    assert _listing(fs, base) == [
        "checkpoint",
        "model.ckpt.data-00000-of-00002",
        "model.ckpt.data-00001-of-00002",
        "model.ckpt.index",
    ]
    for suffix in (".index", ".data-00000-of-00002", ".data-00001-of-00002"):
        assert fs.cat_file(fs._strip_protocol(f"{base}/run/model.ckpt{suffix}")) == Path(f"{src}{suffix}").read_bytes()
    with ckptio.open(src) as local, ckptio.open(f"{base}/run") as far:  # via the state file
        assert far.prefix == f"{base}/run/model.ckpt"
        same_tensors(local, far)
    with pytest.raises(OutputExistsError):
        remote.upload_checkpoint(src, f"{base}/run/model.ckpt")
    remote.upload_checkpoint(corpus / "tf2_golf_int32", f"{base}/run/model.ckpt", overwrite=True)
    with ckptio.open(f"{base}/run/model.ckpt") as far:
        assert len(far) == 26 and far.num_shards == 1
    # A directory destination keeps the source's name. The state file lists another checkpoint
    # (model.ckpt): left as it was unless make_latest, which then lists both.
    before = fs.cat_file(fs._strip_protocol(f"{base}/run/checkpoint"))
    remote.upload_checkpoint(corpus / "tf2_golf_int32", f"{base}/run/")
    assert fs.cat_file(fs._strip_protocol(f"{base}/run/checkpoint")) == before
    remote.upload_checkpoint(corpus / "tf2_golf_int32", f"{base}/run/", overwrite=True, make_latest=True)
    state = fs.cat_file(fs._strip_protocol(f"{base}/run/checkpoint")).decode()
    assert 'model_checkpoint_path: "ckpt-2"' in state and '"model.ckpt"' in state


@pytest.mark.parametrize("use_temp", [True, False])
def test_upload_commits_the_index_last(corpus, bucket, monkeypatch, use_temp):
    fs, base = bucket
    events = []
    real_open, real_mv = fs.open, fs.mv
    monkeypatch.setattr(
        fs, "open", lambda path, mode="rb", **kw: (events.append(("open", path)), real_open(path, mode, **kw))[1]
    )
    monkeypatch.setattr(fs, "mv", lambda a, b, **kw: (events.append(("mv", b)), real_mv(a, b, **kw))[1])
    remote.upload_checkpoint(corpus / "tf2_keras_weights_2shard", f"{base}/m", use_temp=use_temp, state_file=False)
    final = [p.rsplit("/", 1)[-1] for kind, p in events if kind == ("mv" if use_temp else "open")]
    assert final == ["m.data-00000-of-00002", "m.data-00001-of-00002", "m.index"]
    if use_temp:
        assert all(".ckptio-tmp-" in p for kind, p in events if kind == "open")


@pytest.mark.parametrize("use_temp", [True, False])
def test_failed_upload_leaves_nothing(bucket, tmp_path, use_temp):
    fs, base = bucket
    make_checkpoint(tmp_path / "m", [[1000], [2000]])
    os.unlink(tmp_path / "m.data-00001-of-00002")  # fails after the first shard was uploaded
    with pytest.raises(MissingShardError):
        remote.upload_checkpoint(tmp_path / "m", f"{base}/m", use_temp=use_temp)
    assert _listing(fs, base) == []


def test_pack_unpack_and_download_through_memory(bucket, tmp_path):
    fs, base = bucket
    kept = make_checkpoint(tmp_path / "m", [[3000, 4000], [5000]])
    stats = archive.pack(tmp_path / "m", f"{base}/m.tar.zst")
    assert stats.bytes_out == fs.info(fs._strip_protocol(f"{base}/m.tar.zst"))["size"]
    assert _listing(fs, base) == ["m.tar.zst"]  # no temp file left behind
    with pytest.raises(OutputExistsError):
        archive.pack(tmp_path / "m", f"{base}/m.tar.zst")
    with ckptio.open(f"{base}/m.tar.zst") as ckpt:
        assert {n: ckpt[n].read().tobytes() for n in ckpt} == kept
    archive.unpack(f"{base}/m.tar.zst", tmp_path / "un")
    remote.upload_checkpoint(tmp_path / "m", f"{base}/up/m")
    remote.download_checkpoint(f"{base}/up/m", str(tmp_path / "down") + "/")
    for f in ("m.index", "m.data-00000-of-00002", "m.data-00001-of-00002"):
        assert filecmp.cmp(tmp_path / f, tmp_path / "un" / f, shallow=False)
        assert filecmp.cmp(tmp_path / f, tmp_path / "down" / f, shallow=False)
    with pytest.raises(OutputExistsError):
        remote.download_checkpoint(f"{base}/up/m", tmp_path / "down" / "m")


def test_rewrite_to_a_remote_destination(corpus, bucket, capsys):
    fs, base = bucket
    assert main(["strip", str(corpus / "est_tfx_taxi_2019"), f"{base}/s/m", "-q"]) == 0
    capsys.readouterr()
    assert _listing(fs, f"{base}/s") == ["checkpoint", "m.data-00000-of-00001", "m.index"]
    with ckptio.open(f"{base}/s") as ckpt:
        assert "dnn/logits/kernel" in ckpt and not any(n.endswith("/Adagrad") for n in ckpt)
    assert main(["strip", str(corpus / "est_tfx_taxi_2019"), f"{base}/s/m", "-q"]) == 2  # exists
    assert main(["strip", str(corpus / "est_tfx_taxi_2019"), f"{base}/s/m", "-q", "--force"]) == 0
    assert main(["rewrite", f"{base}/s/m", f"{base}/s.tar.zst", "-q"]) == 0
    with ckptio.open(f"{base}/s.tar.zst") as packed:
        assert "dnn/logits/kernel" in packed


def test_remote_read_failure_is_a_ckptio_read_error():
    """A failing remote read surfaces as ckptio's ReadError (also an OSError), naming the URL."""
    import fsspec

    from ckptio.errors import ReadError
    from ckptio.remote import RemoteSource

    class Broken(fsspec.AbstractFileSystem):
        def cat_file(self, path, start=None, end=None, **kw):
            raise ConnectionResetError("peer went away")

    src = RemoteSource(Broken(), "/x", name="broken://x", size=100)
    with pytest.raises(ReadError, match="broken://x") as info:
        src.read(0, 10)
    assert isinstance(info.value, OSError) and "peer went away" in str(info.value)


def test_writing_to_http_is_refused_as_read_only_in_one_line(www, tmp_path, capsys):
    server, root = www
    src = str(root / "tf1_t2t_transformer")
    for argv in (
        ["strip", src, f"{server.url}/out/model.ckpt"],
        ["merge", src, src, f"{server.url}/out/m.ckpt"],
        ["fit", src, "--template", src, f"{server.url}/out/f.ckpt"],
    ):
        assert main(argv) == 1, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "http(s):// is read-only" in err[0], err
    assert not (root / "out").exists()
