"""Batch rewrites: many inputs (paths, globs, directories whose `checkpoint` state file lists several
checkpoints) into one --out-dir, in worker processes, with a summary table, and resumable (a second
run skips complete outputs and redoes one that lost a shard)."""

from __future__ import annotations

import json
import os

import pytest
from support import read_all as contents
from support import same

import ckptio
from ckptio.batch import expand_inputs, is_complete, output_prefixes, run_batch
from ckptio.cli.main import main
from ckptio.errors import CheckpointNotFoundError, PlanError
from ckptio.transform import StripOptimizer

try:
    from test_rewrite import model_tensors, write_bundle
except ImportError:  # tests/ imported as a package
    from .test_rewrite import model_tensors, write_bundle


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


OPT = {
    "model/dense/kernel/Adam",
    "model/dense/kernel/Adam_1",
    "model/dense/bias/Adam",
    "model/dense/bias/Adam_1",
    "beta1_power",
    "beta2_power",
    "model/embedding/Adam",
}


@pytest.fixture
def inputs(tmp_path):
    """Five checkpoints: a/one, b/two, and a run directory with a state file listing step-1..3."""
    made = {}
    for i, rel in enumerate(["a/one", "b/two", "run/model.ckpt-1", "run/model.ckpt-2", "run/model.ckpt-3"]):
        tensors, sliced = model_tensors(seed=10 + i)
        write_bundle(tmp_path / rel, tensors, sliced=sliced)
        made[rel] = dict(tensors) | {n: full for n, (full, _) in sliced.items()}
    # TF writes relative paths; one absolute path too (TF1 Saver did that)
    (tmp_path / "run" / "checkpoint").write_text(
        'model_checkpoint_path: "model.ckpt-3"\n'
        'all_model_checkpoint_paths: "model.ckpt-1"\n'
        f'all_model_checkpoint_paths: "{tmp_path / "run" / "model.ckpt-2"}"\n'
        'all_model_checkpoint_paths: "model.ckpt-3"\n'
    )
    return tmp_path, made


# -- inputs -------------------------------------------------------------------------------------------------


def test_expand_inputs_paths_globs_and_state_file_directories(inputs):
    root, _ = inputs
    got = expand_inputs(
        [
            str(root / "a" / "one"),
            str(root / "b" / "*.index"),
            str(root / "run"),
            str(root / "a" / "one.index"),
            str(root / "a" / "one.data-00000-of-00001"),
        ]
    )
    assert got == [
        str(root / "a" / "one"),
        str(root / "b" / "two"),
        str(root / "run" / "model.ckpt-1"),
        str(root / "run" / "model.ckpt-2"),
        str(root / "run" / "model.ckpt-3"),
    ]
    # a glob over data files and index files of one prefix gives it once
    assert expand_inputs([str(root / "a" / "one*")]) == [str(root / "a" / "one")]
    with pytest.raises(CheckpointNotFoundError, match="glob matches nothing"):
        expand_inputs([str(root / "zzz" / "*.index")])


def test_output_names_stay_distinct(tmp_path):
    assert output_prefixes(["x/a/model.ckpt", "x/b/model.ckpt", "x/c/other"], "out") == [
        os.path.join("out", "a_model.ckpt"),
        os.path.join("out", "b_model.ckpt"),
        os.path.join("out", "other"),
    ]
    with pytest.raises(PlanError, match="same output name"):
        output_prefixes(["p/a/m", "q/a/m"], "out")


# -- the CLI batch ------------------------------------------------------------------------------------------


