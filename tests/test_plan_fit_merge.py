"""plan fit / plan merge: tasks + commit give the single-process fit's and merge's bytes, and TF loads them.

The fit pair exercises every kind of piece: copies from the source and from the template, a cast,
a vocabulary remap (a variable and its Adam slot), an overlapping corner (--on-mismatch slice), a
re-cut partitioned tensor, a string. The oracle is `ckptio fit` with the same --shards. Single-process
merge writes one shard, so a merge plan with --shards N is compared with `merge` then
`rewrite --shards N`, and with --shards 1 with `merge` itself.
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
from tf_support import require_tf, run_tf_json

import ckptio
from ckptio.bundle.dtypes import from_numpy
from ckptio.bundle.entry import Entry
from ckptio.bundle.slices import Slice, encode_key
from ckptio.bundle.writer import BundleWriter
from ckptio.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
OLD = [f"w{i}" for i in range(10)]
NEW = ["w3", "new_a", "w0", "w1", "w9", "new_b", "w2", "w4", "w5", "w6", "w7", "w8"]


def write(prefix, arrays: dict, sliced: dict | None = None, num_shards: int = 3) -> str:
    """A name-based checkpoint, tensors spread over the shards; sliced: name -> (value, [(start, length)])."""
    prefix = str(prefix)
    with BundleWriter(prefix, num_shards, force=True) as w:
        for i, (name, value) in enumerate(sorted(arrays.items())):
            w.add_array(name, value, shard=i % num_shards)
        for i, (name, (value, parts)) in enumerate(sorted((sliced or {}).items())):
            slices = tuple(Slice(((a, n),) + ((0, None),) * (value.ndim - 1)) for a, n in parts)
            for j, s in enumerate(slices):
                a, n = s.extents[0]
                w.add_array(encode_key(name, s), value[a : a + n], shard=(i + j) % num_shards)
            w.add_entry(name, Entry(from_numpy(value.dtype).enum, value.shape, slices=slices))
        w.finish()
    return prefix


def make_fit_pair(root: Path) -> dict:
    """A source and a template (3 shards each), the vocabulary files, and the source's values."""
    rng = np.random.default_rng(3)
    src = {
        "emb": rng.standard_normal((10, 16)).astype(np.float32),
        "emb/Adam": rng.standard_normal((10, 16)).astype(np.float32),
        "dense/kernel": rng.standard_normal((256, 128)).astype(np.float32),
        "dense/bias": rng.standard_normal(128).astype(np.float32),
        "head/kernel": rng.standard_normal((128, 5)).astype(np.float32),
        "global_step": np.int64(1234),
        "words": np.array([b"alpha", b"", b"gamma"], dtype=object),
        "unused": np.zeros(7, np.float32),
    }
    big = rng.standard_normal((2048, 64)).astype(np.float32)
    tpl = {
        "emb": np.full((12, 16), -1, np.float32),
        "emb/Adam": np.full((12, 16), -2, np.float32),
        "dense/kernel": np.zeros((256, 128), np.float16),  # cast float32 -> float16
        "dense/bias": np.zeros(128, np.float32),
        "head/kernel": np.full((128, 7), 5, np.float32),  # the source's corner over the template
        "global_step": np.int64(0),
        "words": np.array([b"x", b"y", b"z"], dtype=object),
        "new/kernel": np.full((64, 8), 0.5, np.float32),  # template only: kept
    }
    root.mkdir(parents=True, exist_ok=True)
    (root / "old.txt").write_text("\n".join(OLD) + "\n")
    (root / "new.txt").write_text("\n".join(NEW) + "\n")
    return {
        "src": write(root / "src" / "model.ckpt", src, {"big": (big, [(0, 1024), (1024, 1024)])}),
        "tpl": write(root / "tpl" / "model.ckpt", tpl, {"big": (np.zeros_like(big), [(0, 512), (512, 1536)])}),
        "vocab": f"emb={root / 'old.txt'}:{root / 'new.txt'}",
        "values": {**src, "big": big},
        "template": tpl,
    }


FIT_OPTIONS = ["--on-mismatch", "slice"]


def make_merge_inputs(root: Path, n: int = 3) -> list[str]:
    """n checkpoints of one run (2 shards each): weights, Adam slots, a partitioned table, a counter, a string."""
    out = []
    for i in range(n):
        rng = np.random.default_rng(10 + i)
        k = rng.standard_normal((300, 200)).astype(np.float32)
        arrays = {
            "dense/kernel": k,
            "dense/kernel/Adam": k * 0.1,
            "dense/bias": rng.standard_normal(200).astype(np.float32),
            "half": rng.standard_normal((64, 32)).astype(np.float16),
            "global_step": np.int64(100 * (i + 1)),
            "vocab": np.array([b"a%d" % i, b"b"], dtype=object),
        }
        table = rng.standard_normal((1000, 40)).astype(np.float32)
        out.append(write(root / f"run{i}" / "model.ckpt", arrays, {"table": (table, [(0, 400), (400, 600)])}, 2))
    return out


