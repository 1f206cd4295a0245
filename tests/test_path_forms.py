"""Path forms that used to give a silent wrong answer or hang, and what they give now (issue 12).

quoted globs            name the one checkpoint they match, or are an error listing the matches
a V2 .index read as V1  refused by content, never a checkpoint of 0 tensors
V1 in a directory       one unsharded V1 file resolves; several are listed
FIFOs and devices       refused at open time (one line, exit 1), never opened blocking
SavedModels             saved_model.cpb counts as saved_model.pb; no output inside variables/
advice in errors        the API names its parameters, the CLI its flags
usage line              strip/rename/rewrite show what they accept
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import ckptio
from ckptio.bundle.locate import Located
from ckptio.bundle.paths import resolve
from ckptio.bundle.writer import BundleWriter
from ckptio.errors import (
    CheckpointNotFoundError,
    OutputExistsError,
    PlanError,
    ReadError,
    UnsupportedError,
    WrongFileError,
)
from ckptio.sstable import TableBuilder

try:
    from corrupt_support import cli
except ImportError:  # tests/ imported as a package
    from .corrupt_support import cli

REPO = Path(__file__).resolve().parents[1]


def write_ckpt(prefix, value=1.0, *, state_file=False) -> str:
    prefix = str(prefix)
    with BundleWriter(prefix) as w:
        w.add_array("w", np.full((2, 2), value, np.float32))
        w.add_array("global_step", np.int64(int(value)))
        w.finish(state_file=state_file)
    return prefix


def write_v1(path, tensors: dict) -> None:
    """A V1 table file holding {name: int32 array}, each tensor one full slice, values in int_val."""
    from ckptio._proto import saved_tensor_slice_pb2 as pb
    from ckptio.bundle.slices import Slice, encode_key, to_proto

    meta = pb.SavedTensorSlices()
    meta.meta.versions.producer = 1
    items = []
    for name, arr in tensors.items():
        t = meta.meta.tensor.add()
        t.name, t.type = name, 3  # DT_INT32
        for d in arr.shape:
            t.shape.dim.add().size = d
        full = Slice(tuple((0, None) for _ in arr.shape))
        to_proto(full, t.slice.add())
        data = pb.SavedTensorSlices()
        data.data.name = name
        to_proto(full, data.data.slice)
        data.data.data.int_val.extend(int(v) for v in arr.reshape(-1))
        items.append((encode_key(name, full), data.SerializeToString()))
    with open(path, "wb") as f:
        builder = TableBuilder(f.write)
        builder.add(b"", meta.SerializeToString())
        for key, value in sorted(items):
            builder.add(key, value)
        builder.finish()


def tree(root) -> dict:
    """{relative path: sha256} of every file under root (what 'byte-identical afterwards' compares)."""
    root = Path(root)
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def one_line(text: str) -> str:
    assert text.endswith("\n") and text.count("\n") == 1, text
    return text


@pytest.fixture
def one(tmp_path):
    """A directory holding one checkpoint (with its state file and a .meta beside it)."""
    d = tmp_path / "run"
    prefix = write_ckpt(d / "model.ckpt-5", 5.0, state_file=True)
    (d / "model.ckpt-5.meta").write_bytes(b"\x0a\x02ab")
    return d, prefix


# -- quoted globs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("pattern", ["*.index", "model.ckpt-*", "*", "model.ckpt-?.data-*"])
def test_a_glob_names_the_one_checkpoint_it_matches(one, tmp_path, pattern):
    d, prefix = one
    path = str(d / pattern)
    assert resolve(path) == Located("v2", prefix, ())
    rc, out, err = cli(["ls", path])
    assert rc == 0 and "2 tensors" in out, (out, err)  # was: 0 tensors, exit 0
    rc, out, _ = cli(["show", path, "w"])
    assert rc == 0 and "[2, 2]" in out
    rc, out, _ = cli(["verify", path])
    assert rc == 0
    rc, out, err = cli(["strip", path, tmp_path / "out" / "m", "-q"])
    assert rc == 0, err
    with ckptio.open(tmp_path / "out" / "m") as ck:  # was: an empty checkpoint
        assert sorted(ck) == ["global_step", "w"] and float(ck["w"].read()[0, 0]) == 5.0


def test_a_glob_over_two_checkpoints_is_an_error_naming_both(one, tmp_path):
    d, prefix = one
    other = write_ckpt(d / "model.ckpt-9", 9.0)
    path = str(d / "*.index")
    with pytest.raises(CheckpointNotFoundError) as info:
        ckptio.open(path)
    assert "matches 2 checkpoints" in str(info.value) and prefix in str(info.value) and other in str(info.value)
    for argv in (
        ["ls", path],
        ["show", path, "w"],
        ["verify", path],
        ["doctor", path],
        ["strip", path, tmp_path / "o1" / "m"],
        ["rename", path, tmp_path / "o2" / "m", "--map", "w=v"],
        ["rewrite", path, tmp_path / "o3" / "m"],
    ):
        rc, out, err = cli(argv)
        assert rc == 1, (argv, out, err)
        text = one_line(err) if argv[0] != "doctor" else out + err
        assert "model.ckpt-5" in text and "model.ckpt-9" in text, (argv, text)
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o3").exists()


def test_a_glob_matching_no_checkpoint_lists_what_it_matched(one, tmp_path):
    d, _ = one
    rc, _, err = cli(["ls", d / "*.meta"])
    assert rc == 1 and "none of them a checkpoint" in one_line(err) and "model.ckpt-5.meta" in err
    rc, _, err = cli(["verify", d / "nothing-*"])
    assert rc == 1 and "no file matches" in one_line(err)


def test_batch_still_expands_globs(one, tmp_path):
    d, _ = one
    write_ckpt(d / "model.ckpt-9", 9.0)
    rc, out, err = cli(["strip", d / "*.index", "--out-dir", tmp_path / "out", "-q"])
    assert rc == 0, (out, err)
    assert sorted(p.name for p in (tmp_path / "out").glob("*.index")) == ["model.ckpt-5.index", "model.ckpt-9.index"]


# -- V1 ----------------------------------------------------------------------------------------------


def test_a_v1_shard_pattern_still_names_its_checkpoint(tmp_path):
    write_v1(tmp_path / "m.ckpt-00000-of-00002", {"a": np.arange(3, dtype=np.int32)})
    write_v1(tmp_path / "m.ckpt-00001-of-00002", {"b": np.arange(4, dtype=np.int32)})
    with ckptio.open(tmp_path / "m.ckpt-?????-of-00002") as ck:
        assert ck.format == "v1" and sorted(ck) == ["a", "b"] and list(ck["b"].read()) == [0, 1, 2, 3]


def test_a_v2_index_under_a_v1_name_is_refused(one, tmp_path):
    _, prefix = one
    shutil.copy(prefix + ".index", tmp_path / "model.v1")
    with pytest.raises(WrongFileError, match="V2 .index file"):  # was: a V1 checkpoint of 0 tensors
        ckptio.open(tmp_path / "model.v1")
    rc, out, err = cli(["ls", tmp_path / "model.v1"])
    assert rc == 1 and "V2 .index" in one_line(err) and out == ""


def test_a_directory_holding_one_unsharded_v1_file_resolves(tmp_path):
    d = tmp_path / "v1"
    d.mkdir()
    write_v1(d / "save_net.ckpt", {"x": np.arange(6, dtype=np.int32).reshape(2, 3)})
    (d / "notes.txt").write_text("not a checkpoint")
    with ckptio.open(d) as ck:  # was: "no V1 files"
        assert ck.format == "v1" and ck.prefix == str(d / "save_net.ckpt") and ck["x"].shape == (2, 3)
    write_v1(d / "other.ckpt", {"y": np.arange(2, dtype=np.int32)})
    with pytest.raises(CheckpointNotFoundError, match=r"2 V1 checkpoints; pass one: other.ckpt, save_net.ckpt"):
        ckptio.open(d)


# -- FIFOs and devices -------------------------------------------------------------------------------

# Each command runs in a child process with a time limit: on a regression it would block forever.
RUN_API = """
import sys, ckptio
try:
    with ckptio.open(sys.argv[1]) as ck:
        for name in ck:
            ck[name].read()
    print("read")
