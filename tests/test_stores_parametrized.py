"""One suite over every store: ls, show, verify, doctor (with salvage), strip and rename give the same
results on a local directory, a .tar.zst archive, an http:// URL (tools/http_range_server) and memory://.

Each checkpoint is built once with ckptio's own writer (no TensorFlow), then exposed four ways. The
local run is the reference: every other store's JSON reports must equal it once the input's location
is replaced by <IN> (and timings dropped), and every output it writes must hold the same tensors, bit
for bit. Commands run in-process (ckptio.cli.main), since memory:// lives in this process only.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from ckptio.bundle import naming
from ckptio.bundle.writer import BundleWriter

try:
    from corrupt_support import CORPUS, cli, copy_corpus, files_of, make_fixture, read_all, same, write_bundle
    from support import require_corpus
except ImportError:  # tests/ imported as a package
    from .corrupt_support import CORPUS, cli, copy_corpus, files_of, make_fixture, read_all, same, write_bundle
    from .support import require_corpus

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from http_range_server import serve  # noqa: E402

fsspec = pytest.importorskip("fsspec")
pytest.importorskip("aiohttp")  # fsspec[http], in the test extras

STORES = ["local", "archive", "http", "memory"]
HEALTHY = ["tf1_adam", "two_shards", "sliced", "v1"]
DAMAGED = ["damaged_data", "damaged_index", "v1_truncated"]
CASES = HEALTHY + DAMAGED
V1 = {"v1", "v1_truncated"}  # from the real-world corpus (a TF1 Saver V1 file)
SHOW = {"tf1_adam": "dense/kernel", "two_shards": "layer3/w", "sliced": "part_emb", "v1": "weights_2"}
MEMORY_ROOT = "/ckptio-stores-test"
# Where a store may word a refusal differently from local files (same exit code, one line). None: one
# locate() (bundle/locate.py) resolves paths for every store, archives and URLs included.
WORDED_DIFFERENTLY: dict[tuple[str, str], set[str]] = {}


def _tf1_adam(directory: Path) -> str:
    """A TF1 name-based checkpoint trained with Adam: weights, their two slots, beta powers, global_step."""
    prefix = str(directory / "tf1_adam" / "model.ckpt-100")
    rng = np.random.default_rng(3)
    weights = {"dense/kernel": rng.standard_normal((4, 3)), "dense/bias": rng.standard_normal(3)}
    with BundleWriter(prefix) as w:
        for name, value in weights.items():
            w.add_array(name, value.astype(np.float32))
            w.add_array(f"{name}/Adam", (value * 0.1).astype(np.float32))
            w.add_array(f"{name}/Adam_1", (value * 0.01).astype(np.float32))
        w.add_array("beta1_power", np.float32(0.9))
        w.add_array("beta2_power", np.float32(0.999))
        w.add_array("global_step", np.int64(100))
        w.finish(state_file=False)
    return prefix


def _damage_data(directory: Path) -> str:
    """Two shards, one byte of one tensor flipped: doctor names it, salvage keeps the other five."""
    prefix = make_fixture("two_shards", directory / "damaged_data")
    shard = Path(naming.data_path(prefix, 1, 2))
    data = bytearray(shard.read_bytes())
    data[5] ^= 0x10
    shard.write_bytes(bytes(data))
    return prefix


def _damage_index(directory: Path) -> str:
    """Sixty tensors in many small index blocks, one block's bytes flipped: its entries are lost."""
    prefix = make_fixture("multiblock", directory / "damaged_index")
    index = Path(naming.index_path(prefix))
    data = bytearray(index.read_bytes())
    data[400] ^= 0x40  # inside an early data block of the index (the blocks are 200 bytes)
    index.write_bytes(bytes(data))
    return prefix


def _v1_truncated(directory: Path) -> str:
    """A V1 file cut short (its footer gone): doctor finds its data block by scanning."""
    path = copy_corpus("v1_savenet", directory / "v1_truncated")
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) - 60])
    return path