def files_of(prefix) -> dict:
    """sha256 of every file beside the output; the state file by what it lists (timestamps differ)."""
    d = Path(prefix).parent
    out = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir()) if p.name != "checkpoint"}
    state = d / "checkpoint"
    if state.exists():
        out["checkpoint"] = [ln for ln in state.read_text().splitlines() if "timestamp" not in ln]
    return out


def cli(*argv) -> int:
    return main([str(a) for a in argv])


def env():
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def run_tasks(plan, n: int) -> None:
    """n concurrent `run-plan --task i/n` processes, then commit."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "ckptio", "run-plan", str(plan), "--task", f"{i}/{n}", "-q"],
            env=env(),
            cwd=str(ROOT),
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(n)
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    assert cli("commit", plan, "-q") == 0


@pytest.fixture(scope="module")
def fit_pair(tmp_path_factory):
    return make_fit_pair(tmp_path_factory.mktemp("fitpair"))


@pytest.fixture(scope="module")
def merge_inputs(tmp_path_factory):
    return make_merge_inputs(tmp_path_factory.mktemp("mergein"))


# -- fit ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sharding", [["--shards", "3"], ["--max-shard-size", "150K"], ["--shards", "9"]])
def test_fit_plan_is_byte_identical_to_fit(fit_pair, tmp_path, sharding):
    one, split, plan = tmp_path / "one" / "model.ckpt", tmp_path / "split" / "model.ckpt", tmp_path / "p.json"
    args = [fit_pair["src"], "--template", fit_pair["tpl"], "--vocab", fit_pair["vocab"], *FIT_OPTIONS, *sharding]
    assert cli("fit", *args[:3], one, *args[3:]) == 0
    assert cli("plan", "fit", *args[:3], split, *args[3:], "--out-plan", plan, "-q") == 0
    assert not split.parent.exists()  # nothing written to OUT by planning
    body = json.loads(plan.read_text())
    ops = {(s["op"], s.get("kind")) for sh in body["shards"] for s in sh["pieces"]}
    assert ops == {("copy", None), ("cast", None), ("build", "vocab"), ("build", "slice"), ("build", "layout")}
    assert {s["input"] for sh in body["shards"] for s in sh["pieces"] if s["op"] == "copy"} == {0, 1}
    assert body["fit"]["vocab"] == {"emb": [OLD, NEW]}  # once, though emb/Adam moves with it
    assert [len(i["data"]) for i in body["inputs"]] == [3, 3]  # source and template, each fingerprinted
    run_tasks(plan, 2)
    assert files_of(split) == files_of(one)
    assert not any(p.name.startswith(".") for p in split.parent.iterdir())


def test_fit_plan_refuses_a_changed_template(fit_pair, tmp_path):
    root = tmp_path / "copy"
    pair = make_fit_pair(root)  # inputs of our own to change
    plan, out = tmp_path / "p.json", tmp_path / "out" / "model.ckpt"
    assert cli("plan", "fit", pair["src"], "--template", pair["tpl"], out, *FIT_OPTIONS, "--out-plan", plan) == 0
    with open(pair["tpl"] + ".data-00002-of-00003", "ab") as f:
        f.write(b"\0")
    p = subprocess.run(
        [sys.executable, "-m", "ckptio", "run-plan", str(plan)], env=env(), capture_output=True, text=True, timeout=300
    )
    assert p.returncode == 1 and "input changed since the plan was made (data files differs)" in p.stderr
    assert pair["tpl"] in p.stderr
    assert not out.parent.exists() or not Path(str(out) + ".index").exists()


def test_fit_plan_output_loads_in_tf_with_the_expected_values(fit_pair, tmp_path):
    require_tf()
    out, plan = tmp_path / "out" / "model.ckpt", tmp_path / "p.json"
    args = [fit_pair["src"], "--template", fit_pair["tpl"], out, "--vocab", fit_pair["vocab"], *FIT_OPTIONS]
    assert cli("plan", "fit", *args, "--shards", "4", "--out-plan", plan, "-q") == 0
    run_tasks(plan, 3)
    got = run_tf_json(
        "import json, hashlib, numpy as np, tensorflow as tf\n"
        f"r = tf.train.load_checkpoint({str(out)!r})\n"
        "out = {}\n"
        "for k in sorted(r.get_variable_to_shape_map()):\n"
        "    v = r.get_tensor(k)\n"
        "    out[k] = [str(v.dtype), v.tolist() if v.dtype == object else v.astype(np.float64).tolist()]\n"
        "print(json.dumps(out, default=lambda b: b.decode()))\n"
    )
    s, t = fit_pair["values"], fit_pair["template"]
    emb = np.full((12, 16), -1.0)
    slot = np.full((12, 16), -2.0)
    for j, tok in enumerate(NEW):
        if tok in OLD:
            emb[j], slot[j] = s["emb"][OLD.index(tok)], s["emb/Adam"][OLD.index(tok)]
    head = np.full((128, 7), 5.0)
    head[:, :5] = s["head/kernel"]
    want = {
        "emb": emb,
        "emb/Adam": slot,
        "dense/kernel": s["dense/kernel"].astype(np.float16),
        "dense/bias": s["dense/bias"],
        "head/kernel": head,
        "big": s["big"],
        "global_step": np.float64(1234),
        "new/kernel": t["new/kernel"],
    }
    assert sorted(got) == sorted([*want, "words"])
    assert got["dense/kernel"][0] == "float16"
    assert got["words"] == ["object", ["alpha", "", "gamma"]]
    for name, value in want.items():
        np.testing.assert_array_equal(np.array(got[name][1]), np.asarray(value, dtype=np.float64), err_msg=name)


def test_fit_plan_refusals_are_one_line(fit_pair, tmp_path, capsys):
    plan = tmp_path / "p.json"
    base = ["plan", "fit", fit_pair["src"], "--template", fit_pair["tpl"], tmp_path / "o" / "m"]
    assert cli(*base, "--out-plan", plan) == 1  # a mismatch under --on-mismatch error: nothing planned
    assert "nothing written" in capsys.readouterr().err and not plan.exists()
    assert cli(*base, *FIT_OPTIONS, "--dry-run", "--out-plan", plan) == 2
    assert "--dry-run cannot be planned" in capsys.readouterr().err
    assert cli(*base[:-1], tmp_path / "o" / "m.weights.h5", "--out-plan", plan) != 0
    assert not plan.exists()


# -- merge -------------------------------------------------------------------------------------------

METHODS = [
    ["--method", "mean"],
    ["--method", "weighted", "--weights", "1,2,5"],
    ["--method", "ema", "--decay", "0.7"],
    ["--method", "task-arithmetic", "--base", "BASE", "--weights", "0.5,0.25"],
    ["--method", "slerp", "--weights", "0.3"],
]


def _merge_args(merge_inputs, method):
    if "task-arithmetic" in method:
        return merge_inputs[1:], [merge_inputs[0] if a == "BASE" else a for a in method]
    if "slerp" in method:
        return merge_inputs[:2], method
    return merge_inputs, method


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m[1])
def test_merge_plan_is_byte_identical_to_merge_then_reshard(merge_inputs, tmp_path, method):
    inputs, options = _merge_args(merge_inputs, method)
    one, resharded = tmp_path / "one" / "model.ckpt", tmp_path / "resharded" / "model.ckpt"
    split, plan = tmp_path / "split" / "model.ckpt", tmp_path / "p.json"
    assert cli("merge", *inputs, one, *options, "-q") == 0
    assert cli("rewrite", one, resharded, "--shards", "3", "-q") == 0
    assert cli("plan", "merge", *inputs, split, *options, "--shards", "3", "--out-plan", plan, "-q") == 0
    assert not split.parent.exists()
    body = json.loads(plan.read_text())
    assert len(body["inputs"]) == (2 if "slerp" in method else 3) and body["num_shards"] == 3
    combine = [s for sh in body["shards"] for s in sh["pieces"] if s["op"] == "combine"]
    assert {s["name"] for s in combine} == {"dense/kernel", "dense/bias", "half", "table"}
    assert all(len(s["sources"]) == len(body["inputs"]) for s in combine)  # every operand's same range
    run_tasks(plan, 2)
    assert files_of(split) == files_of(resharded)


def test_merge_plan_with_one_shard_is_byte_identical_to_merge(merge_inputs, tmp_path):
    one, split, plan = tmp_path / "one" / "model.ckpt", tmp_path / "split" / "model.ckpt", tmp_path / "p.json"
    assert cli("merge", *merge_inputs, one, "-q") == 0
    assert cli("plan", "merge", *merge_inputs, split, "--out-plan", plan, "-q") == 0
    run_tasks(plan, 1)
    assert files_of(split) == files_of(one)


def test_merge_plan_refuses_any_changed_input(tmp_path):
    inputs = make_merge_inputs(tmp_path / "in")
    plan, out = tmp_path / "p.json", tmp_path / "out" / "model.ckpt"
    assert cli("plan", "merge", *inputs, out, "--shards", "2", "--out-plan", plan, "-q") == 0
    assert cli("run-plan", plan, "--task", "0/2", "-q") == 0
    index = Path(inputs[2] + ".index")
    index.write_bytes(index.read_bytes())  # same bytes: still accepted
    assert cli("run-plan", plan, "--task", "0/2", "-q") == 0
    write(inputs[2], {"dense/bias": np.zeros(200, np.float32)}, num_shards=2)  # the last input replaced
    p = subprocess.run(
        [sys.executable, "-m", "ckptio", "run-plan", str(plan), "--task", "1/2"],
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 1 and "input changed since the plan was made (index checksum differs)" in p.stderr
    assert inputs[2] in p.stderr
    assert cli("commit", plan) != 0
    assert not Path(str(out) + ".index").exists()


def test_merge_plan_output_loads_in_tf_with_the_merged_values(merge_inputs, tmp_path):
    require_tf()
    one, split, plan = tmp_path / "one" / "model.ckpt", tmp_path / "split" / "model.ckpt", tmp_path / "p.json"
    assert cli("merge", *merge_inputs, one, "-q") == 0
    assert cli("plan", "merge", *merge_inputs, split, "--shards", "3", "--out-plan", plan, "-q") == 0
    run_tasks(plan, 3)
    got = run_tf_json(
        "import json, numpy as np, tensorflow as tf\n"
        f"r = tf.train.load_checkpoint({str(split)!r})\n"
        "out = {k: (r.get_tensor(k).tolist() if r.get_tensor(k).dtype == object else\n"
        "           r.get_tensor(k).astype(np.float64).tolist()) for k in r.get_variable_to_shape_map()}\n"
        "print(json.dumps(out, default=lambda b: b.decode()))\n"
    )
    assert sorted(got) == ["dense/bias", "dense/kernel", "global_step", "half", "table", "vocab"]  # Adam dropped
    with ckptio.open(one) as ref:
        for name in ("dense/bias", "dense/kernel", "half", "table"):  # the single-process merge's values
            np.testing.assert_array_equal(np.array(got[name]), ref[name].read().astype(np.float64), err_msg=name)
    values = [ckptio.open(p) for p in merge_inputs]
    try:
        mean = np.mean([v["table"].read().astype(np.float64) for v in values], axis=0)
    finally:
        for v in values:
            v.close()
    np.testing.assert_allclose(np.array(got["table"]), mean, rtol=1e-6)
    assert got["global_step"] == 300 and got["vocab"] == ["a2", "b"]  # copied from the last input


def test_merge_shards_need_an_engine_or_a_plan(merge_inputs, tmp_path, capsys):
    assert cli("merge", *merge_inputs, tmp_path / "o" / "m", "--shards", "2") == 2
    assert "--shards and --max-shard-size are for --engine ray and plans" in capsys.readouterr().err
    assert cli("plan", "merge", *merge_inputs, tmp_path / "o" / "m", "--dry-run", "--out-plan", tmp_path / "p") == 2


def test_a_merge_task_killed_midway_is_finished_by_running_it_again(merge_inputs, tmp_path):
    one, resharded = tmp_path / "one" / "model.ckpt", tmp_path / "resharded" / "model.ckpt"
    split, plan = tmp_path / "split" / "model.ckpt", tmp_path / "p.json"
    assert cli("merge", *merge_inputs, one, "-q") == 0
    assert cli("rewrite", one, resharded, "--shards", "3", "-q") == 0
    assert cli("plan", "merge", *merge_inputs, split, "--shards", "3", "--out-plan", plan, "-q") == 0
    killer = f"""
import os, signal, sys
from ckptio.cli.main import main
from ckptio.merge import Job
real, calls = Job.write_pieces, [0]
def write_then_die(self, writer, pieces, shard, chunks, progress=None):
    calls[0] += 1
    if calls[0] == 2:  # the second shard: its first piece, then SIGKILL
        real(self, writer, pieces[:1], shard, chunks, progress)
        os.kill(os.getpid(), signal.SIGKILL)
    real(self, writer, pieces, shard, chunks, progress)
Job.write_pieces = write_then_die
sys.exit(main(["run-plan", {str(plan)!r}, "-q"]))
"""
    p = subprocess.run([sys.executable, "-c", killer], env=env(), cwd=str(ROOT), capture_output=True, timeout=300)
    assert p.returncode == -9, p.stderr
    assert cli("commit", plan) == 2  # not every shard is done
    again = subprocess.run(
        [sys.executable, "-m", "ckptio", "run-plan", str(plan)], env=env(), capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0 and "wrote 2 shards, 1 already done" in again.stderr, again.stderr
    assert cli("commit", plan, "-q") == 0
    assert files_of(split) == files_of(resharded)