except ckptio.ReadError as exc:
    print("ReadError:", exc)
"""


def run_child(*argv) -> tuple[int, str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run([sys.executable, *map(str, argv)], capture_output=True, text=True, timeout=120, env=env)
    return p.returncode, p.stdout, p.stderr


@pytest.mark.parametrize("which", ["index", "data"])
def test_a_fifo_in_place_of_a_checkpoint_file_is_refused(tmp_path, which):
    prefix = write_ckpt(tmp_path / "model.ckpt")
    victim = prefix + (".index" if which == "index" else ".data-00000-of-00001")
    os.unlink(victim)
    os.mkfifo(victim)
    for argv in (["ls", prefix], ["verify", prefix], ["show", prefix, "w"], ["strip", prefix, tmp_path / "o" / "m"]):
        if which == "data" and argv[0] == "ls":
            continue  # ls reads only the index
        rc, out, err = run_child("-m", "ckptio", *argv)
        if argv[0] == "verify":  # verify reports every problem it finds, then exits 1
            assert rc == 1 and "is a FIFO, not a regular file" in out + err, (argv, out, err)
            continue
        assert rc == 1 and err == f"ckptio: {victim}: is a FIFO, not a regular file\n", (argv, out, err)
    rc, out, _ = run_child("-c", RUN_API, prefix)
    assert rc == 0 and out == f"ReadError: {victim}: is a FIFO, not a regular file\n"
    assert not any((tmp_path / "o").glob("*"))  # no output, no temp file left


def test_fifos_and_devices_are_refused_where_paths_are_resolved(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    rc, out, _ = run_child("-c", RUN_API, fifo)  # the path itself
    assert rc == 0 and out == f"ReadError: {fifo}: is a FIFO, not a regular file\n"
    os.symlink("/dev/zero", tmp_path / "z.index")
    with pytest.raises(ReadError, match="is a character device, not a regular file"):
        ckptio.open(tmp_path / "z")
    # A directory or a pattern holding a FIFO beside one checkpoint: the FIFO is never opened.
    d = tmp_path / "run"
    prefix = write_ckpt(d / "model.ckpt")
    os.mkfifo(d / "zz-pipe")
    rc, out, err = run_child("-m", "ckptio", "ls", d / "*")
    assert rc == 0 and "2 tensors" in out, err
    v1dir = tmp_path / "v1"
    v1dir.mkdir()
    os.mkfifo(v1dir / "pipe")
    rc, out, err = run_child("-m", "ckptio", "ls", v1dir)
    assert rc == 1 and "holds no checkpoint" in err
    assert resolve(d).prefix == prefix


# -- SavedModels ----------------------------------------------------------------------------------


def fake_saved_model(root, graph="saved_model.pb") -> Path:
    """A SavedModel directory as ckptio sees it: a graph file and variables/variables (TF-free)."""
    root = Path(root)
    write_ckpt(root / "variables" / "variables", 3.0)  # written before the graph exists: ckptio refuses after
    (root / graph).write_bytes(b"\x08\x01")
    (root / "assets").mkdir()
    return root


@pytest.mark.parametrize("graph", ["saved_model.pb", "saved_model.cpb"])
def test_an_output_inside_a_saved_model_is_refused_before_anything_is_written(tmp_path, graph):
    sm = fake_saved_model(tmp_path / "sm", graph)
    copy = tmp_path / "copy"
    shutil.copytree(sm, copy)
    before = tree(copy)
    for dst in (
        copy / "variables" / "variables",
        copy / "variables" / "sub" / "model.ckpt",
        copy / "variables" / "v.tar.zst",
    ):
        for argv in (
            ["strip", sm, dst, "--force"],
            ["rewrite", sm, dst, "--force"],  # the identity plan too
            ["rename", sm, dst, "--map", "w=v", "--force"],
            ["strip", sm, dst, "--dry-run"],
        ):
            rc, out, err = cli(argv)
            assert rc == 1 and out == "", (argv, out, err)
            assert f"refusing to write inside the SavedModel {copy}: its {graph} binds every variable" in one_line(err)
            assert "write a plain checkpoint elsewhere" in err and "re-export the SavedModel" in err
        with pytest.raises(UnsupportedError):
            ckptio.rewrite(sm, dst)
    assert tree(copy) == before  # byte-identical, no `checkpoint` state file, no temp or staging files
    assert sorted(os.listdir(copy / "variables")) == ["variables.data-00000-of-00001", "variables.index"]
    # A symlink to variables/ does not hide it.
    os.symlink(copy / "variables", tmp_path / "link")
    rc, _, err = cli(["strip", sm, tmp_path / "link" / "variables", "--force"])
    assert rc == 1 and "refusing to write inside the SavedModel" in err and tree(copy) == before
    # Beside the SavedModel, or in its root, is a plain checkpoint: allowed.
    rc, _, err = cli(["strip", sm, tmp_path / "out" / "model.ckpt", "-q"])
    assert rc == 0, err


def test_saved_model_cpb_is_a_saved_model(tmp_path):
    sm = fake_saved_model(tmp_path / "sm", "saved_model.cpb")
    assert resolve(sm).prefix == str(sm / "variables" / "variables")
    with pytest.raises(WrongFileError, match=rf"SavedModel's graph; pass the SavedModel directory \({sm}\)"):
        ckptio.open(sm / "saved_model.cpb")
    empty = tmp_path / "novars"
    empty.mkdir()
    (empty / "saved_model.cpb").write_bytes(b"")
    with pytest.raises(CheckpointNotFoundError, match=r"this SavedModel \(saved_model.cpb\) holds no variables"):
        ckptio.open(empty)


# -- advice: API parameters in the API, flags in the CLI ----------------------------------------------


def test_errors_name_api_parameters_in_the_api_and_flags_in_the_cli(one, tmp_path):
    _, prefix = one
    out = tmp_path / "out" / "m"
    with pytest.raises(PlanError) as info:
        ckptio.rewrite(prefix, out, [ckptio.Rename((("nothing/", "x/"),))])
    assert str(info.value).endswith("(pass allow_unmatched=True to accept)") and "--" not in str(info.value)
    assert info.value.remedy.param == "allow_unmatched"
    rc, _, err = cli(["rename", prefix, out, "--map", "nothing/=x/"])
    assert rc == 2 and one_line(err).endswith("(pass --allow-unmatched to accept)\n") and "=True" not in err
    write_ckpt(out)
    with pytest.raises(OutputExistsError) as info:
        ckptio.rewrite(prefix, out)
    assert str(info.value).endswith("(pass force=True to replace it)")
    rc, _, err = cli(["strip", prefix, out])
    assert rc == 2 and one_line(err).endswith("(pass --force to replace it)\n")


def test_usage_line_shows_what_is_accepted():
    for command in ("strip", "rename", "rewrite"):
        rc, out, _ = cli([command, "--help"])
        assert rc == 0
        usage = out.split("\n\n")[0]
        assert "[IN OUT ...]" not in usage, usage
        assert f"ckptio {command} [options] IN OUT" in usage
        assert f"ckptio {command} [options] --out-dir DIR IN [IN ...]" in usage
    rc, _, err = cli(["strip", "a", "b", "c", "d"])
    assert rc == 2 and "takes IN OUT" in err