def test_batch_strip_with_jobs_summary_and_resume(capsys, inputs):
    root, made = inputs
    out_dir = root / "stripped"
    argv = ["strip", root / "a" / "one", root / "b" / "*.index", root / "run", "--out-dir", out_dir, "--jobs", "2"]
    rc, stdout, err = run(capsys, *argv)
    assert rc == 0, err
    expected = {
        "one": "a/one",
        "two": "b/two",
        "model.ckpt-1": "run/model.ckpt-1",
        "model.ckpt-2": "run/model.ckpt-2",
        "model.ckpt-3": "run/model.ckpt-3",
    }
    for base, rel in expected.items():
        got = contents(out_dir / base)
        assert set(got) == set(made[rel]) - OPT, base
        assert all(same(got[n], made[rel][n]) for n in got), base
    lines = stdout.splitlines()
    assert lines[0].split() == ["input", "status", "kept", "dropped", "before", "after", "sec"]
    rows = lines[1:-1]
    assert len(rows) == 5
    for row, rel in zip(rows, expected.values()):
        cells = row.split()
        assert cells[0] == str(root / rel) and cells[1] == "ok"
        assert (int(cells[2]), int(cells[3])) == (len(made[rel]) - len(OPT), len(OPT))
    assert lines[-1] == f"5 inputs: 5 written, 0 skipped, 0 failed -> {out_dir}"
    assert sorted(err.split()[::2]) == ["ok"] * 5  # per-input progress on stderr

    # resume: everything complete is skipped ...
    stamps = {p: os.stat(out_dir / p).st_mtime_ns for p in os.listdir(out_dir)}
    rc, stdout, _ = run(capsys, *argv)
    assert rc == 0
    assert stdout.splitlines()[-1] == f"5 inputs: 0 written, 5 skipped, 0 failed -> {out_dir}"
    assert {p: os.stat(out_dir / p).st_mtime_ns for p in os.listdir(out_dir) if p != "checkpoint"} == {
        p: t for p, t in stamps.items() if p != "checkpoint"
    }
    # ... and an output that lost a data shard is redone
    os.unlink(out_dir / "two.data-00000-of-00001")
    assert not is_complete(str(out_dir / "two"))
    rc, stdout, err = run(capsys, *argv)
    assert rc == 0, stdout + err
    rows = {r.split()[0]: r.split()[1] for r in stdout.splitlines()[1:-1]}
    assert rows.pop(str(root / "b" / "two")) == "ok"
    assert set(rows.values()) == {"skipped"}
    assert stdout.splitlines()[-1] == f"5 inputs: 1 written, 4 skipped, 0 failed -> {out_dir}"
    got = contents(out_dir / "two")
    assert set(got) == set(made["b/two"]) - OPT and all(same(got[n], made["b/two"][n]) for n in got)
    assert not [n for n in os.listdir(out_dir) if "ckptio-tmp" in n]


def test_batch_no_resume_redoes_everything(capsys, inputs):
    root, _ = inputs
    argv = ["rename", root / "a" / "one", root / "b" / "two", "--map", "model/=net/", "--out-dir", root / "o"]
    assert run(capsys, *argv)[0] == 0
    rc, stdout, err = run(capsys, *argv, "--no-resume")
    assert rc == 0, err
    assert stdout.splitlines()[-1] == f"2 inputs: 2 written, 0 skipped, 0 failed -> {root / 'o'}"
    assert "net/embedding" in contents(root / "o" / "one")


def test_batch_failure_is_reported_and_exits_1(capsys, inputs):
    root, made = inputs
    with ckptio.open(str(root / "b" / "two")) as c:
        entry = c.entries()["model/dense/kernel"]
    data = root / "b" / "two.data-00000-of-00001"
    raw = bytearray(data.read_bytes())
    raw[entry.offset] ^= 1
    data.write_bytes(bytes(raw))
    rc, stdout, err = run(capsys, "strip", root / "a" / "one", root / "b" / "two", "--out-dir", root / "o", "--json")
    assert rc == 1
    outcomes = json.loads(stdout)
    assert [(o["src"], o["status"]) for o in outcomes] == [
        (str(root / "a" / "one"), "ok"),
        (str(root / "b" / "two"), "failed"),
    ]
    assert "checksum does not match" in outcomes[1]["message"]
    assert outcomes[0]["kept"] == len(made["a/one"]) - len(OPT) and outcomes[0]["dropped"] == len(OPT)
    assert sorted(os.listdir(root / "o")) == ["checkpoint", "one.data-00000-of-00001", "one.index"]
    # the table names the failure too
    rc, stdout, _ = run(capsys, "strip", root / "b" / "two", "--out-dir", root / "o")
    assert rc == 1 and "failed" in stdout and "checksum does not match" in stdout


def test_batch_dry_run_writes_nothing(capsys, inputs):
    root, _ = inputs
    rc, stdout, err = run(capsys, "strip", root / "run", "--out-dir", root / "o", "--dry-run")
    assert rc == 0, err
    assert not (root / "o").exists()
    assert stdout.count("would write") == 3 and stdout.count("drop    beta1_power") == 3


def test_batch_into_the_input_directory_refuses_to_overwrite(capsys, inputs):
    root, _ = inputs
    before = (root / "a" / "one.index").read_bytes()
    rc, stdout, _ = run(capsys, "strip", root / "a" / "one", "--out-dir", root / "a", "--force")
    assert rc == 1
    assert "output is the input checkpoint" in stdout
    assert (root / "a" / "one.index").read_bytes() == before


def test_run_batch_library(inputs):
    root, made = inputs
    done = []
    outcomes = run_batch(
        [str(root / "a" / "one"), str(root / "b" / "two")],
        str(root / "lib"),
        [StripOptimizer(keep_global_step=False)],
        jobs=2,
        num_shards=2,
        on_done=done.append,
    )
    assert [o.status for o in outcomes] == ["ok", "ok"] and len(done) == 2
    with ckptio.open(str(root / "lib" / "one")) as c:
        assert c.num_shards == 2 and "global_step" not in c
    assert outcomes[0].bytes_after < outcomes[0].bytes_before
