"""`ckptio strip / rename / rewrite` through `ckptio.cli.main.main(argv)`: options, printed plans and
reports, exit codes (0 ok, 1 checkpoint problem, 2 usage), and what is (not) left on disk."""

from __future__ import annotations

import hashlib
import json
import os
import sys

import ml_dtypes
import numpy as np
import pytest
from support import read_all as values
from support import same

import ckptio
from ckptio.bundle import naming
from ckptio.cli.main import main

try:
    from test_rewrite import model_tensors, write_bundle
except ImportError:  # tests/ imported as a package
    from .test_rewrite import model_tensors, write_bundle


@pytest.fixture
def src(tmp_path):
    tensors, sliced = model_tensors(seed=3)
    prefix = write_bundle(tmp_path / "in" / "model.ckpt-7", tensors, sliced=sliced)
    return prefix, dict(tensors) | {n: full for n, (full, _) in sliced.items()}


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def names(prefix) -> set:
    with ckptio.open(prefix) as c:
        return set(c)


def tree(directory) -> dict:
    out = {}
    for root, _, files in os.walk(directory):
        for f in files:
            p = os.path.join(root, f)
            out[os.path.relpath(p, directory)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


OPT = {
    "model/dense/kernel/Adam",
    "model/dense/kernel/Adam_1",
    "model/dense/bias/Adam",
    "model/dense/bias/Adam_1",
    "beta1_power",
    "beta2_power",
    "model/embedding/Adam",
}


# -- the three commands ------------------------------------------------------------------------------------


def test_strip(capsys, src, tmp_path):
    prefix, vals = src
    out = tmp_path / "out" / "m"
    rc, stdout, err = run(capsys, "strip", prefix, out, "-q")
    assert rc == 0, err
    assert names(out) == set(vals) - OPT
    assert "global_step" in names(out)
    assert stdout.startswith(
        f"wrote {out}: kept {len(vals) - len(OPT)} tensors (0 renamed, 0 cast), dropped {len(OPT)}; "
    )
    got = values(out)
    assert all(same(got[n], vals[n]) for n in got)


def test_strip_options(capsys, src, tmp_path):
    prefix, vals = src
    rc, _, err = run(capsys, "strip", prefix, tmp_path / "a" / "m", "--drop-global-step", "--ema", "drop", "-q")
    assert rc == 0, err
    assert names(tmp_path / "a" / "m") == set(vals) - OPT - {
        "global_step",
        "model/dense/kernel/ExponentialMovingAverage",
    }
    rc, _, err = run(capsys, "strip", prefix, tmp_path / "b" / "m", "--ema", "promote", "-q")
    assert rc == 0, err
    assert same(values(tmp_path / "b" / "m")["model/dense/kernel"], vals["model/dense/kernel/ExponentialMovingAverage"])
    rc, _, err = run(capsys, "strip", prefix, tmp_path / "c" / "m", "--ema", "average")
    assert rc == 2 and "invalid choice: 'average'" in err


def test_strip_custom_optimizer_name(capsys, tmp_path):
    w = np.arange(4, dtype=np.float32)
    prefix = write_bundle(tmp_path / "in" / "m", {"w": w, "w/MyOpt": w + 1, "w/MyOpt_1": w + 2})
    run(capsys, "strip", prefix, tmp_path / "a" / "m", "-q")
    assert names(tmp_path / "a" / "m") == {"w", "w/MyOpt", "w/MyOpt_1"}
    rc, _, _ = run(capsys, "strip", prefix, tmp_path / "b" / "m", "--optimizer-name", "MyOpt", "-q")
    assert rc == 0 and names(tmp_path / "b" / "m") == {"w"}


def test_rename_scope_exact_regex_and_map_file(capsys, src, tmp_path):
    prefix, vals = src
    rc, _, err = run(
        capsys, "rename", prefix, tmp_path / "a" / "m", "--map", "model/=net/", "--map", "global_step=step", "-q"
    )
    assert rc == 0, err
    got = values(tmp_path / "a" / "m")
    assert same(got["net/embedding/Adam"], vals["model/embedding/Adam"])
    assert same(got["step"], vals["global_step"]) and "global_step" not in got
    rc, _, err = run(
        capsys,
        "rename",
        prefix,
        tmp_path / "b" / "m",
        "--regex",
        "--map",
        r"^model/dense/(kernel|bias)(.*)$=layers/0/\1\2",
        "-q",
    )
    assert rc == 0, err
    got = values(tmp_path / "b" / "m")
    assert same(got["layers/0/kernel/Adam_1"], vals["model/dense/kernel/Adam_1"])
    assert same(got["layers/0/bias"], vals["model/dense/bias"])
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps({"model/embedding": "emb", "/": "root/"}))
    rc, _, err = run(capsys, "rename", prefix, tmp_path / "c" / "m", "--map-file", mapping, "-q")
    assert rc == 0, err
    got = values(tmp_path / "c" / "m")
    assert same(got["emb"], vals["model/embedding"])  # sliced: renamed with its slice keys
    assert same(got["root/model/embedding/Adam"], vals["model/embedding/Adam"])


