"""ckptio reads what TensorFlow wrote, exactly as TensorFlow reads it back.

Golden files: the 27 fixtures of tools/make_fixtures.py, written by real TF 2.21 with their
truth.json (dtype, shape, sha256 of what `tf.train.load_checkpoint` returns). TF itself runs
only in subprocesses (tests/tf_support.py); the `tf_fixtures` session fixture is in conftest.py.
"""

from __future__ import annotations

import glob
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import ckptio
from ckptio.errors import UnsupportedError
from ckptio.io import FileSource
from ckptio.sstable import Table, TableBuilder

try:
    from tf_support import FIXTURE_NAMES, fixture_prefix, hash_array, tf_load
except ImportError:  # tests/ imported as a package
    from .tf_support import FIXTURE_NAMES, fixture_prefix, hash_array, tf_load


def truth_dtype(t) -> str:
    """Our dtype name in truth.json's vocabulary (numpy names, "object" for strings)."""
    return "object" if t.dtype_name == "string" else t.dtype_name


def compare(ck, tensors: dict) -> list[str]:
    """Every difference between an open checkpoint and a truth `tensors` map."""
    problems = []
    if set(ck) != set(tensors):
        problems.append(
            f"names differ: only ours {sorted(set(ck) - set(tensors))}, only TF's {sorted(set(tensors) - set(ck))}"
        )
    for name, want in tensors.items():
        if name not in ck:
            continue
        t = ck[name]
        if truth_dtype(t) != want["dtype"] or list(t.shape) != want["shape"]:
            problems.append(f"{name}: {truth_dtype(t)}{list(t.shape)} != {want['dtype']}{want['shape']}")
            continue
        if want["dtype"] == "variant":
            try:
                t.read()
                problems.append(f"{name}: reading a variant tensor did not raise UnsupportedError")
            except UnsupportedError as exc:
                if "variant" not in str(exc) or name not in str(exc):
                    problems.append(f"{name}: unclear variant error: {exc}")
            continue
        try:
            value = t.read()
        except Exception as exc:  # noqa: BLE001 - report every failure, not just the first
            problems.append(f"{name}: {type(exc).__name__}: {exc}")
            continue
        if list(value.shape) != want["shape"]:
            problems.append(f"{name}: read() shape {value.shape}")
        elif hash_array(value) != want["sha256"]:
            problems.append(f"{name}: values differ from TF's")
    return problems


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_fixture_reads_like_tf(tf_fixtures, name):
    outdir, truth = tf_fixtures
    rec = truth["fixtures"][name]
    prefix = fixture_prefix(outdir, truth, name)
    if name == "tf1_v1_sharded":  # its truth prefix is a glob; test_v1_sharded covers that form
        prefix = prefix.replace("-?????-of-00002", "")
    with ckptio.open(prefix) as ck:
        assert ck.format == rec["format"]
        assert compare(ck, rec["tensors"]) == []


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_fixture_verifies_clean(tf_fixtures, name, capsys):
    """`verify` (API and CLI) finds nothing wrong in any checkpoint TF wrote and reads back."""
    from ckptio.cli.main import main
    from ckptio.verify import verify

    outdir, truth = tf_fixtures
    prefix = fixture_prefix(outdir, truth, name).replace("-?????-of-00002", "")
    with ckptio.open(prefix) as ck:
        report = verify(ck)
        assert [str(p) for p in report.problems] == []
        assert report.tensors >= len(truth["fixtures"][name]["tensors"])
    assert main(["verify", "-q", prefix]) == 0
    assert capsys.readouterr().err == ""


def test_every_dtype_and_kind_is_exercised(tf_fixtures):
    _, truth = tf_fixtures
    seen = {t["dtype"] for rec in truth["fixtures"].values() for t in rec["tensors"].values()}
    want = {
        "bfloat16",
        "float8_e5m2",
        "float8_e4m3fn",
        "float8_e4m3fnuz",
        "float8_e4m3b11fnuz",
        "float8_e5m2fnuz",
        "int4",
        "uint4",
        "int2",
        "uint2",
        "float4_e2m1fn",
        "qint8",
        "quint8",
        "qint16",
        "quint16",
        "qint32",
        "object",
        "variant",
        "complex64",
        "complex128",
        "float16",
    }
    assert want <= seen
    all_dtypes = truth["fixtures"]["tf2_all_dtypes"]["tensors"]
    assert any(t["shape"] == [] for t in all_dtypes.values())
    assert any(0 in t["shape"] for t in all_dtypes.values())


