"""rewrite(src, dst, steps) as a library, without TensorFlow: values survive, plans are validated
before anything is written, output sharding, atomic writes, overwrite protection, dry runs,
sliced tensors renamed with their slice keys, casts, EMA promotion, V1 and big-endian inputs.

Inputs are written with ckptio's own BundleWriter (TF-written inputs: test_rewrite_tf.py).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys

import ml_dtypes
import numpy as np
import pytest

import ckptio
from ckptio.bundle import dtypes, naming
from ckptio.bundle.entry import Entry, Header
from ckptio.bundle.slices import Slice
from ckptio.bundle.slices import decode_key as decode_slice_key
from ckptio.bundle.slices import encode_key as slice_key
from ckptio.bundle.writer import BundleWriter
from ckptio.errors import ChecksumError, CorruptCheckpointError, OutputExistsError, PlanError
from ckptio.io import FileSource
from ckptio.rewrite import make_plan, rewrite
from ckptio.sstable import Table
from ckptio.sstable.table_builder import TableBuilder
from ckptio.transform import Cast, MapNames, Rename, Select, StripOptimizer, load_map_file
from ckptio.verify import verify

try:
    from tf_support import hash_array
except ImportError:  # tests/ imported as a package
    from .tf_support import hash_array

HAS_OBJGRAPH = importlib.util.find_spec("ckptio.objgraph") is not None
ROWS = [Slice(((0, 2), (0, None))), Slice(((2, 2), (0, None))), Slice(((4, 2), (0, None)))]


# -- helpers -------------------------------------------------------------------------------------------


def write_bundle(prefix, tensors: dict, *, sliced: dict | None = None, num_shards: int = 1) -> str:
    """A V2 checkpoint from {name: array}; sliced: {name: (full array, [Slice])} stored as pieces."""
    prefix = str(prefix)
    with BundleWriter(prefix, num_shards) as w:
        for i, (name, value) in enumerate(tensors.items()):
            w.add_array(name, np.asarray(value), shard=i % num_shards)
        for name, (full, slices) in (sliced or {}).items():
            w.add_entry(name, Entry(dtypes.from_numpy(full.dtype).enum, full.shape, slices=tuple(slices)))
            for s in slices:
                w.add_array(slice_key(name, s), full[tuple(slice(a, b) for a, b in s.bounds(full.shape))])
        w.finish()
    return prefix


def strings(*items) -> np.ndarray:
    arr = np.empty(len(items), dtype=object)
    arr[:] = list(items)
    return arr


def model_tensors(seed: int = 0) -> tuple[dict, dict]:
    """A TF1-style training checkpoint: weights, Adam slots, beta powers, EMA, step, strings, a partition."""
    rng = np.random.default_rng(seed)

    def f32(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    t = {}
    for var, shape in (("model/dense/kernel", (3, 2)), ("model/dense/bias", (2,))):
        t[var] = f32(*shape)
        t[var + "/Adam"] = f32(*shape)
        t[var + "/Adam_1"] = f32(*shape)
    t["model/dense/kernel/ExponentialMovingAverage"] = f32(3, 2)
    t["beta1_power"] = np.float32(0.9)
    t["beta2_power"] = np.float32(0.999)
    t["global_step"] = np.int64(7)
    t["vocab/words"] = strings(b"a", b"", b"\x00\xff", "h\xe9".encode())
    t["counts"] = np.arange(5, dtype=np.int32)
    t["model/half"] = f32(4).astype(np.float16)
    t["model/f64"] = rng.standard_normal(3)
    sliced = {"model/embedding": (f32(6, 4), ROWS), "model/embedding/Adam": (f32(6, 4), ROWS)}
    return t, sliced


@pytest.fixture
def src(tmp_path):
    """(prefix, {name: full array}) of a small TF1-style training checkpoint."""
    tensors, sliced = model_tensors()
    prefix = write_bundle(tmp_path / "src" / "model.ckpt-7", tensors, sliced=sliced)
    values = dict(tensors) | {n: full for n, (full, _) in sliced.items()}
    return prefix, values


def read_all(prefix) -> dict:
    with ckptio.open(prefix) as c:
        return {name: c[name].read() for name in c}


def assert_same_value(a, b, name=""):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, name
    assert a.dtype == b.dtype, (name, a.dtype, b.dtype)
    if a.dtype == object:
        assert list(a.flat) == list(b.flat), name
    else:
        assert a.tobytes() == b.tobytes(), name


def raw_keys(prefix) -> list[bytes]:
    src = FileSource(naming.index_path(str(prefix)))
    try:
        return [k for k, _ in Table(src)]
    finally:
        src.close()


def dir_hashes(directory) -> dict:
    out = {}
    for root, _, files in os.walk(directory):
        for f in files:
            p = os.path.join(root, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, directory)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def data_files(prefix) -> list[str]:
    d, base = os.path.split(str(prefix))
    return sorted(os.path.join(d, n) for n in os.listdir(d) if (naming.split_data_path(n) or ("",))[0] == base)


def assert_no_temp_files(directory):
    if os.path.isdir(directory):
        left = [n for n in os.listdir(directory) if "ckptio-tmp" in n]
        assert not left, left


# -- values survive --------------------------------------------------------------------------------------


def test_identity_rewrite_keeps_every_tensor_and_slice(src, tmp_path):
    prefix, values = src
    report = rewrite(prefix, tmp_path / "out" / "copy", [])
    out = str(tmp_path / "out" / "copy")
    got = read_all(out)
    assert set(got) == set(values)
    for name, value in values.items():
        assert_same_value(got[name], value, name)
    with ckptio.open(prefix) as a, ckptio.open(out) as b:
        ea, eb = a.entries(), b.entries()
        for name in values:
            assert (eb[name].dtype, eb[name].shape, eb[name].slices) == (
                ea[name].dtype,
                ea[name].shape,
                ea[name].slices,
            ), name
            if not ea[name].slices:
                assert eb[name].crc32c == ea[name].crc32c, name  # carried over, not recomputed
        assert verify(b).ok, verify(b).problems
    assert sorted(os.listdir(tmp_path / "out")) == ["checkpoint", "copy.data-00000-of-00001", "copy.index"]
    assert report.dropped == [] and report.renamed == [] and report.cast == []
    assert report.bytes_before == report.bytes_after == os.path.getsize(out + ".data-00000-of-00001")
    assert report.dst == out and report.src == prefix and not report.dry_run


def test_strip_report_and_bytes(src, tmp_path):
    prefix, values = src
    out = str(tmp_path / "out" / "m")
    report = rewrite(prefix, out, [StripOptimizer()])
    dropped = {
        "model/dense/kernel/Adam",
        "model/dense/kernel/Adam_1",
        "model/dense/bias/Adam",
        "model/dense/bias/Adam_1",
        "beta1_power",
        "beta2_power",
        "model/embedding/Adam",
    }
    assert set(report.dropped) == dropped
    assert {s for s, _ in report.kept} == set(values) - dropped
    assert all(s == d for s, d in report.kept)
    got = read_all(out)
    assert set(got) == set(values) - dropped
    for name in got:
        assert_same_value(got[name], values[name], name)
    assert report.bytes_after == os.path.getsize(out + ".data-00000-of-00001")
    assert report.bytes_before > report.bytes_after
    data = report.to_json()
    assert data["dropped"] == report.dropped and data["bytes_after"] == report.bytes_after
    json.dumps(data)


def test_strip_drop_global_step_and_ema_modes(src, tmp_path):
    prefix, values = src
    shadow = "model/dense/kernel/ExponentialMovingAverage"
    keep = read_all(rewrite(prefix, tmp_path / "keep" / "m", [StripOptimizer()]).dst)
    assert shadow in keep and "global_step" in keep
    drop = read_all(rewrite(prefix, tmp_path / "drop" / "m", [StripOptimizer(keep_global_step=False, ema="drop")]).dst)
    assert shadow not in drop and "global_step" not in drop
    assert_same_value(drop["model/dense/kernel"], values["model/dense/kernel"])
    report = rewrite(prefix, tmp_path / "promote" / "m", [StripOptimizer(ema="promote")])
    promoted = read_all(report.dst)
    assert shadow not in promoted and shadow in report.dropped
    assert_same_value(promoted["model/dense/kernel"], values[shadow])  # the shadow's values, the weight's name
    assert_same_value(promoted["model/dense/bias"], values["model/dense/bias"])  # no shadow: unchanged


def test_cast_bfloat16_float16_and_back(src, tmp_path):
    prefix, values = src
    castable = {n for n, v in values.items() if np.asarray(v).dtype in (np.float32, np.float16, np.float64)}
    assert "model/f64" in castable  # float64 is floating: cast too (issue 12 item 5)
    for target, np_type in (("bfloat16", ml_dtypes.bfloat16), ("float16", np.float16)):
        report = rewrite(prefix, tmp_path / target / "m", [Cast(target)])
        assert set(report.cast) == {n for n in castable if np.asarray(values[n]).dtype != np_type}
        left = {n: r for n, _, r in report.not_cast}
        assert left["counts"] == left["vocab/words"] == "not-floating"
        got = read_all(report.dst)
        for name, value in values.items():
            value = np.asarray(value)
            # tf.cast takes float64 to a 16-bit float through float32
            want = (
                (value.astype(np.float32) if value.dtype == np.float64 else value).astype(np_type)
                if name in castable
                else value
            )
            assert_same_value(got[name], want, name)
        back = rewrite(report.dst, tmp_path / (target + "_back") / "m", [Cast("float32")])
        got = read_all(back.dst)
        for name in castable:
            value = np.asarray(values[name])
            if value.dtype == np.float64:
                value = value.astype(np.float32)
            assert_same_value(got[name], value.astype(np_type).astype(np.float32), name)
        # integers and strings are untouched
        for name in ("counts", "global_step", "vocab/words"):
            assert_same_value(got[name], values[name], name)


def test_cast_only_matching_names(src, tmp_path):
    prefix, values = src
    report = rewrite(prefix, tmp_path / "o" / "m", [Cast("bfloat16", ("^model/dense/",))])
    got = read_all(report.dst)
    for name, value in values.items():
        value = np.asarray(value)
        want = (
            value.astype(ml_dtypes.bfloat16) if name.startswith("model/dense/") and value.dtype == np.float32 else value
        )
        assert_same_value(got[name], want, name)


# -- output sharding ------------------------------------------------------------------------------------


def test_num_shards(src, tmp_path):
    prefix, values = src
    out = str(tmp_path / "out" / "m")
    rewrite(prefix, out, [], num_shards=3)
    files = data_files(out)
    assert [os.path.basename(f) for f in files] == [f"m.data-0000{i}-of-00003" for i in range(3)]
    assert all(os.path.getsize(f) > 0 for f in files)
    with ckptio.open(out) as c:
        assert c.num_shards == 3
        used = {e.shard_id for e in c.entries().values() if not e.slices}
        used |= {e.shard_id for e in c._reader.slice_entries().values()}
        assert used == {0, 1, 2}
        assert verify(c).ok
    got = read_all(out)
    for name, value in values.items():
        assert_same_value(got[name], value, name)


def test_max_shard_size(tmp_path):
    rng = np.random.default_rng(1)
    tensors = {f"w{i}": rng.standard_normal(100).astype(np.float32) for i in range(10)}  # 400 bytes each
    tensors["big"] = rng.standard_normal(500).astype(np.float32)  # 2000 bytes: alone in its shard
    prefix = write_bundle(tmp_path / "src" / "m", tensors)
    out = str(tmp_path / "out" / "m")
    rewrite(prefix, out, [], max_shard_size=1000)
    files = data_files(out)
    assert len(files) == 6  # 10 x 400 bytes two per shard, plus the big one
    for f in files:
        size = os.path.getsize(f)
        assert size <= 1000 or size == 2000, (f, size)
    got = read_all(out)
    for name, value in tensors.items():
        assert_same_value(got[name], value, name)
    with ckptio.open(out) as c:
        assert c.num_shards == 6 and verify(c).ok


# -- overwrite protection and atomicity -----------------------------------------------------------------


def test_refuses_existing_output_unless_force(src, tmp_path):
    prefix, values = src
    out = str(tmp_path / "out" / "m")
    rewrite(prefix, out, [], num_shards=3)
    before = dir_hashes(tmp_path / "out")
    with pytest.raises(OutputExistsError, match=r"already exists here \(pass force=True to replace it\)") as e:
        rewrite(prefix, out, [StripOptimizer()])
    assert isinstance(e.value, FileExistsError)
    assert dir_hashes(tmp_path / "out") == before
    rewrite(prefix, out, [StripOptimizer()], force=True)
    # the replaced checkpoint's three data files are gone, the new one has one
    assert [os.path.basename(f) for f in data_files(out)] == ["m.data-00000-of-00001"]
    assert "model/dense/kernel/Adam" not in read_all(out)
    assert_no_temp_files(tmp_path / "out")


@pytest.mark.parametrize("spelling", ["same", "dotdot", "symlinked_dir", "index_file_dir"])
def test_never_writes_over_its_input(src, tmp_path, spelling):
    prefix, _ = src
    d, base = os.path.split(prefix)
    dst = {
        "same": prefix,
        "dotdot": os.path.join(d, "..", os.path.basename(d), base),
        "symlinked_dir": os.path.join(str(tmp_path / "link"), base),
        "index_file_dir": os.path.join(os.path.relpath(d), base),
    }[spelling]
    if spelling == "symlinked_dir":
        os.symlink(d, tmp_path / "link")
    before = dir_hashes(d)
    for force in (False, True):
        with pytest.raises(OutputExistsError, match="output is the input checkpoint"):
            rewrite(prefix, dst, [StripOptimizer()], force=force)
        with pytest.raises(OutputExistsError, match="output is the input checkpoint"):
            rewrite(prefix, dst, [StripOptimizer()], force=force, dry_run=True)
    assert dir_hashes(d) == before
    assert_no_temp_files(d)


def flip_byte(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


def test_corrupt_input_shard_fails_without_leftovers(tmp_path):
    rng = np.random.default_rng(2)
    tensors = {f"w{i}": rng.standard_normal(1000).astype(np.float32) for i in range(4)}
    prefix = write_bundle(tmp_path / "src" / "m", tensors)
    with ckptio.open(prefix) as c:
        last = max(c.entries().values(), key=lambda e: e.offset)
    flip_byte(prefix + ".data-00000-of-00001", last.offset + 10)  # earlier tensors copy fine first
    out = tmp_path / "out"
    for shards in (1, 3):
        with pytest.raises(ChecksumError, match="checksum does not match"):
            rewrite(prefix, out / "m", [], num_shards=shards)
        assert os.listdir(out) == []  # no temp files, no partial checkpoint, no state file
    # replacing an existing output: a failure leaves the old one whole
    good = write_bundle(tmp_path / "good" / "m", {"x": np.arange(3, dtype=np.float32)})
    rewrite(good, out / "m", [])
    before = dir_hashes(out)
    with pytest.raises(CorruptCheckpointError):
        rewrite(prefix, out / "m", [], force=True)
    assert dir_hashes(out) == before
    assert_no_temp_files(out)


def test_failing_name_function_writes_nothing(src, tmp_path):
    prefix, _ = src

    def boom(name):
        if name == "model/dense/bias":
            raise RuntimeError("user function failed")
        return name

    with pytest.raises(RuntimeError, match="user function failed"):
        rewrite(prefix, tmp_path / "out" / "m", [MapNames(boom)])
    assert not (tmp_path / "out").exists()


def test_failure_while_writing_removes_temp_files(src, tmp_path, monkeypatch):
    prefix, _ = src
    rw = importlib.import_module("ckptio.rewrite_exec")  # where rewrite() writes each piece

    calls, seen = [], []
    real = rw._write_piece

    def fail_third(ckpt, writer, piece, shard, verify):
        calls.append(piece.name)
        if len(calls) == 3:
            seen.extend(n for n in os.listdir(tmp_path / "out") if n != ".m.ckptio-lock")  # the writer's claim
            raise OSError(28, "No space left on device")
        return real(ckpt, writer, piece, shard, verify)

    monkeypatch.setattr(rw, "_write_piece", fail_third)
    with pytest.raises(OSError, match="No space left"):
        rewrite(prefix, tmp_path / "out" / "m", [], num_shards=2)
    # while writing: hidden temp names in the destination directory, no final name yet
    assert len(seen) == 2 and all(n.startswith(".m.data-0000") and ".ckptio-tmp-" in n for n in seen), seen
    assert os.listdir(tmp_path / "out") == []


# -- validation before writing -----------------------------------------------------------------------------


def test_collision_is_an_error_naming_both_sources(src, tmp_path):
    prefix, _ = src
    with pytest.raises(PlanError) as e:
        rewrite(prefix, tmp_path / "out" / "m", [Rename((("model/dense/bias", "model/dense/kernel"),))])
    assert str(e.value) == ("'model/dense/bias' and 'model/dense/kernel' would both be written as 'model/dense/kernel'")
    with pytest.raises(PlanError, match="'model/dense/bias/Adam' and 'model/dense/kernel/Adam' would both"):
        rewrite(prefix, tmp_path / "out" / "m", [Rename(((r"(bias|kernel)/Adam$", "kernel/Adam"),), regex=True)])
    assert not (tmp_path / "out").exists()


def test_unmatched_rule_is_an_error_unless_allowed(src, tmp_path):
    prefix, values = src
    rules = (("model/", "net/"), ("decoder/", "dec/"))
    with pytest.raises(PlanError, match=r"rename rule matches no tensor: decoder/=dec/"):
        rewrite(prefix, tmp_path / "out" / "m", [Rename(rules)])
    assert not (tmp_path / "out").exists()
    report = rewrite(prefix, tmp_path / "out" / "m", [Rename(rules, allow_unmatched=True)])
    assert set(read_all(report.dst)) == {("net/" + n[len("model/") :]) if n.startswith("model/") else n for n in values}


def test_regex_rename_with_backreferences(src, tmp_path):
    prefix, values = src
    step = Rename(((r"^model/(dense|embedding)(/|$)", r"net/\1_layer\2"),), regex=True)
    report = rewrite(prefix, tmp_path / "out" / "m", [step])
    got = read_all(report.dst)
    assert_same_value(got["net/dense_layer/kernel/Adam_1"], values["model/dense/kernel/Adam_1"])
    assert_same_value(got["net/embedding_layer"], values["model/embedding"])
    assert_same_value(got["net/embedding_layer/Adam"], values["model/embedding/Adam"])
    assert "model/half" in got and "global_step" in got
    assert dict(report.renamed)["model/dense/bias"] == "net/dense_layer/bias"


def test_map_file_and_exact_names(src, tmp_path):
    prefix, values = src
    path = tmp_path / "map.json"
    path.write_text(json.dumps({"model/dense/": "encoder/proj/", "global_step": "step", "counts": "stats/counts"}))
    report = rewrite(prefix, tmp_path / "out" / "m", [Rename(load_map_file(str(path)))])
    got = read_all(report.dst)
    assert_same_value(got["encoder/proj/kernel"], values["model/dense/kernel"])
    assert_same_value(got["step"], values["global_step"])
    assert_same_value(got["stats/counts"], values["counts"])
    assert "global_step" not in got and "model/dense/kernel" not in got
    assert_same_value(got["model/embedding"], values["model/embedding"])


def test_sliced_tensor_renamed_with_its_slice_keys(src, tmp_path):
    prefix, values = src
    out = tmp_path / "out" / "m"
    rewrite(prefix, out, [Rename((("model/", "renamed/scope/"),))])
    keys = raw_keys(out)
    assert keys[0] == b""  # the header first
    slice_names = [decode_slice_key(k)[0] for k in keys if k[:1] == b"\x00"]
    assert sorted(slice_names) == sorted([b"renamed/scope/embedding"] * 3 + [b"renamed/scope/embedding/Adam"] * 3)
    assert keys == sorted(keys)
    with ckptio.open(out) as c:
        assert c.entries()["renamed/scope/embedding"].slices == tuple(ROWS)
        for s in ROWS:  # each piece is stored under the new name's slice key
            assert slice_key("renamed/scope/embedding", s) in c._reader.slice_entries()
        assert verify(c).ok
    got = read_all(out)
    assert_same_value(got["renamed/scope/embedding"], values["model/embedding"])
    assert_same_value(got["renamed/scope/embedding/Adam"], values["model/embedding/Adam"])


def test_invalid_output_names_are_refused(src, tmp_path):
    prefix, _ = src
    for bad in ("\x00x", "_CHECKPOINTABLE_OBJECT_GRAPH"):
        with pytest.raises(PlanError, match="invalid output name"):
            rewrite(prefix, tmp_path / "out" / "m", [MapNames(lambda n, bad=bad: bad if n == "counts" else n)])
    assert not (tmp_path / "out").exists()


def test_select_then_strip_then_rename(src, tmp_path):
    prefix, values = src
    steps = [Select(("^model/",), ("half",)), StripOptimizer(), Rename((("model/", "net/"),))]
    report = rewrite(prefix, tmp_path / "out" / "m", steps)
    got = read_all(report.dst)
    assert set(got) == {
        "net/dense/kernel",
        "net/dense/bias",
        "net/dense/kernel/ExponentialMovingAverage",
        "net/embedding",
        "net/f64",
    }
    assert_same_value(got["net/embedding"], values["model/embedding"])


# -- dry run, library callables, progress ------------------------------------------------------------------


def test_dry_run_writes_nothing(src, tmp_path):
    prefix, values = src
    before = dir_hashes(os.path.dirname(prefix))
    report = rewrite(prefix, tmp_path / "out" / "m", [StripOptimizer(), Rename((("model/", "net/"),))], dry_run=True)
    assert report.dry_run and report.dst == str(tmp_path / "out" / "m")  # where it would write
    assert not (tmp_path / "out").exists()
    assert dir_hashes(os.path.dirname(prefix)) == before
    assert "beta1_power" in report.dropped
    assert ("model/dense/kernel", "net/dense/kernel") in report.renamed
    assert report.bytes_after < report.bytes_before
    real = rewrite(prefix, tmp_path / "out" / "m", [StripOptimizer(), Rename((("model/", "net/"),))])
    assert (real.kept, real.dropped, real.bytes_after) == (report.kept, report.dropped, report.bytes_after)
    # a dry run predicts what a real run would refuse
    with pytest.raises(OutputExistsError):
        rewrite(prefix, tmp_path / "out" / "m", [], dry_run=True)
    rewrite(prefix, tmp_path / "out" / "m", [], dry_run=True, force=True)


def test_map_names_callable_renames_and_drops(src, tmp_path):
    prefix, values = src

    def fn(name):
        if name.endswith(("/Adam", "/Adam_1")) or "power" in name:
            return None
        return name.replace("model/", "tower_0/")

    report = rewrite(prefix, tmp_path / "out" / "m", [MapNames(fn)])
    got = read_all(report.dst)
    expected = {fn(n): n for n in values if fn(n) is not None}
    assert set(got) == set(expected)
    for new, old in expected.items():
        assert_same_value(got[new], values[old], new)
    assert set(report.dropped) == {n for n in values if fn(n) is None}


def test_progress_counts_every_byte_written(src, tmp_path):
    prefix, _ = src
    seen = []
    report = rewrite(prefix, tmp_path / "out" / "m", [StripOptimizer()], num_shards=2, progress=seen.append)
    assert sum(seen) == report.bytes_after


def test_plan_is_built_without_reading_tensor_bytes(src):
    prefix, _ = src
    with ckptio.open(prefix) as c:
        before = c.bytes_read
        plan = make_plan(c, [StripOptimizer(), Rename((("model/", "net/"),)), Cast("bfloat16")])
        index_size = os.path.getsize(naming.index_path(prefix))
        assert c.bytes_read - before <= index_size  # the index only, never a data shard
        assert {p.name for p in plan.pieces} >= {"net/dense/kernel", "net/embedding"}


# -- other inputs -------------------------------------------------------------------------------------------


def write_big_endian(prefix, tensors: dict) -> None:
    """A V2 bundle as a big-endian machine writes it (header endianness BIG, data byte-swapped)."""
    from ckptio.sstable.coding import crc32c, mask

    data, entries = b"", {}
    for name, value in tensors.items():
        raw = value.astype(value.dtype.newbyteorder(">")).tobytes()
        entries[naming.encode_key(name)] = Entry(
            dtypes.from_numpy(value.dtype).enum, value.shape, 0, len(data), len(raw), mask(crc32c(raw))
        )
        data += raw
    with open(naming.data_path(prefix, 0, 1), "wb") as f:
        f.write(data)
    chunks = []
    builder = TableBuilder(chunks.append)
    builder.add(b"", Header(num_shards=1, big_endian=True).encode())
    for key in sorted(entries):
        builder.add(key, entries[key].encode())
    builder.finish()
    with open(naming.index_path(prefix), "wb") as f:
        f.write(b"".join(bytes(c) for c in chunks))


def test_big_endian_input_is_written_little_endian(tmp_path):
    tensors = {"w": np.arange(6, dtype=np.float32).reshape(2, 3) / 7, "n": np.array([1, -2, 2**40], np.int64)}
    prefix = str(tmp_path / "be")
    write_big_endian(prefix, tensors)
    with ckptio.open(prefix) as c:
        assert c.header.big_endian
    out = tmp_path / "out" / "m"
    rewrite(prefix, out, [])
    with ckptio.open(out) as c:
        assert not c.header.big_endian
        assert verify(c).ok
    got = read_all(out)
    for name, value in tensors.items():
        assert_same_value(got[name], value, name)


def _manifest_entry(manifest, short_name):
    return next(c for c in manifest["checkpoints"] if c["short_name"] == short_name)


def test_v1_input_becomes_v2(corpus, corpus_manifest, tmp_path):
    rec = _manifest_entry(corpus_manifest, "v1_savenet")
    assert rec["format"] == "v1"
    src = str(corpus / rec["prefix"])
    report = rewrite(src, tmp_path / "out" / "m", [Rename((("/", "renamed/"),))], num_shards=2)
    with ckptio.open(report.dst) as c:
        assert c.format == "v2" and c.num_shards == 2
        got = {name: hash_array(c[name].read()) for name in c}
    assert got == {"renamed/" + k: v["sha256"] for k, v in rec["tensors"].items()}


def test_object_based_input(corpus, corpus_manifest, tmp_path):
    """With ckptio.objgraph: a consistent output; without it: a clear PlanError and nothing written."""
    rec = _manifest_entry(corpus_manifest, "tf2_keras_weights_2shard")
    src = str(corpus / rec["prefix"])
    out = tmp_path / "out" / "m"
    if not HAS_OBJGRAPH:
        with pytest.raises(PlanError, match="object-based .*checkpoint.*object graph support"):
            rewrite(src, out, [StripOptimizer()])
        assert not (tmp_path / "out").exists()
    else:
        report = rewrite(src, out, [StripOptimizer()])
        with ckptio.open(out) as c:
            assert naming.OBJECT_GRAPH_KEY in c.entries()
            assert verify(c).ok, verify(c).problems  # includes objgraph's consistency check
            assert not [n for n in c if ".OPTIMIZER_SLOT" in n or n.startswith("optimizer/")]
            for s, d in report.kept:
                assert hash_array(c[d].read()) == rec["tensors"][s]["sha256"], d
    # a cast alone never needs the graph: it is carried over unchanged
    report = rewrite(src, tmp_path / "cast" / "m", [Cast("bfloat16")])
    with ckptio.open(src) as a, ckptio.open(report.dst) as b:
        assert a.object_graph_bytes == b.object_graph_bytes
        assert set(a) == set(b)
        assert all(b[n].dtype_name == "bfloat16" for n in report.cast) and report.cast


def test_object_based_input_without_objgraph_support_is_refused(corpus, corpus_manifest, tmp_path, monkeypatch):
    """The state of a build without ckptio.objgraph, simulated: a clear PlanError before any write."""
    monkeypatch.setitem(sys.modules, "ckptio.objgraph", None)  # makes the import fail
    rec = _manifest_entry(corpus_manifest, "tf2_eager_vae_adam")
    with pytest.raises(PlanError) as e:
        rewrite(str(corpus / rec["prefix"]), tmp_path / "out" / "m", [StripOptimizer()])
    assert str(e.value) == (
        "this is an object-based (TF2) checkpoint; rewriting its names needs the object "
        "graph support, which this build lacks"
    )
    assert not (tmp_path / "out").exists()
    # a cast does not touch names, so it needs no graph support
    report = rewrite(str(corpus / rec["prefix"]), tmp_path / "cast" / "m", [Cast("float16")])
    assert report.cast and not report.dropped