def test_rewrite_select_strip_rename_cast(capsys, src, tmp_path):
    prefix, vals = src
    out = tmp_path / "out" / "m"
    rc, _, err = run(
        capsys,
        "rewrite",
        prefix,
        out,
        "--include",
        "^model/",
        "--exclude",
        "half",
        "--strip-optimizer",
        "--map",
        "model/=net/",
        "--cast",
        "bfloat16",
        "--cast-only",
        "kernel",
        "-q",
    )
    assert rc == 0, err
    got = values(out)
    assert set(got) == {
        "net/dense/kernel",
        "net/dense/bias",
        "net/dense/kernel/ExponentialMovingAverage",
        "net/embedding",
        "net/f64",
    }
    assert same(got["net/dense/kernel"], vals["model/dense/kernel"].astype(ml_dtypes.bfloat16))
    assert same(got["net/dense/bias"], vals["model/dense/bias"])
    rc, _, err = run(
        capsys,
        "rewrite",
        prefix,
        tmp_path / "g" / "m",
        "--include-glob",
        "model/dense/*",
        "--exclude-glob",
        "*/Adam*",
        "-q",
    )
    assert rc == 0, err
    assert names(tmp_path / "g" / "m") == {
        "model/dense/kernel",
        "model/dense/bias",
        "model/dense/kernel/ExponentialMovingAverage",
    }


def test_json_report(capsys, src, tmp_path):
    prefix, vals = src
    rc, out, _ = run(
        capsys,
        "rewrite",
        prefix,
        tmp_path / "o" / "m",
        "--strip-optimizer",
        "--map",
        "model/=n/",
        "--cast",
        "float16",
        "--json",
    )
    assert rc == 0
    report = json.loads(out)
    assert set(report["dropped"]) == OPT
    assert {"src": "model/dense/kernel", "dst": "n/dense/kernel"} in report["renamed"]
    assert "n/dense/kernel" in report["cast"] and "global_step" not in report["cast"]
    assert report["bytes_after"] < report["bytes_before"] and report["dst"] == str(tmp_path / "o" / "m")


# -- output options -------------------------------------------------------------------------------------


def data_files(prefix):
    d, base = os.path.split(str(prefix))
    return sorted(n for n in os.listdir(d) if (naming.split_data_path(n) or ("",))[0] == base)


