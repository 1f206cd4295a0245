"""plan / run-plan / commit: a rewrite split into shard tasks gives the single-process rewrite's bytes.

Sources here are written by ckptio's BundleWriter (several shards, Adam slots, a string tensor);
TF loading the outputs, a TF-written sliced source and the Ray engine are in test_ray_engine.py.
The oracle for bytes is the single-process `ckptio strip/rewrite` with the same --shards.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from support import ROOT, child_env, ckptio_popen

from ckptio.bundle.writer import BundleWriter
from ckptio.cli.main import main


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A three-shard TF1-style Adam checkpoint (~3 MiB kept after a strip)."""
    prefix = str(tmp_path_factory.mktemp("src") / "model.ckpt")
    rng = np.random.default_rng(0)
    with BundleWriter(prefix, 3) as w:
        for i in range(8):
            kernel = rng.standard_normal((256, 96 + i), dtype=np.float32)
            w.add_array(f"layer_{i}/kernel", kernel, shard=i % 3)
            w.add_array(f"layer_{i}/kernel/Adam", kernel * 0.5, shard=(i + 1) % 3)
            w.add_array(f"layer_{i}/bias", rng.standard_normal(96 + i).astype(np.float64), shard=(i + 2) % 3)
        w.add_array("global_step", np.int64(42), shard=0)
        w.add_array("vocab", np.array([b"a", b"bc", b""], dtype=object), shard=2)
        w.finish()
    return prefix


def files_of(prefix: str) -> dict[str, str]:
    """sha256 of every file in the output's directory; the state file by what it lists (its timestamps
    are the time of writing, which two runs cannot share)."""
    d = Path(prefix).parent
    out = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir()) if p.name != "checkpoint"}
    state = d / "checkpoint"
    if state.exists():
        out["checkpoint"] = [ln for ln in state.read_text().splitlines() if "timestamp" not in ln]
    return out


def cli(*argv) -> int:
    return main([str(a) for a in argv])


@pytest.mark.parametrize(
    "args",
    [
        ["strip", "--shards", "4"],
        ["rewrite", "--strip-optimizer", "--map", "layer_0/=first/", "--cast", "bfloat16", "--shards", "3"],
        ["rename", "--map", "/=scope/", "--max-shard-size", "300K"],
        ["strip", "--shards", "7"],  # more shards than big tensors: empty shards too
    ],
)
def test_plan_tasks_commit_is_byte_identical_to_one_process(source, tmp_path, args):
    command, options = args[0], args[1:]
    one, split = tmp_path / "one" / "model.ckpt", tmp_path / "split" / "model.ckpt"
    plan = tmp_path / "plan.json"
    assert cli(command, source, one, "-q", *options) == 0
    assert cli("plan", command, source, split, *options, "--out-plan", plan, "-q") == 0
    assert not split.parent.exists() or not any(split.parent.iterdir())  # nothing written to OUT yet
    procs = [ckptio_popen("run-plan", plan, "--task", f"{i}/4", "-q") for i in range(4)]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    assert cli("commit", plan, "-q") == 0
    assert files_of(str(split)) == files_of(str(one))
    assert [p.name for p in split.parent.iterdir() if p.name.startswith(".")] == []  # staging removed