def _tar_zst(files: list[str], out: Path) -> None:
    """A .tar.zst of files (index first), written with tarfile + zstandard, for inputs pack cannot open."""
    import zstandard

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for f in files:
            tar.add(f, arcname=os.path.basename(f))
    out.write_bytes(zstandard.ZstdCompressor(write_checksum=True).compress(buf.getvalue()))


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """{store: {case: (path to pass, the checkpoint prefix it resolves to)}} with the http server running."""
    from ckptio.archive import pack

    root = tmp_path_factory.mktemp("stores")
    local = root / "local"
    prefixes = {
        "tf1_adam": _tf1_adam(local),
        "two_shards": make_fixture("two_shards", local),
        "sliced": make_fixture("sliced", local),
        "damaged_data": _damage_data(local),
        "damaged_index": _damage_index(local),
    }
    if (CORPUS / "MANIFEST.json").is_file():  # the V1 cases' tests call require_corpus()
        prefixes["v1"] = copy_corpus("v1_savenet", local / "v1")
        prefixes["v1_truncated"] = _v1_truncated(local)
    archives = root / "archives"
    archives.mkdir()
    memfs = fsspec.filesystem("memory")
    if memfs.exists(MEMORY_ROOT):
        memfs.rm(MEMORY_ROOT, recursive=True)
    out: dict[str, dict[str, tuple[str, str]]] = {s: {} for s in STORES}
    with serve(local) as server:
        for case, prefix in prefixes.items():
            directory = os.path.dirname(prefix)
            stem = os.path.basename(prefix)
            out["local"][case] = (prefix, prefix)
            archive = archives / f"{case}.tar.zst"
            if case in ("damaged_index", "v1_truncated"):  # pack opens its input, and these do not open
                _tar_zst(files_of(prefix), archive)
            else:
                pack(prefix, archive)
            out["archive"][case] = (str(archive), f"{archive}/{stem}")
            rel = os.path.relpath(directory, local)
            url = f"{server.url}/{rel}/{stem}"
            out["http"][case] = (url, url)
            for name in os.listdir(directory):
                memfs.pipe(f"{MEMORY_ROOT}/{rel}/{name}", Path(directory, name).read_bytes())
            url = f"memory://{MEMORY_ROOT}/{rel}/{stem}"
            out["memory"][case] = (url, url)
        yield out
    memfs.rm(MEMORY_ROOT, recursive=True)


def _normal(text: str, names: list[str], out_dir: str):
    """A command's JSON (or text) with the checkpoint's names (the argument, its prefix) as <CKPT>, the
    output's location as <OUT>, and no timings."""
    for name in sorted(names, key=len, reverse=True):
        text = text.replace(name, "<CKPT>")
    text = text.replace(out_dir, "<OUT>")
    try:
        return _drop_timings(json.loads(text))
    except ValueError:
        return text


def _drop_timings(value):
    if isinstance(value, dict):
        return {k: _drop_timings(v) for k, v in value.items() if k != "seconds"}
    if isinstance(value, list):
        return [_drop_timings(v) for v in value]
    return value


def _run_all(case: str, path: str, prefix: str, out_dir: Path) -> dict:
    """Every command on one checkpoint: {command: (exit code, stdout, stderr)}, outputs under out_dir."""
    out_dir.mkdir(parents=True)
    o = str(out_dir)
    commands = {
        "ls": ["ls", path, "--json"],
        "verify": ["verify", path, "--json"],
        "doctor": ["doctor", path, "--json"],
        "salvage": ["doctor", path, "--json", "--salvage", f"{o}/salvaged/ckpt"],
        "strip": ["strip", path, f"{o}/stripped/ckpt", "--json", "-q"],
        "rename": ["rename", path, f"{o}/renamed/ckpt", "--map", "/=moved/", "--json", "-q"],
    }
    if case in SHOW:
        commands["show"] = ["show", path, SHOW[case], "--json"]
    results = {}
    for what, argv in commands.items():
        rc, stdout, stderr = cli(argv)
        assert "Traceback" not in stdout + stderr, (what, stderr)
        results[what] = (rc, _normal(stdout, [path, prefix], o), _normal(stderr, [path, prefix], o))
    return results


def _outputs(out_dir: Path) -> dict:
    """{output: {tensor: array}} for every checkpoint the commands wrote."""
    got = {}
    for what in ("salvaged", "stripped", "renamed"):
        if (out_dir / what / "ckpt.index").exists():
            got[what] = read_all(str(out_dir / what / "ckpt"))
    return got


_reference: dict[str, tuple[dict, dict]] = {}


def _local(stores, case: str, tmp_path_factory) -> tuple[dict, dict]:
    if case not in _reference:
        path, prefix = stores["local"][case]
        out_dir = tmp_path_factory.mktemp(f"local-{case}") / "out"
        _reference[case] = (_run_all(case, path, prefix, out_dir), _outputs(out_dir))
    return _reference[case]