def test_shards_and_max_shard_size(capsys, src, tmp_path):
    prefix, vals = src
    rc, _, err = run(capsys, "rewrite", prefix, tmp_path / "a" / "m", "--shards", "3", "-q")
    assert rc == 0, err
    assert data_files(tmp_path / "a" / "m") == [f"m.data-0000{i}-of-00003" for i in range(3)]
    got = values(tmp_path / "a" / "m")
    assert all(same(got[n], vals[n]) for n in vals)
    rc, _, err = run(capsys, "rewrite", prefix, tmp_path / "b" / "m", "--max-shard-size", "100", "-q")
    assert rc == 0, err
    files = data_files(tmp_path / "b" / "m")
    assert len(files) > 3
    sizes = [os.path.getsize(tmp_path / "b" / f) for f in files]
    assert all(s <= 100 for s in sizes)  # no single tensor or slice is bigger than 100 bytes
    got = values(tmp_path / "b" / "m")
    assert all(same(got[n], vals[n]) for n in vals)
    rc, _, err = run(capsys, "rewrite", prefix, tmp_path / "c" / "m", "--max-shard-size", "1K", "-q")
    assert rc == 0 and sum(os.path.getsize(tmp_path / "c" / f) > 1024 for f in data_files(tmp_path / "c" / "m")) == 0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--shards", "0"], "--shards must be >= 1"),
        (["--max-shard-size", "lots"], "not a size: 'lots'"),
        (["--cast", "int8"], "invalid choice: 'int8'"),
    ],
)
def test_bad_output_options_are_usage_errors(capsys, src, tmp_path, argv, message):
    prefix, _ = src
    rc, _, err = run(capsys, "rewrite", prefix, tmp_path / "o" / "m", *argv)
    assert rc == 2 and message in err
    assert not (tmp_path / "o").exists()


def test_refuses_to_overwrite_unless_force(capsys, src, tmp_path):
    prefix, vals = src
    out = tmp_path / "o" / "m"
    assert run(capsys, "rename", prefix, out, "--map", "model/=a/", "-q")[0] == 0
    before = tree(tmp_path / "o")
    rc, _, err = run(capsys, "strip", prefix, out)
    assert rc == 2
    assert err == f"ckptio: error: {out}.index: a checkpoint already exists here (pass --force to replace it)\n"
    assert tree(tmp_path / "o") == before
    rc, _, err = run(capsys, "strip", prefix, out, "--force", "-q")
    assert rc == 0, err
    assert names(out) == set(vals) - OPT


def test_never_writes_over_its_input_even_with_force(capsys, src, tmp_path):
    prefix, _ = src
    before = tree(tmp_path / "in")
    for argv in (
        ["strip", prefix, prefix],
        ["strip", prefix, prefix, "--force"],
        ["strip", os.path.dirname(prefix), prefix + ".index", "--force"],
        ["rewrite", prefix + ".index", os.path.join(os.path.dirname(prefix), ".", "model.ckpt-7"), "--force"],
    ):
        rc, _, err = run(capsys, *argv)
        assert rc == 2, argv
        assert "output is the input checkpoint" in err, err
    assert tree(tmp_path / "in") == before


def test_dry_run_prints_plan_and_writes_nothing(capsys, src, tmp_path):
    prefix, _ = src
    out = tmp_path / "o" / "m"
    rc, stdout, err = run(
        capsys, "rewrite", prefix, out, "--strip-optimizer", "--map", "model/=net/", "--cast", "float16", "--dry-run"
    )
    assert rc == 0, err
    assert not (tmp_path / "o").exists()
    lines = stdout.splitlines()
    assert "keep    model/dense/kernel -> net/dense/kernel" in lines
    assert "keep    global_step" in lines
    assert "drop    beta1_power" in lines and "drop    model/embedding/Adam" in lines
    assert "cast    net/dense/kernel" in lines and "cast    global_step" not in lines
    assert "uncast  global_step (int64: not floating)" in lines
    assert lines[-1].startswith(
        f"would write {out}: kept 9 tensors (6 renamed, 5 cast, 4 left as they were: "
        "1 already that dtype (float16); 3 not floating (int32, int64, string)), dropped 7; "
    )
    assert " -> " in lines[-1] and "B" in lines[-1]
    # a dry run refuses what the real run would refuse
    run(capsys, "strip", prefix, out, "-q")
    rc, _, err = run(capsys, "strip", prefix, out, "--dry-run")
    assert rc == 2 and "already exists" in err


