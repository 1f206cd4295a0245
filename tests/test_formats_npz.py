"""Export to and read from NumPy .npz (ckptio/formats/npz.py): pickle-free, dtypes kept.

The oracle is numpy.load(allow_pickle=False) and the arrays the source was built from.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zipfile

import ml_dtypes
import numpy as np
import pytest
from test_formats_safetensors import ARRAYS, same, write_bundle

import ckptio
from ckptio.bundle.writer import BundleWriter
from ckptio.errors import CorruptCheckpointError, OutputExistsError, PlanError, UnsupportedError

ML = {"bfloat16": ml_dtypes.bfloat16, "float8_e4m3fn": ml_dtypes.float8_e4m3fn, "float8_e5m2": ml_dtypes.float8_e5m2}


def load_npz(path) -> tuple[dict, dict]:
    """Every member with numpy.load(allow_pickle=False); ml_dtypes restored from the side table."""
    with np.load(path, allow_pickle=False) as z:
        members = {k: z[k] for k in z.files}
    info = json.loads(str(members.pop("__ckptio__")[()]))
    out = {}
    for name, value in members.items():
        recorded = info["dtypes"].get(name)
        out[name] = value.view(ML[recorded]) if recorded in ML else value
    return out, info


@pytest.fixture()
def bundle(tmp_path):
    arrays = dict(ARRAYS, c128=np.array([1 + 2j], np.complex128))
    return write_bundle(tmp_path / "src" / "model.ckpt", arrays), arrays


def test_every_dtype_round_trips_and_loads_without_pickle(bundle, tmp_path):
    src, arrays = bundle
    out = str(tmp_path / "out" / "model.npz")
    ckptio.rewrite(src, out)
    got, info = load_npz(out)
    assert set(got) == set(arrays)
    for name, want in arrays.items():
        assert same(got[name], want), name
    assert info["dtypes"] == {"bf16": "bfloat16", "f8_e4m3fn": "float8_e4m3fn", "f8_e5m2": "float8_e5m2"}
    assert info["format"] == "ckptio-npz" and info["source"] == src and info["ckptio_version"] == ckptio.__version__
    with np.load(out, allow_pickle=False) as z:  # raw void, as documented, not an unloadable descr
        assert z["bf16"].dtype == np.dtype("V2") and z["f8_e5m2"].dtype == np.dtype("V1")
    with zipfile.ZipFile(out) as z:
        assert {m.compress_type for m in z.infolist()} == {zipfile.ZIP_STORED}
    with ckptio.open(out) as ck:  # ckptio reads the TF dtypes back
        assert ck["bf16"].dtype_name == "bfloat16" and ck["c128"].dtype_name == "complex128"
        for name, want in arrays.items():
            assert same(ck[name].read(), want), name


def test_reading_one_member_reads_only_its_bytes(bundle, tmp_path):
    src, arrays = bundle
    out = str(tmp_path / "m.npz")
    ckptio.rewrite(src, out)
    with ckptio.open(out) as ck:
        before = ck.bytes_read
        ck["f32"].read()
        assert ck.bytes_read - before == arrays["f32"].nbytes


def test_string_tensor_is_an_error(tmp_path):
    src = str(tmp_path / "src" / "m")
    with BundleWriter(src) as w:
        w.add_array("words", np.array([b"x"], dtype=object))
        w.finish(state_file=False)
    with pytest.raises(PlanError, match=r"'words' is a string tensor, which an \.npz \(without pickle\) cannot hold"):
        ckptio.rewrite(src, str(tmp_path / "m.npz"))
    assert not (tmp_path / "m.npz").exists()


def test_reserved_name(tmp_path):
    src = write_bundle(tmp_path / "src" / "m", {"__ckptio__": np.ones(2, np.float32)})
    with pytest.raises(PlanError, match="reserved"):
        ckptio.rewrite(src, str(tmp_path / "m.npz"))
    assert os.listdir(tmp_path) == ["src"]


def test_force_and_input(bundle, tmp_path):
    src, _ = bundle
    out = str(tmp_path / "m.npz")
    ckptio.rewrite(src, out)
    with pytest.raises(OutputExistsError):
        ckptio.rewrite(src, out)
    ckptio.rewrite(src, out, [ckptio.Select(include=("^f32$",))], force=True)
    assert set(load_npz(out)[0]) == {"f32"}
    with pytest.raises(OutputExistsError, match="is the input"):
        ckptio.rewrite(out, out, force=True)


def test_reads_numpy_savez_and_savez_compressed(tmp_path):
    arrays = {
        "a": np.arange(12, dtype=np.float32).reshape(3, 4),
        "b": np.array(5, np.int64),
        "big_endian": np.arange(6, dtype=">i4").reshape(2, 3),
        "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
    }
    for save in (np.savez, np.savez_compressed):
        path = str(tmp_path / f"{save.__name__}.npz")
        save(path, **arrays)
        with ckptio.open(path) as ck:
            assert set(ck) == set(arrays)
            for name, want in arrays.items():
                got = ck[name].read()
                assert got.dtype == want.dtype.newbyteorder("=") and np.array_equal(got, want), (save, name)
        prefix = str(tmp_path / save.__name__ / "model.ckpt")
        ckptio.rewrite(path, prefix)  # an .npz into a TF checkpoint
        with ckptio.open(prefix) as ck:
            assert all(np.array_equal(ck[n].read(), a) for n, a in arrays.items())


def test_unsupported_members(tmp_path):
    path = str(tmp_path / "obj.npz")
    np.savez(path, o=np.array([{"x": 1}], dtype=object))
    with pytest.raises(UnsupportedError, match="not a numeric tensor"):
        ckptio.open(path)
    path = str(tmp_path / "void.npz")
    np.savez(path, v=np.zeros(3, "V2"))
    with pytest.raises(UnsupportedError, match="no recorded dtype"):
        ckptio.open(path)


def _npy(header: str, data: bytes = b"") -> bytes:
    raw = header.encode("latin1")
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(raw)) + raw + data


def test_hostile_members(tmp_path):
    cases = {
        "bad magic": b"NOTNUMPY" + bytes(100),
        "bad header": _npy("{'descr': 1+}   \n"),
        "extra key": _npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'x': 1}\n", bytes(4)),
        "size mismatch": _npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2,)}\n", bytes(4)),
        "negative dim": _npy("{'descr': '<f4', 'fortran_order': False, 'shape': (-1,)}\n"),
        "header past the end": b"\x93NUMPY\x01\x00\xff\x00{'descr'",
    }
    messages = {
        "bad magic": "bad magic",
        "bad header": "bad .npy header",
        "extra key": "bad .npy header",
        "size mismatch": "member holds 4 data bytes",
        "negative dim": "bad shape",
        "header past the end": "runs past the member's end",
    }
    for what, member in cases.items():
        path = str(tmp_path / "bad.npz")
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("t.npy", member)
        with pytest.raises(CorruptCheckpointError) as info:
            ckptio.open(path)
        assert messages[what] in str(info.value), what


def test_verify_checks_member_crcs(bundle, tmp_path):
    src, arrays = bundle
    out = tmp_path / "m.npz"
    ckptio.rewrite(src, str(out))
    assert ckptio.verify(str(out)).ok
    raw = bytearray(out.read_bytes())
    at = raw.index(arrays["f32"].tobytes())
    raw[at] ^= 0x40
    out.write_bytes(bytes(raw))
    report = ckptio.verify(str(out))
    assert not report.ok and report.problems[0].key == "f32" and "CRC" in report.problems[0].message
    proc = subprocess.run(
        [sys.executable, "-m", "ckptio", "verify", str(out)],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=os.getcwd()),
    )
    assert proc.returncode == 1 and "f32" in proc.stderr
