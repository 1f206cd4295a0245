"""Keras 3 weight files read through h5py (ckptio/formats/keras_h5.py, keras_archive.py), without TF.

Files here are built with h5py in Keras 3's layout (FORMAT-models.md §7); the real Keras round
trip (a trained model's .keras stripped and loaded) is in tests/workflows/test_interop_workflows.py.
"""

from __future__ import annotations

import json
import os
import zipfile

import ml_dtypes
import numpy as np
import pytest

import ckptio
from ckptio.errors import OutputExistsError, PlanError, UnsupportedError, WrongFileError

h5py = pytest.importorskip("h5py")

KERNEL = np.arange(15, dtype=np.float32).reshape(3, 5)
BIAS = np.linspace(-1, 1, 5).astype(np.float32)
BF16 = np.array([1.5, -2.25, 3.0], dtype=ml_dtypes.bfloat16)


def write_weights_h5(path, *, optimizer=True, chunked=False) -> str:
    """A Keras 3 .weights.h5: layers/dense/vars/0..1, a bfloat16 variable, optimizer/vars/0..11."""
    with h5py.File(path, "w") as f:
        f.create_group("vars").attrs["name"] = "model"
        g = f.create_group("layers/dense/vars")
        g.attrs["name"] = "d1"
        kwargs = {"chunks": (1, 5), "compression": "gzip"} if chunked else {}
        g.create_dataset("0", data=KERNEL, **kwargs)
        g.create_dataset("1", data=BIAS)
        b = f.create_group("layers/emb/vars")
        ds = b.create_dataset("0", data=BF16.view(np.uint8).reshape(3, 2).view("V2").reshape(3))
        ds.attrs["dtype"] = "bfloat16"
        if optimizer:
            o = f.create_group("optimizer/vars")
            o.attrs["name"] = "adam"
            for i in range(12):  # 10, 11 sort before 2 in HDF5's listing
                o.create_dataset(str(i), data=np.full((2,), i, np.float32))
    return str(path)


def write_keras(path, h5_path, *, extra=None) -> str:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("metadata.json", json.dumps({"keras_version": "3.15.1"}))
        z.writestr("config.json", json.dumps({"class_name": "Functional"}))
        z.write(h5_path, "model.weights.h5")
        for name, data in (extra or {}).items():
            z.writestr(name, data)
    return str(path)


@pytest.mark.parametrize("chunked", [False, True])
def test_weights_h5_reads_as_a_checkpoint(tmp_path, chunked):
    path = write_weights_h5(tmp_path / "m.weights.h5", chunked=chunked)
    with ckptio.open(path) as ck:
        assert ck.format == "keras_h5"
        assert {"layers/dense/vars/0", "layers/dense/vars/1", "layers/emb/vars/0", "optimizer/vars/11"} <= set(ck)
        assert np.array_equal(ck["layers/dense/vars/0"].read(), KERNEL)
        emb = ck["layers/emb/vars/0"]
        assert emb.dtype_name == "bfloat16" and emb.read().tobytes() == BF16.tobytes()
        before = ck.bytes_read
        ck["layers/dense/vars/1"].read()  # contiguous: one range read of its own bytes, not via h5py
        assert ck.bytes_read - before == BIAS.nbytes


def test_keras_archive_weights_and_strip(tmp_path):
    src = write_keras(tmp_path / "m.keras", write_weights_h5(tmp_path / "w.h5"), extra={"assets/vocab.txt": "a\nb\n"})
    out = tmp_path / "out" / "m.keras"
    report = ckptio.rewrite(src, str(out), [ckptio.StripOptimizer()])
    assert len(report.dropped) == 12 and all(n.startswith("optimizer/") for n in report.dropped)
    assert out.stat().st_size < os.path.getsize(src)
    with zipfile.ZipFile(out) as z, zipfile.ZipFile(src) as s:
        assert z.namelist() == s.namelist()
        assert {m.compress_type for m in z.infolist()} == {zipfile.ZIP_STORED}
        for name in ("metadata.json", "config.json", "assets/vocab.txt"):
            assert z.read(name) == s.read(name)
    with ckptio.open(str(out)) as ck:
        assert not [n for n in ck if n.startswith("optimizer/")]
        assert np.array_equal(ck["layers/dense/vars/0"].read(), KERNEL)
        assert ck["layers/emb/vars/0"].read().tobytes() == BF16.tobytes()
        with zipfile.ZipFile(out) as z, z.open("model.weights.h5") as f, h5py.File(f) as h:
            assert h["layers/dense/vars"].attrs["name"] == "d1"  # group attributes copied (Keras checks counts by them)
    with pytest.raises(OutputExistsError):
        ckptio.rewrite(src, str(out), [ckptio.StripOptimizer()])
    with pytest.raises(OutputExistsError, match="is the input"):
        ckptio.rewrite(src, src, [ckptio.StripOptimizer()], force=True)
    with pytest.raises(PlanError, match="strip only"):
        ckptio.rewrite(src, str(tmp_path / "r.keras"), [ckptio.Rename((("layers/", "x/"),))])
    assert not (tmp_path / "r.keras").exists()