# -- errors and exit codes -----------------------------------------------------------------------------------


def test_plan_errors_exit_2_before_writing(capsys, src, tmp_path):
    prefix, _ = src
    out = tmp_path / "o" / "m"
    rc, _, err = run(capsys, "rename", prefix, out, "--map", "model/dense/bias=model/dense/kernel")
    assert rc == 2
    assert err == (
        "ckptio: error: 'model/dense/bias' and 'model/dense/kernel' would both be written as 'model/dense/kernel'\n"
    )
    rc, _, err = run(capsys, "rename", prefix, out, "--map", "model/=net/", "--map", "nothing/=x/")
    assert rc == 2 and "rename rule matches no tensor: nothing/=x/ (pass --allow-unmatched to accept)" in err
    rc, _, err = run(capsys, "rename", prefix, out, "--map", "model=net/")
    assert rc == 2 and "a scope must map to a scope" in err
    rc, _, err = run(capsys, "rename", prefix, out, "--regex", "--map", "(=x")
    assert rc == 2 and "bad pattern" in err
    rc, _, err = run(capsys, "rename", prefix, out, "--map-file", tmp_path / "missing.json")
    assert rc == 2 and "cannot read map file" in err
    assert not (tmp_path / "o").exists()
    rc, _, err = run(
        capsys, "rename", prefix, out, "--map", "model/=net/", "--map", "nothing/=x/", "--allow-unmatched", "-q"
    )
    assert rc == 0, err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["rename", "IN", "OUT"], "rename needs --map OLD=NEW or --map-file FILE"),
        (["rename", "IN", "OUT", "--map", "nothing"], "rename rule 'nothing' is not OLD=NEW"),
        (["strip", "IN"], "strip takes IN OUT (or inputs with --out-dir DIR)"),
        (["strip", "IN", "OUT", "OTHER"], "strip takes IN OUT"),
        (["strip"], "the following arguments are required: IN OUT"),
        (["strip", "IN", "OUT", "--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_usage_errors_exit_2(capsys, src, tmp_path, argv, message):
    prefix, _ = src
    argv = [prefix if a == "IN" else str(tmp_path / "o" / "m") if a == "OUT" else a for a in argv]
    rc, _, err = run(capsys, *argv)
    assert rc == 2, err
    assert message in err
    assert not (tmp_path / "o").exists()


def test_checkpoint_problems_exit_1(capsys, src, tmp_path):
    prefix, _ = src
    rc, _, err = run(capsys, "strip", tmp_path / "nope" / "m", tmp_path / "o" / "m")
    assert rc == 1 and "nope" in err
    # a flipped byte in a data shard: checksum error, nothing left behind
    with ckptio.open(prefix) as c:
        entry = c.entries()["model/dense/kernel"]
    data = prefix + ".data-00000-of-00001"
    raw = bytearray(open(data, "rb").read())
    raw[entry.offset] ^= 0x55
    open(data, "wb").write(bytes(raw))
    rc, _, err = run(capsys, "strip", prefix, tmp_path / "o" / "m")
    assert rc == 1
    assert "model/dense/kernel" in err and "checksum does not match" in err
    assert os.listdir(tmp_path / "o") == []
    # --no-verify copies the bytes as they are (the caller asked for it)
    rc, _, err = run(capsys, "strip", prefix, tmp_path / "o" / "m", "--no-verify", "-q")
    assert rc == 0, err


def test_object_based_without_graph_support_exits_2(capsys, corpus, corpus_manifest, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ckptio.objgraph", None)  # a build without ckptio.objgraph
    rec = next(c for c in corpus_manifest["checkpoints"] if c["short_name"] == "tf2_keras_weights_2shard")
    rc, _, err = run(capsys, "strip", corpus / rec["prefix"], tmp_path / "o" / "m")
    assert rc == 2
    assert "object-based (TF2) checkpoint" in err and "object graph support" in err
    assert not (tmp_path / "o").exists()