@pytest.mark.parametrize("case", CASES)
def test_local_reference_is_what_each_case_means(stores, case, tmp_path_factory):
    if case in V1:
        require_corpus()
    results, outputs = _local(stores, case, tmp_path_factory)
    doctor = results["doctor"][1]
    if case in HEALTHY:
        assert all(rc == 0 for rc, _, _ in results.values()), results
        assert doctor["healthy"] and set(outputs) == {"salvaged", "stripped", "renamed"}
        assert sorted(outputs["renamed"]) == sorted(f"moved/{n}" for n in outputs["salvaged"])
        if case == "tf1_adam":
            assert sorted(outputs["stripped"]) == ["dense/bias", "dense/kernel", "global_step"]
    else:
        assert results["doctor"][0] == 1 and results["verify"][0] == 1 and not doctor["healthy"] and doctor["intact"]
        assert doctor["damaged"] or case == "v1_truncated"  # its one data block is found by scanning
        assert sorted(outputs["salvaged"]) == sorted(doctor["intact"])
        assert results["salvage"][1]["salvaged"]["tensors"] == doctor["intact"]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("store", STORES[1:])
def test_store_gives_the_local_results(stores, store, case, tmp_path_factory, tmp_path):
    if case in V1:
        require_corpus()
    want, want_outputs = _local(stores, case, tmp_path_factory)
    path, prefix = stores[store][case]
    got = _run_all(case, path, prefix, tmp_path / "out")
    loose = WORDED_DIFFERENTLY.get((store, case), set())
    differ = [what for what in want if got[what] != want[what] and what not in loose]
    assert not differ, {what: (want[what], got[what]) for what in differ}
    for what in loose:
        (rc, out, err), (want_rc, want_out, _) = got[what], want[what]
        assert (rc, out) == (want_rc, want_out) and rc != 0 and len(err.splitlines()) == 1, (what, got[what])
    got_outputs = _outputs(tmp_path / "out")
    assert sorted(got_outputs) == sorted(want_outputs)
    for what, tensors in want_outputs.items():
        assert sorted(got_outputs[what]) == sorted(tensors), (what, store, case)
        for name, value in tensors.items():
            assert same(got_outputs[what][name], value), (what, name, store, case)


def test_salvage_to_an_archive_or_url_writes_there(stores, tmp_path):
    """--salvage OUT goes through OUT's store: the archive and the memory:// copy hold the local salvage's files
    (a URL directory and an archive keep the input's file name, `ckpt`)."""
    path, _ = stores["archive"]["damaged_data"]
    local = tmp_path / "local" / "ckpt"
    assert cli(["doctor", path, "--salvage", str(local)])[0] == 1
    want = {p.name: p.read_bytes() for p in local.parent.iterdir() if p.name != "checkpoint"}
    assert sorted(want) == ["ckpt.data-00000-of-00001", "ckpt.index"]
    assert cli(["doctor", path, "--salvage", str(tmp_path / "s.tar.zst")])[0] == 1
    assert cli(["unpack", str(tmp_path / "s.tar.zst"), str(tmp_path / "u")])[0] == 0
    assert {p.name: p.read_bytes() for p in (tmp_path / "u").iterdir()} == want
    memfs = fsspec.filesystem("memory")
    if memfs.exists("/salvaged"):
        memfs.rm("/salvaged", recursive=True)
    assert cli(["doctor", path, "--salvage", "memory:///salvaged/"])[0] == 1
    got = {p.rpartition("/")[2]: memfs.cat_file(p) for p in memfs.find("/salvaged")}
    assert got.pop("checkpoint").startswith(b'model_checkpoint_path: "ckpt"') and got == want
    rc, _, stderr = cli(["doctor", path, "--salvage", "memory:///salvaged/ckpt"])
    assert rc == 2 and "already exists" in stderr


def test_doctor_reads_an_archive_forward(stores):
    """Healthy or damaged, diagnosing a V2 archive decompresses it once (data shards read in order);
    a V1 archive (no .index member) twice: its tables are known only at the end of the first pass."""
    from ckptio.store.archive import ArchiveStore

    passes = {}
    real = ArchiveStore.close

    def close(self):
        passes[self.name] = self.stream.passes
        real(self)

    ArchiveStore.close = close
    try:
        for case in stores["archive"]:
            cli(["doctor", stores["archive"][case][0]])
    finally:
        ArchiveStore.close = real
    want = {path: 2 if case in V1 else 1 for case, (path, _) in stores["archive"].items()}
    assert passes == want