def test_keras_weights_export_to_safetensors_drops_the_optimizer_on_strip(tmp_path):
    from test_formats_safetensors import load_reference

    src = write_keras(tmp_path / "m.keras", write_weights_h5(tmp_path / "w.h5"))
    out = tmp_path / "m.safetensors"
    ckptio.rewrite(src, str(out), [ckptio.StripOptimizer()])
    got = load_reference(out)
    assert set(got) == {"layers/dense/vars/0", "layers/dense/vars/1", "layers/emb/vars/0"}
    assert got["layers/emb/vars/0"].tobytes() == BF16.tobytes()


def test_strip_into_weights_h5(tmp_path):
    weights = write_weights_h5(tmp_path / "w.weights.h5")
    archive = write_keras(tmp_path / "m.keras", weights)
    for src in (archive, weights):
        out = tmp_path / "out" / (os.path.basename(src) + ".weights.h5")
        report = ckptio.rewrite(src, str(out), [ckptio.StripOptimizer()])
        assert len(report.dropped) == 12
        with h5py.File(out) as h:
            assert sorted(h) == ["layers", "vars"] and h["layers/dense/vars"].attrs["name"] == "d1"
            assert h["layers/emb/vars/0"].attrs["dtype"] == "bfloat16"  # the opaque bfloat16 marker kept
        with ckptio.open(str(out)) as ck:
            assert np.array_equal(ck["layers/dense/vars/0"].read(), KERNEL)
            assert ck["layers/emb/vars/0"].read().tobytes() == BF16.tobytes()
    from test_formats_safetensors import write_bundle

    prefix = write_bundle(tmp_path / "tf" / "m", {"w": np.ones(2, np.float32)})
    with pytest.raises(PlanError, match="Keras outputs are written from Keras inputs only"):
        ckptio.rewrite(prefix, str(tmp_path / "x.weights.h5"))
    with pytest.raises(PlanError, match="Keras outputs are written from Keras inputs only"):
        ckptio.rewrite(weights, str(tmp_path / "x.keras"), [ckptio.StripOptimizer()])
    assert not (tmp_path / "x.weights.h5").exists() and not (tmp_path / "x.keras").exists()


def test_not_keras_files(tmp_path):
    bad = tmp_path / "x.weights.h5"
    bad.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))
    with pytest.raises(WrongFileError, match="not an HDF5 file"):
        ckptio.open(str(bad))
    notzip = tmp_path / "x.keras"
    notzip.write_bytes(b"hello")
    with pytest.raises(WrongFileError, match="not a Keras .keras archive"):
        ckptio.open(str(notzip))
    noweights = tmp_path / "y.keras"
    with zipfile.ZipFile(noweights, "w") as z:
        z.writestr("config.json", "{}")
    with pytest.raises(WrongFileError, match="no model.weights.h5"):
        ckptio.open(str(noweights))
    strings = tmp_path / "s.weights.h5"
    with h5py.File(strings, "w") as f:
        f.create_dataset("layers/t/vars/0", data=np.array([b"a", b"b"], dtype=object), dtype=h5py.string_dtype())
    with pytest.raises(UnsupportedError, match="not a numeric tensor"):
        ckptio.open(str(strings))


def test_ls_marks_the_optimizer_group(tmp_path):
    import subprocess
    import sys

    path = write_weights_h5(tmp_path / "m.weights.h5")
    proc = subprocess.run(
        [sys.executable, "-m", "ckptio", "ls", path, "--json"],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=os.getcwd()),
    )
    doc = json.loads(proc.stdout)
    assert doc["totals"]["optimizer"]["tensors"] == 12 and doc["totals"]["weight"]["tensors"] == 3
    assert doc["format"] == "keras_h5"


def test_verify_reads_every_dataset(tmp_path):
    path = write_weights_h5(tmp_path / "m.weights.h5")
    report = ckptio.verify(path)
    assert report.ok and report.tensors == 15 and "no checksums" in report.checked
