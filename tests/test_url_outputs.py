"""Outputs named by URL go where the URL says, or are refused: never to a local path spelled like it.

A URL destination that a command cannot write (a Keras file) is refused with one line
and exit 1, and nothing appears locally under a directory called 's3:'; file:// is a local path.
"""

from __future__ import annotations

import os
from pathlib import Path

from ckptio.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = str(ROOT / "examples" / "sample" / "model.ckpt-1")


def cli(*argv) -> int:
    return main([str(a) for a in argv])


def test_keras_exports_to_s3_refuse_and_unpack_writes_there_nothing_locally(s3, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    # .safetensors and .npz go to object storage (tests/test_export_store.py); Keras files h5py writes locally.
    for out in ("s3://bkt/x.keras", "s3://bkt/x.weights.h5"):
        assert cli("strip", SAMPLE, out) == 1
        assert "Keras files to local paths only" in capsys.readouterr().err
    assert cli("pack", SAMPLE, tmp_path / "a.tar.zst") == 0
    assert cli("unpack", tmp_path / "a.tar.zst", "s3://bkt/u") == 0  # through the URL's store (test_url_writers.py)
    assert not (tmp_path / "s3:").exists()
    assert sorted(p.rpartition("/")[2] for p in s3.find("bkt/u")) == [
        "model.ckpt-1.data-00000-of-00001",
        "model.ckpt-1.index",
    ]
    assert not s3.exists("bkt/x.keras") and not s3.exists("bkt/x.weights.h5")


def test_file_urls_are_local_paths_for_every_writer(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    assert cli("strip", SAMPLE, f"file://{out}/x.safetensors", "-q") == 0
    assert cli("merge", SAMPLE, SAMPLE, f"file://{out}/m/model.ckpt", "-q") == 0
    assert cli("fit", SAMPLE, "--template", SAMPLE, f"file://{out}/f/model.ckpt") == 0
    assert cli("doctor", SAMPLE, "--salvage", f"file://{out}/s/model.ckpt") == 0
    assert cli("pack", SAMPLE, tmp_path / "a.tar.zst") == 0
    assert cli("unpack", tmp_path / "a.tar.zst", f"file://{out}/u") == 0
    assert (out / "x.safetensors").is_file()
    for d in ("m", "f", "s"):
        assert (out / d / "model.ckpt.index").is_file(), d
    assert sorted(os.listdir(out / "u")) == ["model.ckpt-1.data-00000-of-00001", "model.ckpt-1.index"]
    assert not (tmp_path / "file:").exists()


def test_batch_to_s3_lists_its_outputs_in_the_state_file(s3, tmp_path):
    assert cli("strip", SAMPLE, "--out-dir", "s3://bkt/od", "-q") == 0
    assert s3.exists("bkt/od/model.ckpt-1.index")
    state = s3.cat_file("bkt/od/checkpoint").decode()
    assert 'model_checkpoint_path: "model.ckpt-1"' in state
