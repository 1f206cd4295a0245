"""The TF-written fixtures exist, are complete, and are what they claim to be.

TF runs only in subprocesses (tests/tf_support.py); these tests read truth.json and raw bytes.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import struct

import numpy as np
import pytest

try:
    from tf_support import (
        FIXTURE_NAMES,
        fixture_prefix,
        generate_fixtures,
        hash_array,
        run_tf,
        session_fixtures,
        tf_load,
    )
except ImportError:  # tests/ imported as a package
    from .tf_support import (
        FIXTURE_NAMES,
        fixture_prefix,
        generate_fixtures,
        hash_array,
        run_tf,
        session_fixtures,
        tf_load,
    )


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    return session_fixtures(tmp_path_factory)  # calls require_tf()


# --------------------------------------------------------------------------- no TF needed


def test_hash_array_rule():
    a = np.arange(6, dtype=np.int32).reshape(2, 3)
    assert hash_array(a) == hashlib.sha256(a.tobytes()).hexdigest()
    assert hash_array(a.T) == hashlib.sha256(np.ascontiguousarray(a.T).tobytes()).hexdigest()
    want = hashlib.sha256(struct.pack("<Q", 0) + struct.pack("<Q", 3) + b"a\x00b").hexdigest()
    assert hash_array(np.array([b"", b"a\x00b"], dtype=object)) == want
    assert hash_array([b"", b"a\x00b"]) == want
    assert hash_array(b"xy") == hashlib.sha256(struct.pack("<Q", 2) + b"xy").hexdigest()
    with pytest.raises(TypeError):
        hash_array(np.array([b"a\x00"]))  # 'S' dtype would drop the trailing NUL


def test_run_tf_reports_returncode():
    rc, out, err = run_tf("import sys; print('hi'); sys.exit(3)")
    assert (rc, out.strip()) == (3, "hi")


# --------------------------------------------------------------------------- fixtures


def _prefix_files(outdir, rec):
    prefix = os.path.join(outdir, rec["prefix"])
    if rec["format"] == "v2":
        return [prefix + ".index"] + sorted(glob.glob(glob.escape(prefix) + ".data-*-of-*"))
    return sorted(glob.glob(prefix))  # V1: a file, or a -?????-of-N pattern


def test_truth_covers_every_fixture(fx):
    outdir, truth = fx
    assert sorted(truth["fixtures"]) == sorted(FIXTURE_NAMES)
    for name, rec in truth["fixtures"].items():
        assert rec["format"] in ("v1", "v2"), name
        assert rec["kind"], name
        assert rec["tensors"], name
        files = _prefix_files(outdir, rec)
        assert files and all(os.path.isfile(f) for f in files), (name, files)
        for key, t in rec["tensors"].items():
            assert isinstance(t["dtype"], str) and t["dtype"], (name, key)
            assert all(isinstance(d, int) and d >= 0 for d in t["shape"]), (name, key)
            assert re.fullmatch(r"[0-9a-f]{64}", t["sha256"]), (name, key)
            assert t["num_elements"] == int(np.prod(t["shape"], dtype=np.int64)), (name, key)


def _index_entries(index_path, n):
    """The first n (key, value) pairs of the first data block (restart at offset 0)."""
    data = open(index_path, "rb").read()

    def varint(pos):
        result = shift = 0
        while True:
            b = data[pos]
            pos += 1
            result |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return result, pos

    out, pos, prev = [], 0, b""
    for _ in range(n):
        shared, pos = varint(pos)
        non_shared, pos = varint(pos)
        vlen, pos = varint(pos)
        key = prev[:shared] + data[pos : pos + non_shared]
        pos += non_shared
        out.append((key, data[pos : pos + vlen]))
        pos += vlen
        prev = key
    return out


def test_partitioned_v2_has_slice_entries(fx):
    outdir, truth = fx
    rec = truth["fixtures"]["tf1_partitioned_v2"]
    (k0, header), (k1, _) = _index_entries(os.path.join(outdir, rec["prefix"] + ".index"), 2)
    assert k0 == b"" and header.startswith(b"\x08\x01")  # num_shards = 1
    # EncodeTensorNameSlice("model/embedding", [(0,2),(0,4)]), FORMAT.md §3.4
    assert k1 == b"\x00model/embedding\x00\x01" + b"\x01\x02" + b"\x80\x82\x80\x84"
    # TF lists the assembled tensor under its full name, never the slice keys
    assert rec["tensors"]["model/embedding"]["shape"] == [6, 4]
    assert rec["tensors"]["model/embedding/Adam_1"]["shape"] == [6, 4]
    assert not any(k.startswith("\x00") or "part_" in k for k in rec["tensors"])


def test_partitioned_v1_read_via_restore(fx):
    _, truth = fx
    v1 = truth["fixtures"]["tf1_partitioned_v1"]["tensors"]
    v2 = truth["fixtures"]["tf1_partitioned_v2"]["tensors"]
    assert v1["model/embedding"]["via"] == "RestoreV2"  # load_checkpoint: sliced V1 unsupported
    assert "via" not in v1["model/dense/kernel"]
    assert v1 == {
        k: dict(v2[k], **{x: v1[k][x] for x in ("via", "get_tensor_error") if x in v1[k]}) for k in v2
    }  # same graph and seed: same values in V1 and V2


def test_sharded_fixtures(fx):
    outdir, truth = fx
    f = truth["fixtures"]
    assert len(_prefix_files(outdir, f["tf1_sharded_v2"])) >= 3  # index + 2 data shards
    v1_files = _prefix_files(outdir, f["tf1_v1_sharded"])
    assert len(v1_files) >= 2 and all(re.search(r"-\d{5}-of-\d{5}$", p) for p in v1_files)
    assert f["tf1_v1_sharded"]["format"] == "v1"
    rec = f["tf2_max_shard"]
    assert len(_prefix_files(outdir, rec)) >= 3
    _, (k1, _) = _index_entries(os.path.join(outdir, rec["prefix"] + ".index"), 2)
    assert k1.startswith(b"\x00big/.ATTRIBUTES/VARIABLE_VALUE\x00\x01\x01\x02")


def test_object_graph_fixtures(fx):
    _, truth = fx
    f = truth["fixtures"]
    for name in (
        "tf2_keras3_adam",
        "tf2_legacy_adam",
        "tf2_tfkeras_adam",
        "tf2_module_tree",
        "tf2_max_shard",
        "tf2_misc_state",
        "savedmodel",
    ):
        assert f[name]["tensors"]["_CHECKPOINTABLE_OBJECT_GRAPH"]["dtype"] == "object", name
    assert any(".OPTIMIZER_SLOT/optimizer/m/" in k for k in f["tf2_legacy_adam"]["tensors"])
    assert "encoder/layers/0/w/.ATTRIBUTES/VARIABLE_VALUE" in f["tf2_module_tree"]["tensors"]
    assert f["savedmodel"]["prefix"] == f["savedmodel"]["savedmodel_dir"] + "/variables/variables"


def test_all_dtypes_covered(fx):
    _, truth = fx
    t = truth["fixtures"]["tf2_all_dtypes"]["tensors"]
    want = {
        "float16",
        "float32",
        "float64",
        "bfloat16",
        "float8_e5m2",
        "float8_e4m3fn",
        "int4",
        "uint4",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "bool",
        "complex64",
        "complex128",
        "object",
    }
    assert want <= {r["dtype"] for r in t.values()}
    assert want <= {r["dtype"] for k, r in t.items() if k.startswith("scalar/") and r["shape"] == []}
    assert t["empty/float32_0"]["shape"] == [0] and t["empty/float32_3x0"]["shape"] == [3, 0]
    assert t["string_2x3"] == dict(t["string_2x3"], dtype="object", shape=[2, 3])


def test_tf_load_agrees_with_truth(fx):
    outdir, truth = fx
    name = "tf1_partitioned_v1"  # exercises the RestoreV2 fallback too
    assert tf_load(fixture_prefix(outdir, truth, name)) == truth["fixtures"][name]["tensors"]


def test_generate_fixtures_uses_cache(fx):
    outdir, truth = fx
    before = os.stat(outdir / "truth.json").st_mtime_ns
    assert generate_fixtures(outdir) == truth
    assert os.stat(outdir / "truth.json").st_mtime_ns == before
