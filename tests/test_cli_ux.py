"""Regression tests for CLI usability bugs found by using every command as a demanding user would:
wrong and odd arguments give one line on stderr and the right exit code, never a traceback or a
file written somewhere surprising.

Each test of a bug failed before its fix (a few more guard what the fixes must keep working).
Everything goes through ckptio.cli.main.main(argv); no TensorFlow.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

from ckptio.bundle import dtypes
from ckptio.bundle.writer import BundleWriter
from ckptio.cli import common
from ckptio.cli.main import main


@pytest.fixture
def src(tmp_path):
    """A small TF1-style Adam checkpoint with a `checkpoint` state file; returns its directory."""
    d = tmp_path / "src"
    with BundleWriter(str(d / "model.ckpt-1")) as w:
        w.add_array("global_step", np.int64(1))
        w.add_array("mlp/kernel", np.ones((3, 2), np.float32))
        w.add_array("mlp/kernel/Adam", np.zeros((3, 2), np.float32))
        w.add_array("mlp/bias", np.ones(2, np.float32))
        w.finish()
    return str(d)


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str) -> bool:
    return err.count("\n") == 1 and "Traceback" not in err


# --------------------------------------------------------------------------- main


def test_unexpected_exception_is_one_line_not_a_traceback(capsys, src, monkeypatch):
    import ckptio.cli.ls as ls

    def boom(args):
        raise ValueError("something unforeseen")

    monkeypatch.setattr(ls, "run", boom)
    monkeypatch.delenv("CKPTIO_DEBUG", raising=False)
    code, _, err = run(capsys, "ls", src)
    assert code == 1 and one_line_error(err)
    assert "internal error: ValueError: something unforeseen" in err and "CKPTIO_DEBUG=1" in err
    monkeypatch.setenv("CKPTIO_DEBUG", "1")
    with pytest.raises(ValueError):
        main(["ls", src])


def test_interrupt_exits_130(capsys, src, monkeypatch):
    import ckptio.cli.verify as verify

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(verify, "run", interrupted)
    code, _, err = run(capsys, "verify", src)
    assert code == 130 and err == "ckptio: interrupted\n"


@pytest.mark.parametrize(
    "argv, name",
    [
        (["ls", ""], "PATH"),
        (["strip", "SRC", ""], "IN OUT"),
        (["unpack", "x.tar.zst", ""], "DIR"),
        (["pack", "SRC", ""], "OUT"),
        (["doctor", "SRC", "--salvage", ""], "--salvage"),
        (["strip", "SRC", "--out-dir", ""], "--out-dir"),
    ],
)
def test_empty_path_is_a_usage_error(capsys, src, tmp_path, monkeypatch, argv, name):
    # An empty OUT used to write `.index` into the current directory; an empty DIR unpacked there.
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, *[src if a == "SRC" else a for a in argv])
    assert code == 2 and one_line_error(err)
    assert f"{name}: empty path" in err
    assert not any(p.startswith(".") for p in os.listdir(tmp_path))


# --------------------------------------------------------------------------- output prefixes


# Not "/": before the fix that wrote /.index and /checkpoint; "new_dir/" fails the same way.
@pytest.mark.parametrize("out", ["existing_dir", "existing_dir/", "new_dir/", ".", "existing_dir/.."])
def test_output_prefix_without_a_file_name_is_refused(capsys, src, tmp_path, monkeypatch, out):
    # `strip IN dir/` wrote dir/.index (a hidden checkpoint); `strip IN dir` wrote dir.index beside dir.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "existing_dir").mkdir()
    code, _, err = run(capsys, "strip", src, out)
    assert code == 2 and one_line_error(err)
    assert "model.ckpt" in err  # says what to pass instead
    assert sorted(os.listdir(tmp_path)) == ["existing_dir", "src"]
    assert os.listdir(tmp_path / "existing_dir") == []


def test_url_output_without_a_path_is_refused(capsys, src):
    # `memory://` wrote its state file to a path named "memory:/checkpoint".
    code, _, err = run(capsys, "strip", src, "memory://")
    assert code == 2 and one_line_error(err) and "memory://model.ckpt" in err


def test_doctor_salvage_into_a_directory_is_refused(capsys, src, tmp_path):
    (tmp_path / "d").mkdir()
    code, out, err = run(capsys, "doctor", src, "--salvage", tmp_path / "d")
    assert code == 2 and "is a directory" in err and out == ""
    assert os.listdir(tmp_path / "d") == []


# --------------------------------------------------------------------------- option checks


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--max-shard-size", "0"], "--max-shard-size must be more than 0 bytes"),
        (["--shards", "2", "--max-shard-size", "1K"], "give --shards or --max-shard-size, not both"),
        (["--jobs", "0"], "--jobs must be >= 1"),
    ],
)
def test_shard_and_job_options_are_checked(capsys, src, tmp_path, argv, message):
    code, _, err = run(capsys, "strip", src, tmp_path / "o" / "m", *argv)
    assert code == 2 and message in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--cast-only", "kernel"], "--cast-only needs --cast"),
        (["--ema", "drop"], "--ema: meaningful only with --strip-optimizer"),
        (["--drop-global-step"], "--drop-global-step: meaningful only with --strip-optimizer"),
        (["--optimizer-name", "MyOpt"], "--optimizer-name: meaningful only with --strip-optimizer"),
    ],
)
def test_rewrite_flags_that_would_be_ignored_or_surprising(capsys, src, tmp_path, argv, message):
    # --cast-only and --optimizer-name were silently ignored; --ema drop alone also stripped the optimizer.
    code, _, err = run(capsys, "rewrite", src, tmp_path / "o" / "m", *argv)
    assert code == 2 and message in err
    assert not (tmp_path / "o").exists()


def test_rewrite_strip_flags_with_strip_optimizer_still_work(capsys, src, tmp_path):
    import ckptio

    code, _, err = run(capsys, "rewrite", src, tmp_path / "o" / "m", "--strip-optimizer", "--drop-global-step", "-q")
    assert code == 0, err
    with ckptio.open(str(tmp_path / "o" / "m")) as c:
        assert sorted(c) == ["mlp/bias", "mlp/kernel"]


def test_shards_default_and_max_shard_size_alone(capsys, src, tmp_path):
    import ckptio

    assert run(capsys, "strip", src, tmp_path / "a" / "m", "-q")[0] == 0
    assert run(capsys, "strip", src, tmp_path / "b" / "m", "--max-shard-size", "8", "-q")[0] == 0
    with ckptio.open(str(tmp_path / "a" / "m")) as a, ckptio.open(str(tmp_path / "b" / "m")) as b:
        assert a.num_shards == 1 and b.num_shards > 1


# --------------------------------------------------------------------------- batch


def test_out_dir_that_is_a_file_is_a_usage_error(capsys, src, tmp_path):
    (tmp_path / "f").write_text("x")
    code, out, err = run(capsys, "strip", "--out-dir", tmp_path / "f", src)
    assert code == 2 and one_line_error(err) and "not a directory" in err and out == ""


def test_batch_dry_run_names_outputs_and_honours_json(capsys, src, tmp_path):
    out_dir = tmp_path / "o"
    code, out, err = run(capsys, "strip", "--out-dir", out_dir, src, "--dry-run", "--json")
    assert code == 0, err
    (report,) = json.loads(out)
    assert report["dry_run"] and report["dst"] == str(out_dir / "model.ckpt-1")
    assert {d["src"] for d in report["kept"]} == {"global_step", "mlp/bias", "mlp/kernel"}
    code, out, err = run(capsys, "strip", "--out-dir", out_dir, src, "--dry-run")
    assert code == 0 and f"would write {out_dir / 'model.ckpt-1'}:" in out
    assert not out_dir.exists()


def test_batch_with_unparsable_state_file_is_one_line(capsys, src, tmp_path):
    with open(os.path.join(src, "checkpoint"), "w") as f:
        f.write("garbage {{{\n")
    code, out, err = run(capsys, "strip", "--out-dir", tmp_path / "o", src)
    # The bad input fails its own row (and the exit code); the table says why.
    assert code == 1 and one_line_error(err) and "cannot parse the 'checkpoint' state file" in out


# --------------------------------------------------------------------------- pack / unpack / doctor


@pytest.mark.parametrize("name", ["m.tar", "m.zip", "m"])
def test_pack_refuses_a_name_reading_commands_would_not_recognize(capsys, src, tmp_path, name):
    # `pack IN m.zip` wrote an archive that `ckptio ls m.zip` then called "not a TensorFlow checkpoint".
    code, _, err = run(capsys, "pack", src, tmp_path / name)
    assert code == 2 and ".tar.zst" in err
    assert not (tmp_path / name).exists()


def test_unpack_draws_progress_on_a_terminal(capsys, src, tmp_path, monkeypatch):
    assert run(capsys, "pack", src, tmp_path / "m.tar.zst", "-q")[0] == 0
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    monkeypatch.setattr(common.time, "monotonic", iter(range(0, 10**6, 10)).__next__)
    code, out, err = run(capsys, "unpack", tmp_path / "m.tar.zst", tmp_path / "un")
    assert code == 0 and "unpacked 2 files" in out
    assert err.startswith("\runpack ") and "/s" in err and err.endswith("\n")


def test_progress_without_total_and_never_drawn_writes_nothing(capsys):
    bar = common.Progress(None, "x", enabled=True)
    bar.close()  # finished before the first redraw: no stray empty line
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("path", ["x.tar.zst", "http://127.0.0.1:1/m"])
def test_doctor_on_a_missing_archive_or_url_says_not_found(capsys, path):
    # doctor reads archives and URLs now (tests/test_stores_parametrized.py); a missing one is a finding.
    code, out, err = run(capsys, "doctor", path)
    assert code == 1 and "problem: not-found: " in out and "Traceback" not in out + err


def test_doctor_salvage_of_a_healthy_checkpoint_says_it_wrote(capsys, src, tmp_path):
    code, out, _ = run(capsys, "doctor", src, "--salvage", tmp_path / "s" / "m")
    assert code == 0
    assert f"verdict: healthy: all 4 tensor(s) check out; wrote all 4 to {tmp_path / 's' / 'm'}" in out
    assert (tmp_path / "s" / "m.index").exists()


# --------------------------------------------------------------------------- ls / show


def test_ls_columns_stay_aligned_with_long_dtype_names(capsys, tmp_path):
    prefix = str(tmp_path / "m")
    with BundleWriter(prefix) as w:
        w.add_array("a", np.zeros(2, np.complex128))
        w.add_array("b", np.zeros(2, np.float32))
        w.finish()
    code, out, _ = run(capsys, "ls", prefix)
    a, b = out.splitlines()[:2]
    assert code == 0 and a.index("[2]") == b.index("[2]")


def test_ls_match_with_objects_is_a_usage_error(capsys, src):
    # --match was silently ignored with --objects.
    code, _, err = run(capsys, "ls", src, "--objects", "--match", "x")
    assert code == 2 and "--match" in err


def test_show_variant_prints_metadata_not_an_error(capsys, tmp_path):
    prefix = str(tmp_path / "m")
    with BundleWriter(prefix) as w:
        w.add_bytes("iterator/state", dtypes.VARIANT, (1,), [b"\x00" * 8])
        w.finish()
    code, out, err = run(capsys, "show", prefix, "iterator/state")
    assert code == 0 and err == ""
    assert "iterator/state: variant[1]" in out and "values not shown: cannot decode variant" in out
    code, out, _ = run(capsys, "show", prefix, "iterator/state", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["dtype"] == "variant" and doc["stats"] is None and "variant" in doc["note"]


def test_show_scope_name_suggests_tensors_under_it(capsys, src):
    code, _, err = run(capsys, "show", src, "mlp")
    assert code == 1 and one_line_error(err)
    assert "did you mean mlp/bias, mlp/kernel, mlp/kernel/Adam?" in err


def test_show_all_prints_big_tensors_row_by_row(tmp_path, capsys):
    """--all on millions of values prints one row per line, quickly, for every dtype."""
    import ml_dtypes
    import numpy as np

    from ckptio.bundle.writer import BundleWriter
    from ckptio.cli.main import main

    prefix = str(tmp_path / "m")
    big = np.arange(300 * 100, dtype=np.float32).reshape(300, 100)
    with BundleWriter(prefix) as w:
        w.add_array("f32", big)
        w.add_array("bf16", big.astype(ml_dtypes.bfloat16))
        w.add_array("i4", (np.arange(300 * 100) % 7 - 3).astype(ml_dtypes.int4).reshape(300, 100))
        w.finish()
    assert main(["show", prefix, "f32", "--all"]) == 0
    rows = capsys.readouterr().out.splitlines()[3:]
    assert len(rows) == 300 and rows[-1].startswith("[299]: ")
    assert [float(v) for v in rows[-1].split(": ", 1)[1].split()] == big[-1].tolist()
    assert main(["show", prefix, "bf16", "--all"]) == 0
    assert capsys.readouterr().out.splitlines()[3].split()[1:3] == ["0.0", "1.0"]
    assert main(["show", prefix, "i4", "--all"]) == 0
    assert capsys.readouterr().out.splitlines()[3].split()[1:4] == ["-3", "-2", "-1"]
