"""Plans on object storage: inputs, staging, output and the plan file itself on s3://, no shared disk.

A local S3 server (moto) stands in for S3/GCS: its objects cannot be renamed, so a store "moves"
by copying on the server, and a file is visible only once its one PUT completes. Tasks run as
separate processes that share nothing but the bucket's URL and credentials in the environment.
The oracle for bytes is the single-process local command with the same options; TensorFlow
reads the committed output after it is downloaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from s3_support import need as _need  # the s3 fixture is in conftest.py
from support import ckptio_popen

from ckptio.bundle.writer import BundleWriter
from ckptio.cli.main import main


@pytest.fixture(scope="module")
def source(tmp_path_factory, s3):
    """A three-shard TF1-style Adam checkpoint, locally and uploaded to s3://bkt/src/."""
    prefix = str(tmp_path_factory.mktemp("src") / "model.ckpt")
    build(prefix, seed=0)
    for p in Path(prefix).parent.iterdir():
        s3.put(str(p), f"bkt/src/{p.name}")
    return prefix


def build(prefix: str, *, seed: int) -> None:
    rng = np.random.default_rng(seed)
    with BundleWriter(prefix, 3) as w:
        for i in range(6):
            kernel = rng.standard_normal((128, 64 + i), dtype=np.float32)
            w.add_array(f"layer_{i}/kernel", kernel, shard=i % 3)
            w.add_array(f"layer_{i}/kernel/Adam", kernel * 0.5, shard=(i + 1) % 3)
            w.add_array(f"layer_{i}/bias", rng.standard_normal(64 + i).astype(np.float32), shard=(i + 2) % 3)
        w.add_array("global_step", np.int64(7 + seed), shard=0)
        w.finish()


def cli(*argv) -> int:
    return main([str(a) for a in argv])


def objects(fs, prefix: str) -> dict[str, str]:
    """sha256 of every object under bkt/<prefix>/ (the state file: its lines without timestamps)."""
    out = {}
    for path in sorted(fs.find(f"bkt/{prefix}")):
        name = path.rpartition("/")[2]
        data = fs.cat_file(path)
        if name == "checkpoint":
            out[name] = [ln for ln in data.decode().splitlines() if "timestamp" not in ln]
        else:
            out[name] = hashlib.sha256(data).hexdigest()
    return out


def local_files(prefix: Path) -> dict[str, str]:
    out = {}
    for p in sorted(prefix.parent.iterdir()):
        if p.name == "checkpoint":
            out[p.name] = [ln for ln in p.read_text().splitlines() if "timestamp" not in ln]
        else:
            out[p.name] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def test_s3_plan_tasks_commit_match_one_local_process_and_load_in_tf(s3, source, tmp_path):
    one = tmp_path / "one" / "model.ckpt"
    assert cli("strip", source, one, "--shards", "4", "-q") == 0
    plan = "s3://bkt/plans/strip.json"  # the plan file too lives in the bucket: workers share nothing else
    assert cli("plan", "strip", "s3://bkt/src/model.ckpt", "s3://bkt/out/model.ckpt", "--shards", "4",
               "--out-plan", plan, "-q") == 0  # fmt: skip
    assert not s3.exists("bkt/out/model.ckpt.index")
    recorded = json.loads(s3.cat_file("bkt/plans/strip.json"))
    assert recorded["out"] == "s3://bkt/out/model.ckpt"
    assert recorded["inputs"][0]["prefix"] == "s3://bkt/src/model.ckpt"
    assert recorded["staging"] == "s3://bkt/out/.model.ckpt.ckptio-plan"

    tasks = [ckptio_popen("run-plan", plan, "--task", f"{i}/2", "-q") for i in range(2)]
    for t in tasks:
        _, err = t.communicate(timeout=300)
        assert t.returncode == 0, err
    assert not s3.exists("bkt/out/model.ckpt.index")  # nothing visible before commit
    c = ckptio_popen("commit", plan, "-q")
    _, err = c.communicate(timeout=300)
    assert c.returncode == 0, err

    assert objects(s3, "out") == local_files(one)  # byte-identical, the staging area gone
    got = tmp_path / "got"
    s3.get("bkt/out/", str(got), recursive=True)
    from tf_support import require_tf, tf_load

    require_tf()
    loaded = tf_load(str(got / "model.ckpt"))
    expected = tf_load(str(one))
    assert loaded.keys() == expected.keys() and "layer_0/kernel" in loaded
    for k in expected:
        assert np.array_equal(loaded[k], expected[k]), k


