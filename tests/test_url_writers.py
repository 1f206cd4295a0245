"""fit, merge, doctor --salvage and unpack write to s3:// (and fit, merge, salvage to a .tar.zst) through the store.

The oracle is the same command writing locally: the objects must hold the local files' bytes (the
state file: its lines without timestamps), nothing may appear under a local 's3:' directory, an
existing output is refused without --force, and an archive unpacks to the local result.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from s3_support import need  # the s3 fixture is in conftest.py

import ckptio
from ckptio.bundle.writer import BundleWriter
from ckptio.cli.main import main

need("s3fs")  # and moto: in CI both must be installed; elsewhere the module skips without them


def cli(*argv) -> int:
    return main([str(a) for a in argv])


def build(prefix: Path, *, seed: int, extra: bool = False) -> str:
    """A two-shard TF1-style checkpoint (extra: one more tensor, only a template has it)."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    with BundleWriter(str(prefix), 2) as w:
        for i in range(4):
            w.add_array(f"layer_{i}/kernel", rng.standard_normal((64, 32 + i), dtype=np.float32), shard=i % 2)
            w.add_array(f"layer_{i}/bias", rng.standard_normal(32 + i).astype(np.float32), shard=(i + 1) % 2)
        if extra:
            w.add_array("head/scale", np.float32(3.0), shard=0)
        w.add_array("global_step", np.int64(7 + seed), shard=0)
        w.finish()
    return str(prefix)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("urlw")
    out = {
        "src": build(root / "src" / "model.ckpt", seed=0),
        "src2": build(root / "src2" / "model.ckpt", seed=1),
        "template": build(root / "template" / "model.ckpt", seed=2, extra=True),
    }
    damaged = build(root / "damaged" / "model.ckpt", seed=3)
    with ckptio.open(damaged) as c:
        e = c.entries()["layer_1/kernel"]
    data = Path(f"{damaged}.data-{e.shard_id:05d}-of-00002")
    raw = bytearray(data.read_bytes())
    raw[e.offset + 5] ^= 0x10  # one tensor's crc32c no longer matches: doctor salvages the others
    data.write_bytes(bytes(raw))
    out["damaged"] = damaged
    return out


def objects(fs, prefix: str) -> dict[str, object]:
    """sha256 of every object under bkt/<prefix>/ (the state file: its lines without timestamps)."""
    out: dict[str, object] = {}
    for path in sorted(fs.find(f"bkt/{prefix}")):
        name = path.rpartition("/")[2]
        data = fs.cat_file(path)
        out[name] = _digest(name, data)
    return out


def local_files(directory: Path, *, state: bool = True) -> dict[str, object]:
    return {
        p.name: _digest(p.name, p.read_bytes()) for p in sorted(directory.iterdir()) if state or p.name != "checkpoint"
    }


def _digest(name: str, data: bytes):
    if name == "checkpoint":
        return [ln for ln in data.decode().splitlines() if "timestamp" not in ln]
    return hashlib.sha256(data).hexdigest()


def _same_as_local(s3, key: str, local: Path, command, capsys) -> None:
    """command(out) written to s3://bkt/<key>/model.ckpt equals it written at local; then refused
    there without --force, and written again with it."""
    assert objects(s3, key) == local_files(local.parent)
    assert "checkpoint" in objects(s3, key)  # the state file went to the bucket too
    capsys.readouterr()
    assert command(f"s3://bkt/{key}/model.ckpt") == 2
    assert "already exists" in capsys.readouterr().err
    assert command(f"s3://bkt/{key}/model.ckpt", "--force") == 0
    assert objects(s3, key) == local_files(local.parent)


def _archive_equals_local(archive, local: Path, tmp_path: Path, name: str) -> None:
    """The archive unpacks to the local output's files (no state file: an archive holds none)."""
    got = tmp_path / f"unpacked-{name}"
    assert cli("unpack", archive, got) == 0
    assert local_files(got) == local_files(local.parent, state=False)