def test_dtype_property_matches_read(tf_fixtures):
    """Tensor.dtype (no I/O) is the dtype of what read() returns, for every dtype TF wrote."""
    outdir, truth = tf_fixtures
    bad = []
    for fx in ("tf2_all_dtypes", "tf2_exotic_dtypes", "tf1_v1_plain"):
        with ckptio.open(fixture_prefix(outdir, truth, fx)) as ck:
            for name in ck:
                t = ck[name]
                try:
                    if t.dtype != t.read().dtype:
                        bad.append(f"{fx}:{name}: {t.dtype} vs {t.read().dtype}")
                except Exception as exc:  # noqa: BLE001
                    bad.append(f"{fx}:{name}: {type(exc).__name__}: {exc}")
    assert bad == []


# --------------------------------------------------------------------------- partitioned / sliced


@pytest.mark.parametrize("name", ["tf1_partitioned_v2", "tf1_partitioned_v1", "tf2_max_shard"])
def test_partitioned_slices(tf_fixtures, name):
    outdir, truth = tf_fixtures
    tensors = truth["fixtures"][name]["tensors"]
    with ckptio.open(fixture_prefix(outdir, truth, name)) as ck:
        sliced = [n for n in ck if ck[n].slices]
        assert sliced, "the fixture has partitioned tensors"
        assert not any(n.startswith("\x00") for n in ck)  # slice entries are hidden
        for n in sliced:
            t = ck[n]
            whole = t.read()
            assert hash_array(whole) == tensors[n]["sha256"]
            covered = np.zeros(t.shape, dtype=int)
            for s in t.slices:
                piece = t.read_slice(s)
                region = tuple(slice(a, b) for a, b in s.bounds(t.shape))
                assert piece.shape == s.shape(t.shape)
                assert np.array_equal(piece, whole[region])
                covered[region] += 1
            assert (covered == 1).all()  # the stored slices tile the tensor exactly
            assert t.nbytes == whole.nbytes


def test_partitioned_v1_equals_v2(tf_fixtures):
    outdir, truth = tf_fixtures
    with (
        ckptio.open(fixture_prefix(outdir, truth, "tf1_partitioned_v1")) as v1,
        ckptio.open(fixture_prefix(outdir, truth, "tf1_partitioned_v2")) as v2,
    ):
        assert v1.format == "v1" and v2.format == "v2"
        assert sorted(v1) == sorted(v2)
        for n in v1:
            assert np.array_equal(v1[n].read(), v2[n].read()), n
            if v2[n].slices:  # V1 also lists the one full slice every unpartitioned tensor is stored as
                assert v1[n].slices == v2[n].slices


def test_max_shard_slices_span_shards(tf_fixtures):
    outdir, truth = tf_fixtures
    with ckptio.open(fixture_prefix(outdir, truth, "tf2_max_shard")) as ck:
        assert ck.num_shards >= 3
        shard_ids = {e.shard_id for e in ck._reader.slice_entries().values()}
        assert len(shard_ids) >= 2


# --------------------------------------------------------------------------- V1, shards, TF2, SavedModel


def test_v1_sharded(tf_fixtures):
    """A sharded V1 checkpoint opens from the pattern TF's Saver returns, a shard file, its base
    name and its directory (whose state file names the pattern)."""
    outdir, truth = tf_fixtures
    rec = truth["fixtures"]["tf1_v1_sharded"]
    pattern = fixture_prefix(outdir, truth, "tf1_v1_sharded")
    assert pattern.endswith("-?????-of-00002")
    shards = sorted(glob.glob(pattern))
    assert len(shards) == 2
    forms = {
        "base": pattern[: -len("-?????-of-00002")],
        "shard file": shards[1],
        "pattern": pattern,
        "directory": os.path.dirname(pattern),
    }
    failures = {}
    for label, path in forms.items():
        try:
            with ckptio.open(path) as ck:
                assert ck.format == "v1"
                assert sorted(ck.located.files) == shards
                problems = compare(ck, rec["tensors"])
                if problems:
                    failures[label] = problems
        except Exception as exc:  # noqa: BLE001 - report every form that fails
            failures[label] = f"{type(exc).__name__}: {exc}"
    assert failures == {}


def test_multi_shard_v2(tf_fixtures):
    outdir, truth = tf_fixtures
    with ckptio.open(fixture_prefix(outdir, truth, "tf1_sharded_v2")) as ck:
        assert ck.num_shards >= 2
        assert len({ck[n].entry.shard_id for n in ck}) == ck.num_shards
        assert compare(ck, truth["fixtures"]["tf1_sharded_v2"]["tensors"]) == []


def test_savedmodel_directory(tf_fixtures):
    outdir, truth = tf_fixtures
    rec = truth["fixtures"]["savedmodel"]
    with ckptio.open(outdir / rec["savedmodel_dir"]) as ck:
        assert ck.prefix == fixture_prefix(outdir, truth, "savedmodel")
        assert compare(ck, rec["tensors"]) == []


