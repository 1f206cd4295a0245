"""--engine ray: a TF-written multi-shard checkpoint rewritten three ways (one process; plan + four
run-plan processes + commit; Ray tasks) gives byte-identical outputs that TF loads and restores;
batch mode over 50 checkpoints on Ray matches batch mode without it.

Ray starts a small local instance from ckptio itself (no ADDRESS: num_cpus = the machine's 2,
no dashboard, 100 MiB object store). With CI set a missing Ray fails these tests instead of
skipping them.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from support import ROOT, child_env
from tf_support import require_tf, run_tf_json

from ckptio.bundle.writer import BundleWriter
from ckptio.cli.main import main

if importlib.util.find_spec("ray") is None:  # probed only: ckptio imports it in its own processes
    if os.environ.get("CI"):
        pytest.fail(
            "ray is required for tests/test_ray_engine.py (CI is set: pip install 'ckptio[ray]')", pytrace=False
        )
    pytest.skip("ray is not installed (pip install 'ckptio[ray]')", allow_module_level=True)

WRITE = r"""
import json, sys
import numpy as np
import tensorflow as tf
import tf_keras
out = sys.argv[1] if len(sys.argv) > 1 else OUT
tf.random.set_seed(0)
model = tf_keras.Sequential([tf_keras.layers.Dense(48, input_shape=(40,), name="d1"),
                             tf_keras.layers.Dense(8, name="d2")])
opt = tf_keras.optimizers.Adam(0.01)
x = tf.random.normal((4, 40))
with tf.GradientTape() as tape:
    loss = tf.reduce_sum(model(x) ** 2)
opt.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
ckpt = tf.train.Checkpoint(model=model, optimizer=opt)
# Several data shards, with the big kernels split into slice entries (FORMAT-models.md).
policy = tf.train.experimental.MaxShardSizePolicy(max_shard_size=4000)
prefix = ckpt.save(out + "/ckpt", options=tf.train.CheckpointOptions(experimental_sharding_callback=policy))
print(json.dumps({"prefix": prefix, "shards": tf.train.load_checkpoint(prefix) is not None}))
"""

CHECK = r"""
import json
import numpy as np
import tensorflow as tf
import tf_keras

def fresh():
    m = tf_keras.Sequential([tf_keras.layers.Dense(48, input_shape=(40,), name="d1"),
                             tf_keras.layers.Dense(8, name="d2")])
    return m

src = tf.train.load_checkpoint(SRC)
result = {}
for p in OUTS:
    r = tf.train.load_checkpoint(p)
    keys = sorted(r.get_variable_to_shape_map())
    equal = all(np.array_equal(r.get_tensor(k), src.get_tensor(k)) for k in keys
                if k != "_CHECKPOINTABLE_OBJECT_GRAPH")  # the graph loses the optimizer
    model, want = fresh(), fresh()
    tf.train.Checkpoint(model=model).read(p).assert_existing_objects_matched()
    tf.train.Checkpoint(model=want).read(SRC).expect_partial()
    restored = all(np.array_equal(a.numpy(), b.numpy()) for a, b in zip(model.variables, want.variables))
    result[p] = {"keys": keys, "values_equal": equal, "restored_equal": restored,
                 "n_restored": len(model.variables)}