def test_s3_commit_before_tasks_and_changed_input_refuse(s3, source, tmp_path):
    s3.put(source + ".index", "bkt/src2/model.ckpt.index")
    for i in range(3):
        s3.put(f"{source}.data-{i:05d}-of-00003", f"bkt/src2/model.ckpt.data-{i:05d}-of-00003")
    plan = tmp_path / "plan.json"
    out = "s3://bkt/out2/model.ckpt"
    assert cli("plan", "rename", "s3://bkt/src2/model.ckpt", out, "--map", "/=x/", "--shards", "2",
               "--out-plan", plan, "-q") == 0  # fmt: skip
    assert cli("run-plan", plan, "--task", "0/2", "-q") == 0
    assert cli("commit", plan) == 2  # shard 1 not done: nothing at OUT
    assert not s3.exists("bkt/out2/model.ckpt.index")
    assert [p for p in s3.find("bkt/out2") if "/.model.ckpt.ckptio-plan/" not in p] == []
    data = "bkt/src2/model.ckpt.data-00001-of-00003"
    s3.pipe_file(data, s3.cat_file(data) + b"\0")  # the input grew after planning
    p = ckptio_popen("run-plan", plan, "--task", "1/2")
    _, err = p.communicate(timeout=300)
    assert p.returncode == 1
    assert "input changed since the plan was made" in err
    assert cli("commit", plan) != 0
    assert not s3.exists("bkt/out2/model.ckpt.index")


def test_s3_merge_plan_matches_local_merge(s3, source, tmp_path):
    other = tmp_path / "b" / "model.ckpt"
    build(str(other), seed=1)  # same names, shapes and dtypes; other values
    for p in other.parent.iterdir():
        s3.put(str(p), f"bkt/b/{p.name}")
    one = tmp_path / "one" / "model.ckpt"
    assert cli("merge", source, other, one, "-q") == 0
    plan = tmp_path / "merge.json"
    assert cli("plan", "merge", "s3://bkt/src/model.ckpt", "s3://bkt/b/model.ckpt", "s3://bkt/m/model.ckpt",
               "--out-plan", plan, "-q") == 0  # fmt: skip
    assert cli("run-plan", plan, "-q") == 0
    assert cli("commit", plan, "-q") == 0
    assert objects(s3, "m") == local_files(one)


def test_s3_strip_with_ray_engine_matches_one_local_process(s3, source, tmp_path):
    _need("ray")
    one = tmp_path / "one" / "model.ckpt"
    assert cli("strip", source, one, "--shards", "3", "-q") == 0
    # A fresh process starts its own local Ray instance; its workers reach the bucket by URL only.
    p = ckptio_popen(
        "strip", "s3://bkt/src/model.ckpt", "s3://bkt/ray/model.ckpt", "--shards", "3", "--engine", "ray", "-q"
    )
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err
    assert objects(s3, "ray") == local_files(one)


def test_s3_fit_plan_matches_local_fit(s3, source, tmp_path):
    template = tmp_path / "t" / "model.ckpt"
    build(str(template), seed=2)  # the new model: same names and shapes
    for p in template.parent.iterdir():
        s3.put(str(p), f"bkt/t/{p.name}")
    one = tmp_path / "one" / "model.ckpt"
    plan_local, plan = (
        tmp_path / "local.json",
        tmp_path / "fit.json",
    )  # a local plan gives fit's own bytes (test_plan_fit_merge.py)
    assert cli("plan", "fit", source, "--template", template, one, "--shards", "2", "--out-plan", plan_local) == 0
    assert cli("run-plan", plan_local, "-q") == 0 and cli("commit", plan_local, "-q") == 0
    assert cli("plan", "fit", "s3://bkt/src/model.ckpt", "--template", "s3://bkt/t/model.ckpt",
               "s3://bkt/fit/model.ckpt", "--shards", "2", "--out-plan", plan) == 0  # fmt: skip
    assert cli("run-plan", plan, "--task", "1/2", "-q") == 0 and cli("run-plan", plan, "--task", "0/2", "-q") == 0
    assert cli("commit", plan, "-q") == 0
    assert objects(s3, "fit") == local_files(one)