# -- doctor's other findings, on every store -------------------------------------------------------

LFS = b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"0" * 64 + b"\nsize 4242\n"


def _shard1(prefix: str) -> Path:
    return Path(naming.data_path(prefix, 1, 2))


def _missing_shard(prefix: str) -> None:
    _shard1(prefix).unlink()


def _truncated_shard(prefix: str) -> None:
    data = _shard1(prefix).read_bytes()
    _shard1(prefix).write_bytes(data[: len(data) // 2])


def _lfs_shard(prefix: str) -> None:
    _shard1(prefix).write_bytes(LFS)


def _missing_index(prefix: str) -> None:
    Path(naming.index_path(prefix)).unlink()


def _foreign_shard(prefix: str) -> None:
    other = make_fixture("two_shards", Path(prefix).parent.parent / "other", seed_offset=1.0)
    shutil.copyfile(_shard1(other), _shard1(prefix))


def _bad_header(prefix: str) -> None:
    """The header entry garbled: the shard count is inferred from the data files listed beside it."""
    from ckptio.io import MemorySource
    from ckptio.sstable import Table

    items = [(k, v) for k, v in Table(MemorySource(Path(naming.index_path(prefix)).read_bytes())) if k]
    write_bundle(prefix, items, {}, header=b"\xff\xff")


def _trailing_index_bytes(prefix: str) -> None:
    with open(naming.index_path(prefix), "ab") as f:
        f.write(b"\0" * 100)


DAMAGE = {
    "missing_shard": _missing_shard,
    "truncated_shard": _truncated_shard,
    "lfs_shard": _lfs_shard,
    "missing_index": _missing_index,
    "foreign_shard": _foreign_shard,
    "bad_header": _bad_header,
    "trailing_index_bytes": _trailing_index_bytes,
}


@pytest.fixture(scope="module")
def damaged(tmp_path_factory):
    """{store: {damage: (path, prefix)}}: two_shards damaged each way, archived with tarfile."""
    root = tmp_path_factory.mktemp("damage")
    local = root / "local"
    memfs = fsspec.filesystem("memory")
    out: dict[str, dict[str, tuple[str, str]]] = {s: {} for s in STORES}
    with serve(local) as server:
        for damage, make in DAMAGE.items():
            prefix = make_fixture("two_shards", local / damage)
            make(prefix)
            directory, stem = os.path.dirname(prefix), os.path.basename(prefix)
            out["local"][damage] = (prefix, prefix)
            archive = root / f"{damage}.tar.zst"
            present = [naming.index_path(prefix)] + [naming.data_path(prefix, i, 2) for i in range(2)]
            _tar_zst([f for f in present if os.path.exists(f)], archive)
            out["archive"][damage] = (str(archive), f"{archive}/{stem}")
            rel = os.path.relpath(directory, local)
            for name in os.listdir(directory):
                memfs.pipe(f"{MEMORY_ROOT}/damage/{rel}/{name}", Path(directory, name).read_bytes())
            url = f"{server.url}/{rel}/{stem}"
            out["http"][damage] = (url, url)
            url = f"memory://{MEMORY_ROOT}/damage/{rel}/{stem}"
            out["memory"][damage] = (url, url)
        yield out


def _doctor(path: str, prefix: str, out_dir: Path) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    got = {}
    for what, extra in (("doctor", []), ("salvage", ["--salvage", f"{out_dir}/salvaged/ckpt"])):
        rc, stdout, stderr = cli(["doctor", path, "--json", *extra])
        assert "Traceback" not in stdout + stderr and stderr == "", stderr
        got[what] = (rc, _normal(stdout, [path, prefix], str(out_dir)))
    got["tensors"] = _outputs(out_dir).get("salvaged", {})
    return got


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_doctor_finds_the_same_on_every_store(damaged, damage, tmp_path):
    want = _doctor(*damaged["local"][damage], tmp_path / "local")
    assert want["doctor"][0] == 1 and want["doctor"][1]["problems"], want
    for store in STORES[1:]:
        got = _doctor(*damaged[store][damage], tmp_path / store)
        assert got["doctor"] == want["doctor"], store
        assert got["salvage"] == want["salvage"], store
        assert sorted(got["tensors"]) == sorted(want["tensors"]), store
        for name, value in want["tensors"].items():
            assert same(got["tensors"][name], value), (store, name)