result["src_keys"] = sorted(src.get_variable_to_shape_map())
print(json.dumps(result))
"""


def ckptio(*argv, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ckptio", *map(str, argv)],
        env=child_env(),
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def files_of(directory: Path) -> dict:
    """sha256 of every file; a state file by what it lists (its timestamps are the time of writing)."""
    return {
        str(p.relative_to(directory)): [ln for ln in p.read_text().splitlines() if "timestamp" not in ln]
        if p.name == "checkpoint"
        else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def tf_source(tmp_path_factory):
    require_tf()
    d = tmp_path_factory.mktemp("tfsrc")
    return run_tf_json(f"OUT = {str(d)!r}\n" + WRITE)["prefix"]


def test_three_ways_byte_identical_and_restored_by_tf(tf_source, tmp_path):
    data_files = [n for n in os.listdir(os.path.dirname(tf_source)) if ".data-" in n]
    assert len(data_files) > 1  # a multi-shard source
    one, split, on_ray = (tmp_path / w / "model.ckpt" for w in ("one", "split", "ray"))
    plan = tmp_path / "plan.json"

    assert main(["strip", tf_source, str(one), "--shards", "4", "-q"]) == 0
    assert main(["plan", "strip", tf_source, str(split), "--shards", "4", "--out-plan", str(plan), "-q"]) == 0
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "ckptio", "run-plan", str(plan), "--task", f"{i}/4", "-q"],
            env=child_env(),
            cwd=str(ROOT),
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    assert main(["commit", str(plan), "-q"]) == 0
    p = ckptio("strip", tf_source, on_ray, "--shards", "4", "--engine", "ray", "-q")
    assert p.returncode == 0, p.stderr

    expected = files_of(one.parent)
    assert len([n for n in expected if ".data-" in n]) == 4
    assert files_of(split.parent) == expected
    assert files_of(on_ray.parent) == expected
    assert not any(n.startswith(".") for n in os.listdir(on_ray.parent))  # staging removed

    outs = [str(one), str(split), str(on_ray)]
    got = run_tf_json(f"SRC = {tf_source!r}\nOUTS = {outs!r}\n" + CHECK)
    kept = [k for k in got["src_keys"] if not k.startswith("optimizer/") and ".OPTIMIZER_SLOT/" not in k]
    assert len(kept) == 6  # 4 weights, save_counter, the object graph
    for p in outs:
        assert got[p]["keys"] == kept  # optimizer state gone, everything else kept
        assert got[p]["values_equal"] and got[p]["restored_equal"] and got[p]["n_restored"] == 4


@pytest.fixture(scope="module")
def fifty(tmp_path_factory):
    """50 small two-shard checkpoints with Adam slots, each in its own directory."""
    root = tmp_path_factory.mktemp("fifty")
    rng = np.random.default_rng(1)
    for i in range(50):
        with BundleWriter(str(root / f"run{i:02d}" / "model.ckpt"), 2) as w:
            for j in range(3):
                a = rng.standard_normal((16 + i, 8)).astype(np.float32)
                w.add_array(f"dense_{j}/kernel", a, shard=j % 2)
                w.add_array(f"dense_{j}/kernel/Adam", a * 0, shard=(j + 1) % 2)
            w.add_array("global_step", np.int64(i))
            w.finish()
    return root


def test_batch_of_fifty_on_ray_matches_batch_without_it(fifty, tmp_path):
    inputs = sorted(str(p)[: -len(".index")] for p in fifty.glob("run*/model.ckpt.index"))
    assert len(inputs) == 50
    plain, on_ray = tmp_path / "plain", tmp_path / "ray"
    assert main(["strip", *inputs, "--out-dir", str(plain), "-q", "--shards", "2"]) == 0
    p = ckptio("strip", *inputs, "--out-dir", on_ray, "-q", "--shards", "2", "--engine", "ray")
    assert p.returncode == 0, p.stderr
    # The shared state file lists the outputs in input order, on Ray as without it.
    expected = files_of(plain)
    assert len(expected) == 50 * 3 + 1
    assert files_of(on_ray) == expected
    assert expected["checkpoint"][0] == 'model_checkpoint_path: "run49_model.ckpt"'
    assert expected["checkpoint"][1:] == [f'all_model_checkpoint_paths: "run{i:02d}_model.ckpt"' for i in range(50)]


def test_engine_errors_are_one_line(tmp_path, fifty):
    src = str(fifty / "run00" / "model.ckpt")
    p = ckptio("strip", src, tmp_path / "o" / "m.ckpt", "--engine", "spark")
    assert p.returncode == 2
    assert p.stderr == "ckptio: error: --engine spark: the only engine is ray (ray or ray=ADDRESS)\n"
    no_ray = (
        "import sys; sys.modules['ray'] = None\nfrom ckptio.cli.main import main\n"
        f"sys.exit(main(['strip', {src!r}, {str(tmp_path / 'o' / 'm.ckpt')!r}, '--engine', 'ray']))"
    )
    p = subprocess.run(
        [sys.executable, "-c", no_ray], env=child_env(), cwd=str(ROOT), capture_output=True, text=True, timeout=120
    )
    assert p.returncode == 1
    assert p.stderr == "ckptio: --engine ray needs Ray: pip install 'ckptio[ray]'\n"
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_fit_and_merge_on_ray_match_one_process(tmp_path):
    """fit --engine ray is byte-identical to fit with the same --shards; merge --engine ray --shards 3 to
    merge then rewrite --shards 3 (single-process merge writes one shard)."""
    from test_plan_fit_merge import FIT_OPTIONS, make_fit_pair, make_merge_inputs
    from test_plan_fit_merge import files_of as files_beside

    pair = make_fit_pair(tmp_path / "fitin")
    args = [pair["src"], "--template", pair["tpl"], "--vocab", pair["vocab"], *FIT_OPTIONS, "--shards", "3"]
    one, on_ray = tmp_path / "fit1" / "model.ckpt", tmp_path / "fitray" / "model.ckpt"
    assert main([*map(str, ["fit", *args[:3], one, *args[3:]])]) == 0
    p = ckptio("fit", *args[:3], on_ray, *args[3:], "--engine", "ray")
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[-1].startswith(f"wrote {on_ray}: 7 from source")
    assert files_beside(on_ray) == files_beside(one)
    assert not any(n.startswith(".") for n in os.listdir(on_ray.parent))

    inputs = make_merge_inputs(tmp_path / "mergein")
    one, resharded, on_ray = (tmp_path / d / "model.ckpt" for d in ("m1", "m1r", "mray"))
    assert main(["merge", *inputs, str(one), "-q"]) == 0
    assert main(["rewrite", str(one), str(resharded), "--shards", "3", "-q"]) == 0
    p = ckptio("merge", *inputs, on_ray, "--shards", "3", "--engine", "ray", "-q")
    assert p.returncode == 0, p.stderr
    assert files_beside(on_ray) == files_beside(resharded)