def test_fit_to_s3_and_to_an_archive_equal_the_local_fit(s3, ckpts, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    local = tmp_path / "local" / "model.ckpt"

    def fit(out, *more):
        return cli("fit", ckpts["src"], "--template", ckpts["template"], out, "--shards", "2", *more)

    assert fit(local) == 0
    assert fit("s3://bkt/urlout-fit/model.ckpt") == 0
    _same_as_local(s3, "urlout-fit", local, fit, capsys)
    assert fit("s3://bkt/urlout-fitdir/") == 0  # a directory: the template's file name there
    assert objects(s3, "urlout-fitdir") == local_files(local.parent)
    assert fit(tmp_path / "f.tar.zst") == 0
    _archive_equals_local(tmp_path / "f.tar.zst", local, tmp_path, "fit")
    assert fit(tmp_path / "f.tar.zst") == 2  # an existing archive
    assert "already exists" in capsys.readouterr().err
    assert fit(tmp_path / "f.tar.zst", "--force") == 0
    assert fit("s3://bkt/urlout-fitarc/f.tar.zst") == 0  # an archive in the bucket: packed, then one PUT
    assert [p.rpartition("/")[2] for p in s3.find("bkt/urlout-fitarc")] == ["f.tar.zst"]
    _archive_equals_local("s3://bkt/urlout-fitarc/f.tar.zst", local, tmp_path, "fit-s3")
    assert not (tmp_path / "s3:").exists()


def test_fit_dry_run_to_s3_writes_nothing_and_predicts_the_refusal(s3, ckpts, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ("fit", ckpts["src"], "--template", ckpts["template"], "s3://bkt/urlout-fitdry/model.ckpt")
    assert cli(*args, "--dry-run") == 0
    assert s3.find("bkt/urlout-fitdry") == []
    assert cli(*args) == 0
    assert cli(*args, "--dry-run") == 2
    assert "already exists" in capsys.readouterr().err
    assert not (tmp_path / "s3:").exists()


def test_fit_onto_a_keras_template_refuses_a_url(s3, ckpts, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    h5 = tmp_path / "t.weights.h5"
    h5.write_bytes(b"")  # refused before the template is read
    assert cli("fit", ckpts["src"], "--template", h5, "s3://bkt/urlout-keras/x.weights.h5") != 0
    assert "writes a local .weights.h5" in capsys.readouterr().err
    assert not (tmp_path / "s3:").exists() and s3.find("bkt/urlout-keras") == []


def test_fit_from_s3_to_s3_loads_in_tf(s3, ckpts, tmp_path):
    for p in Path(ckpts["src"]).parent.iterdir():
        s3.put(str(p), f"bkt/urlout-tfsrc/{p.name}")
    local = tmp_path / "local" / "model.ckpt"
    assert cli("fit", ckpts["src"], "--template", ckpts["template"], local) == 0
    assert cli("fit", "s3://bkt/urlout-tfsrc/model.ckpt", "--template", ckpts["template"],
               "s3://bkt/urlout-tf/model.ckpt") == 0  # fmt: skip
    assert objects(s3, "urlout-tf") == local_files(local.parent)
    got = tmp_path / "got"
    s3.get("bkt/urlout-tf/", str(got), recursive=True)
    from tf_support import require_tf, tf_load

    require_tf()
    loaded, expected = tf_load(str(got / "model.ckpt")), tf_load(str(local))
    assert loaded.keys() == expected.keys() and "head/scale" in loaded
    assert loaded == expected


def test_merge_to_s3_and_to_an_archive_equal_the_local_merge(s3, ckpts, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    local = tmp_path / "local" / "model.ckpt"

    def merge(out, *more):
        return cli("merge", ckpts["src"], ckpts["src2"], out, "-q", *more)

    assert merge(local) == 0
    assert merge("s3://bkt/urlout-merge/model.ckpt") == 0
    _same_as_local(s3, "urlout-merge", local, merge, capsys)
    assert merge("s3://bkt/urlout-merge/", "--dry-run") == 2  # a directory: model.ckpt there, which exists
    assert "already exists" in capsys.readouterr().err
    assert merge(tmp_path / "m.tar.zst") == 0
    _archive_equals_local(tmp_path / "m.tar.zst", local, tmp_path, "merge")
    assert merge(tmp_path / "m.tar.zst") == 2
    assert "already exists" in capsys.readouterr().err
    assert not (tmp_path / "s3:").exists()


def test_merge_into_its_inputs_directory_on_s3_leaves_the_state_file(s3, ckpts, tmp_path):
    """As locally: a training run's directory keeps its own state file."""
    for name in ("src", "src2"):
        for p in Path(ckpts[name]).parent.iterdir():
            if p.name != "checkpoint":
                s3.put(str(p), f"bkt/urlout-run/{name}.{p.name.split('.', 1)[1]}")
    s3.pipe("bkt/urlout-run/checkpoint", b'model_checkpoint_path: "src2.ckpt"\n')
    inputs = ["s3://bkt/urlout-run/src.ckpt", "s3://bkt/urlout-run/src2.ckpt"]
    assert cli("merge", *inputs, "s3://bkt/urlout-run/merged.ckpt", "-q") == 0
    assert s3.exists("bkt/urlout-run/merged.ckpt.index")
    assert s3.cat_file("bkt/urlout-run/checkpoint") == b'model_checkpoint_path: "src2.ckpt"\n'


def test_salvage_to_s3_and_to_an_archive_equal_the_local_salvage(s3, ckpts, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    local = tmp_path / "local" / "model.ckpt"

    def salvage(out, *more):
        return cli("doctor", ckpts["damaged"], "--salvage", out, *more)

    assert salvage(local) == 1  # damaged, and the intact tensors written
    with ckptio.open(str(local)) as c:
        assert "layer_1/kernel" not in c and "layer_0/kernel" in c
    assert salvage("s3://bkt/urlout-salvage/model.ckpt") == 1
    assert objects(s3, "urlout-salvage") == local_files(local.parent)
    capsys.readouterr()
    assert salvage("s3://bkt/urlout-salvage/model.ckpt") == 2
    assert "already exists" in capsys.readouterr().err
    assert salvage("s3://bkt/urlout-salvage/model.ckpt", "--force") == 1
    assert objects(s3, "urlout-salvage") == local_files(local.parent)
    assert salvage(tmp_path / "s.tar.zst") == 1
    _archive_equals_local(tmp_path / "s.tar.zst", local, tmp_path, "salvage")
    assert not (tmp_path / "s3:").exists()


def test_unpack_to_s3_equals_the_local_unpack_and_writes_the_index_last(s3, ckpts, tmp_path, monkeypatch, capsys):
    from ckptio.store import remote_output

    monkeypatch.chdir(tmp_path)
    archive = tmp_path / "a.tar.zst"
    assert cli("pack", ckpts["src"], archive) == 0
    local = tmp_path / "local"
    assert cli("unpack", archive, local) == 0
    created = []
    real = remote_output.RemoteFiles.create

    def create(self, path):
        created.append(path.rpartition("/")[2])
        return real(self, path)

    monkeypatch.setattr(remote_output.RemoteFiles, "create", create)
    assert cli("unpack", archive, "s3://bkt/urlout-unpack") == 0
    assert objects(s3, "urlout-unpack") == local_files(local)
    assert created == ["model.ckpt.data-00000-of-00002", "model.ckpt.data-00001-of-00002", "model.ckpt.index"]
    capsys.readouterr()
    assert cli("unpack", archive, "s3://bkt/urlout-unpack") == 2
    assert "file exists" in capsys.readouterr().err
    assert cli("unpack", archive, "s3://bkt/urlout-unpack", "--force") == 0
    assert objects(s3, "urlout-unpack") == local_files(local)
    assert not (tmp_path / "s3:").exists()