def test_plan_is_deterministic_and_describes_every_shard(source, tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    for p in (a, b):
        assert (
            cli("plan", "strip", source, tmp_path / "out" / "model.ckpt", "--shards", "3", "--out-plan", p, "-q") == 0
        )
    assert a.read_bytes() == b.read_bytes()
    plan = json.loads(a.read_text())
    assert [s["file"] for s in plan["shards"]] == [f"model.ckpt.data-{i:05d}-of-00003" for i in range(3)]
    src = plan["inputs"][0]
    assert src["index_sha256"] == hashlib.sha256(Path(source + ".index").read_bytes()).hexdigest()
    assert [d["size"] for d in src["data"]] == [os.path.getsize(f"{source}.data-{i:05d}-of-00003") for i in range(3)]
    pieces = [p for s in plan["shards"] for p in s["pieces"]]
    assert {p["op"] for p in pieces} == {"copy"}
    assert not any("Adam" in p["name"] for p in pieces)
    for s in plan["shards"]:  # the fragment is the shard's pieces back to back
        frag = sorted(s["fragment"].values(), key=lambda e: e["offset"])
        assert sum(e["size"] for e in frag) == s["size"]
        assert all(x["offset"] + x["size"] == y["offset"] for x, y in zip(frag, frag[1:]))


def test_killed_task_rerun_completes_and_early_commit_changes_nothing(source, tmp_path):
    one, split = tmp_path / "one" / "model.ckpt", tmp_path / "split" / "model.ckpt"
    plan = tmp_path / "plan.json"
    assert cli("strip", source, one, "--shards", "4", "-q") == 0
    assert cli("plan", "strip", source, split, "--shards", "4", "--out-plan", plan, "-q") == 0
    # SIGKILL the task at a chosen point: halfway through its second shard's pieces.
    killer = f"""
import os, signal, sys
import ckptio.rewrite_exec as rw  # where each piece is written
from ckptio.cli.main import main
real, count = rw._write_piece, [0]
def write_then_die(*a, **k):
    real(*a, **k)
    count[0] += 1
    if count[0] == 7:
        os.kill(os.getpid(), signal.SIGKILL)
rw._write_piece = write_then_die
sys.exit(main(["run-plan", {str(plan)!r}, "--task", "0/1", "-q"]))
"""
    p = subprocess.run(
        [sys.executable, "-c", killer], env=child_env(), cwd=str(ROOT), capture_output=True, text=True, timeout=300
    )
    assert p.returncode == -signal.SIGKILL, p.stderr
    staging = split.parent / ".model.ckpt.ckptio-plan"
    receipts = sorted(str(r.relative_to(staging)) for r in staging.rglob("done.json"))
    assert receipts == ["00000/done.json"]  # one shard done, the second killed mid-write
    assert list((staging / "00001").glob(".part*ckptio-tmp*"))  # its half-written temp files

    before = {str(q): q.stat().st_mtime_ns for q in split.parent.rglob("*")}
    assert cli("commit", plan) == 2  # PlanError: not every shard is done
    assert {str(q): q.stat().st_mtime_ns for q in split.parent.rglob("*")} == before
    assert not Path(str(split) + ".index").exists()

    again = ckptio_popen("run-plan", plan, "--task", "0/1")
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert "wrote 3 shards, 1 already done" in err  # the finished shard is verified and skipped
    assert cli("commit", plan, "-q") == 0
    assert files_of(str(split)) == files_of(str(one))
    assert not staging.exists()


def test_run_and_commit_refuse_a_changed_input(source, tmp_path):
    copy = tmp_path / "src" / "model.ckpt"
    assert cli("strip", source, copy, "--shards", "2", "-q") == 0  # an input of our own to change
    plan, out = tmp_path / "plan.json", tmp_path / "out" / "model.ckpt"
    assert cli("plan", "rename", copy, out, "--map", "/=x/", "--out-plan", plan, "-q") == 0
    assert cli("run-plan", plan, "--task", "0/2", "-q") == 0
    data = Path(str(copy) + ".data-00001-of-00002")
    with open(data, "ab") as f:  # grown: the plan's recorded size no longer holds
        f.write(b"\0")
    p = ckptio_popen("run-plan", plan, "--task", "1/2")
    _, err = p.communicate(timeout=300)
    assert p.returncode == 1
    assert "input changed since the plan was made (data files differs)" in err
    assert cli("commit", plan) != 0
    assert not Path(str(out) + ".index").exists()


def test_a_part_changed_after_its_task_is_redone(source, tmp_path):
    one, split, plan = tmp_path / "one" / "m.ckpt", tmp_path / "split" / "m.ckpt", tmp_path / "plan.json"
    assert cli("strip", source, one, "--shards", "2", "-q") == 0
    assert cli("plan", "strip", source, split, "--shards", "2", "--out-plan", plan, "-q") == 0
    assert cli("run-plan", plan, "-q") == 0
    index = split.parent / ".m.ckpt.ckptio-plan" / "00001" / "part.index"
    index.write_bytes(index.read_bytes()[:-1] + b"\1")  # the receipt's index sha256 no longer matches
    assert cli("commit", plan) == 2
    p = ckptio_popen("run-plan", plan)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0 and "wrote 1 shards, 1 already done" in err
    assert cli("commit", plan, "-q") == 0
    assert files_of(str(split)) == files_of(str(one))


def test_commit_refuses_an_existing_output_unless_planned_with_force(source, tmp_path):
    out, plan = tmp_path / "out" / "model.ckpt", tmp_path / "plan.json"
    assert cli("strip", source, out, "-q") == 0
    assert cli("plan", "strip", source, out, "--out-plan", plan, "-q") == 2  # exists, no --force
    assert cli("plan", "strip", source, out, "--shards", "2", "--force", "--out-plan", plan, "-q") == 0
    assert cli("run-plan", plan, "-q") == 0 and cli("commit", plan, "-q") == 0
    names = sorted(p.name for p in out.parent.iterdir())
    assert names == [
        "checkpoint",
        "model.ckpt.data-00000-of-00002",
        "model.ckpt.data-00001-of-00002",
        "model.ckpt.index",
    ]  # the replaced checkpoint's single data file is gone


def test_edited_plan_and_bad_task_are_refused(source, tmp_path, capsys):
    plan = tmp_path / "plan.json"
    assert cli("plan", "strip", source, tmp_path / "o" / "m.ckpt", "--shards", "2", "--out-plan", plan, "-q") == 0
    assert cli("run-plan", plan, "--task", "2/2") == 2
    assert cli("run-plan", plan, "--task", "x") == 2
    text = json.loads(plan.read_text())
    text["shards"][0]["pieces"][0]["src_offset"] += 4
    plan.write_text(json.dumps(text))
    capsys.readouterr()
    assert cli("run-plan", plan) == 2
    assert "the plan was edited after it was made" in capsys.readouterr().err


def test_an_unplannable_command_is_refused_in_one_line(capsys):
    assert cli("plan", "diff", "a", "b", "--out-plan", "p.json") == 2
    err = capsys.readouterr().err
    assert err.endswith(
        "argument COMMAND: invalid choice: 'diff' (choose from strip, rename, rewrite, fit, merge)\n"
    ), err


def test_plan_does_not_import_ray(source, tmp_path):
    code = f"""
import sys
from ckptio.cli.main import main
assert main(["plan", "strip", {source!r}, {str(tmp_path / "o" / "m.ckpt")!r}, "--out-plan",
             {str(tmp_path / "p.json")!r}, "-q"]) == 0
assert main(["run-plan", {str(tmp_path / "p.json")!r}, "-q"]) == 0
assert main(["commit", {str(tmp_path / "p.json")!r}, "-q"]) == 0
assert main(["strip", {source!r}, {str(tmp_path / "o2" / "m.ckpt")!r}, "-q"]) == 0
print(sorted(m for m in sys.modules if m.split(".")[0] == "ray"))
"""
    p = subprocess.run(
        [sys.executable, "-c", code], env=child_env(), cwd=str(ROOT), capture_output=True, text=True, timeout=300
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("make_latest", [False, True])
def test_commit_leaves_a_training_directorys_latest_unless_asked(source, tmp_path, make_latest):
    """A plan committed into a directory whose state file lists other checkpoints moves its latest only
    with --make-latest, as the single-process rewrite does."""
    from ckptio.bundle.state import latest_from_state

    train = tmp_path / "train"
    assert cli("rewrite", source, train / "ckpt-1", "-q") == 0  # a run's own checkpoint, its latest
    (train / "checkpoint").write_text('model_checkpoint_path: "ckpt-1"\nall_model_checkpoint_paths: "ckpt-1"\n')
    before = (train / "checkpoint").read_bytes()
    plan = tmp_path / "plan.json"
    flags = ["--make-latest"] if make_latest else []
    assert cli("plan", "strip", source, train / "stripped", "--shards", "2", "--out-plan", plan, *flags) == 0
    assert cli("run-plan", plan) == 0
    assert cli("commit", plan) == 0
    if make_latest:
        assert latest_from_state(str(train)) == str(train / "stripped")
    else:
        assert (train / "checkpoint").read_bytes() == before
        assert latest_from_state(str(train)) == str(train / "ckpt-1")