@pytest.mark.parametrize("name", ["tf2_keras3_adam", "tf2_legacy_adam", "tf2_module_tree", "savedmodel"])
def test_object_graph(tf_fixtures, name):
    from ckptio._proto import trackable_object_graph_pb2 as pb

    outdir, truth = tf_fixtures
    with ckptio.open(fixture_prefix(outdir, truth, name)) as ck:
        raw = ck.object_graph_bytes
        assert raw == ck["_CHECKPOINTABLE_OBJECT_GRAPH"].read().item()
        graph = pb.TrackableObjectGraph.FromString(raw)
        keys = {a.checkpoint_key for node in graph.nodes for a in node.attributes}
        assert keys and keys <= set(ck)
        assert set(ck) - keys == {"_CHECKPOINTABLE_OBJECT_GRAPH"}
    with ckptio.open(fixture_prefix(outdir, truth, "tf1_adam")) as ck:
        assert ck.object_graph_bytes is None


def test_fixture_tables_reencode_byte_identical(tf_fixtures):
    """Every TF-written .index (and V1 table) is reproduced byte for byte by our builder."""
    outdir, _ = tf_fixtures
    paths = sorted(glob.glob(str(outdir / "**" / "*.index"), recursive=True))
    paths += [p for p in glob.glob(str(outdir / "*v1*" / "model.ckpt*")) if not p.endswith(".meta")]
    assert len(paths) >= 28
    for p in paths:
        original = Path(p).read_bytes()
        out = bytearray()
        b = TableBuilder(out.extend)
        for k, v in Table(FileSource(p)):
            b.add(k, v)
        b.finish()
        assert bytes(out) == original, p


def test_fixture_files_untouched(tf_fixtures, tmp_path):
    """Reading never writes: open + read every tensor of a copy leaves every byte and name as is."""
    outdir, truth = tf_fixtures
    src = outdir / "tf2_all_dtypes"
    copy = tmp_path / "c"
    shutil.copytree(src, copy)
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in copy.iterdir()}
    with ckptio.open(copy) as ck:
        for n in ck:
            ck[n].read()
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in copy.iterdir()} == before


# --------------------------------------------------------------------------- TF reads what we read


def _ours(prefix) -> dict:
    out = {}
    with ckptio.open(prefix) as ck:
        for n in ck:
            t = ck[n]
            v = t.read()
            out[n] = {
                "dtype": truth_dtype(t),
                "shape": list(t.shape),
                "sha256": hash_array(v),
                "num_elements": int(v.size),
            }
    return out


def test_tf_reads_hand_written_big_endian_bundle(tmp_path, tf_fixtures):
    """The big-endian bundle of test_bundle_units (written without ckptio's encoders) is read
    identically by TensorFlow and by ckptio (FORMAT §4.6)."""
    try:
        from test_bundle_units import write_big_endian_bundle
    except ImportError:
        from .test_bundle_units import write_big_endian_bundle
    prefix = str(tmp_path / "be")
    write_big_endian_bundle(prefix)
    assert tf_load(prefix, restore_fallback=False) == _ours(prefix)


def test_tf_reads_our_writer_every_dtype(tmp_path, tf_fixtures):
    """Every dtype TF 2.21 can hold, written by our BundleWriter, reads the same in TF and ckptio."""
    import ml_dtypes

    from ckptio.bundle import dtypes
    from ckptio.bundle.decode import to_bytes
    from ckptio.bundle.writer import BundleWriter

    rng = np.random.RandomState(3)
    prefix = str(tmp_path / "ours")
    with BundleWriter(prefix) as w:
        for d in dtypes.BY_ENUM.values():
            if not d.fixed_width:
                continue
            if d.name in ("int2", "uint2", "int4", "uint4"):
                info = ml_dtypes.iinfo(getattr(ml_dtypes, d.name))
                arr = rng.randint(int(info.min), int(info.max) + 1, (2, 3)).astype(d.numpy())
            elif d.numpy().kind in "iub":
                arr = rng.randint(0, 256, (2, 3, d.itemsize), dtype=np.uint8).view(d.numpy()).reshape(2, 3)
                if d.name == "bool":
                    arr = rng.randint(0, 2, (2, 3)).astype(bool)
            elif d.name.startswith("complex"):
                arr = (rng.standard_normal((2, 3)) + 1j * rng.standard_normal((2, 3))).astype(d.numpy())
            else:
                arr = rng.standard_normal((2, 3)).astype(d.numpy())
            w.add_bytes(d.name, d.enum, arr.shape, [to_bytes(arr, d)])
            w.add_bytes("scalar/" + d.name, d.enum, (), [to_bytes(arr.reshape(-1)[:1].reshape(()), d)])
            w.add_bytes("empty/" + d.name, d.enum, (0, 2), [b""])
        s = np.array([b"", b"x\x00y", b"z" * 200], dtype=object)
        w.add_array("string", s)
        w.add_array("empty/string", np.zeros((0,), dtype=object))
        w.finish()
    assert tf_load(prefix, restore_fallback=False) == _ours(prefix)
