"""What a user may pass to ckptio.open, and the one-line errors for what is not a checkpoint.

Accepted: a V2 prefix, its .index, any .data-* shard, a directory with a `checkpoint` state
file (relative path, or a stale absolute path from a moved directory), a directory holding
one checkpoint, a SavedModel directory, a V1 file, a V1 shard file, base name or shard pattern.
Refused with WrongFileError / CheckpointNotFoundError: the text `checkpoint` file, a .meta,
an .h5, a .keras zip, a Git LFS pointer, saved_model.pb, an empty directory, a missing path.
"""

from __future__ import annotations

import os
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

import ckptio
from ckptio.bundle.paths import resolve
from ckptio.bundle.writer import BundleWriter
from ckptio.errors import CheckpointNotFoundError, MissingShardError, WrongFileError

LFS_TEXT = (
    b"version https://git-lfs.github.com/spec/v1\n"
    b"oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\n"
    b"size 12345\n"
)


def write_ckpt(prefix, value=1.0, *, state_file=False) -> str:
    prefix = str(prefix)
    with BundleWriter(prefix) as w:
        w.add_array("w", np.full((2, 2), value, np.float32))
        w.add_array("global_step", np.int64(int(value)))
        w.finish(state_file=state_file)
    return prefix


def value_of(path) -> float:
    with ckptio.open(path) as ck:
        return float(ck["w"].read()[0, 0])


def one_line(exc) -> str:
    msg = str(exc)
    assert "\n" not in msg and msg.strip() == msg
    return msg


@pytest.fixture
def ckpt(tmp_path):
    return write_ckpt(tmp_path / "model.ckpt-5", 5.0)


# --------------------------------------------------------------------------- accepted forms


def test_prefix_index_and_data_paths(ckpt):
    for form in (ckpt, Path(ckpt), ckpt + ".index", ckpt + ".data-00000-of-00001"):
        loc = resolve(form)
        assert (loc.format, loc.prefix) == ("v2", ckpt), form
        assert value_of(form) == 5.0


def test_relative_prefix(ckpt, monkeypatch):
    monkeypatch.chdir(os.path.dirname(ckpt))
    assert value_of("model.ckpt-5") == 5.0
    assert value_of("model.ckpt-5.index") == 5.0
    assert value_of(".") == 5.0  # the only checkpoint in the directory


def test_multi_shard_data_path(tmp_path):
    prefix = str(tmp_path / "sh")
    with BundleWriter(prefix, num_shards=3) as w:
        for i in range(3):
            w.add_array(f"t{i}", np.full(2, i, np.int32), shard=i)
        w.finish(state_file=False)
    for i in range(3):
        assert resolve(f"{prefix}.data-0000{i}-of-00003").prefix == prefix
    with ckptio.open(f"{prefix}.data-00002-of-00003") as ck:
        assert [ck[f"t{i}"].read()[0] for i in range(3)] == [0, 1, 2]


def test_directory_with_state_file_relative(tmp_path):
    write_ckpt(tmp_path / "ckpt-1", 1.0)
    write_ckpt(tmp_path / "ckpt-2", 2.0)
    (tmp_path / "checkpoint").write_text(
        'model_checkpoint_path: "ckpt-1"\nall_model_checkpoint_paths: "ckpt-1"\nall_model_checkpoint_paths: "ckpt-2"\n'
    )
    assert resolve(tmp_path).prefix == str(tmp_path / "ckpt-1")  # what the state file says, not the newest
    assert value_of(tmp_path) == 1.0
    (tmp_path / "checkpoint").write_text('model_checkpoint_path: "ckpt-2"\n')
    assert value_of(tmp_path) == 2.0


def test_state_file_written_by_writer(tmp_path):
    write_ckpt(tmp_path / "a" / "ckpt-7", 7.0, state_file=True)
    text = (tmp_path / "a" / "checkpoint").read_text()
    assert 'model_checkpoint_path: "ckpt-7"' in text  # relative, like TF writes it
    assert value_of(tmp_path / "a") == 7.0


def test_directory_moved_with_stale_absolute_path(tmp_path):
    old = tmp_path / "old_place"
    write_ckpt(old / "ckpt-3", 3.0)
    (old / "checkpoint").write_text(f'model_checkpoint_path: "{old / "ckpt-3"}"\n')
    assert value_of(old) == 3.0
    new = tmp_path / "new_place"
    shutil.move(str(old), str(new))
    assert not old.exists()
    assert resolve(new).prefix == str(new / "ckpt-3")
    assert value_of(new) == 3.0


def test_savedmodel_directory(tmp_path):
    sm = tmp_path / "exported"
    (sm / "variables").mkdir(parents=True)
    write_ckpt(sm / "variables" / "variables", 9.0)  # before saved_model.pb: ckptio refuses to write into a SavedModel
    (sm / "saved_model.pb").write_bytes(b"\x08\x01")
    (sm / "assets").mkdir()
    assert resolve(sm).prefix == str(sm / "variables" / "variables")
    assert value_of(sm) == 9.0
    assert value_of(sm / "variables") == 9.0
    with pytest.raises(WrongFileError) as info:
        ckptio.open(sm / "saved_model.pb")
    msg = one_line(info.value)
    assert "SavedModel directory" in msg and "pass" in msg


def test_v1_file_and_shards(corpus, tmp_path):
    single = corpus / "v1_savenet" / "save_net.ckpt"
    with ckptio.open(single) as ck:
        assert ck.format == "v1" and len(ck) == 7
    shard = corpus / "v1_sessionbundle_sharded" / "export-00000-of-00001"
    base = str(shard)[: -len("-00000-of-00001")]
    failures = {}
    for label, form in {"shard file": shard, "base name": base, "shard pattern": base + "-?????-of-00001"}.items():
        try:
            with ckptio.open(form) as ck:
                assert ck.format == "v1" and list(ck.located.files) == [str(shard)], label
                assert len(ck) == 2
        except Exception as exc:  # noqa: BLE001 - report every form that fails
            failures[label] = f"{type(exc).__name__}: {exc}"
    assert failures == {}


def test_v1_directory_with_state_file(corpus, tmp_path):
    d = tmp_path / "v1"
    shutil.copytree(corpus / "v1_vocal_adam", d)
    assert 'model_checkpoint_path: "model.ckpt"' in (d / "checkpoint").read_text()
    with ckptio.open(d) as ck:
        assert ck.format == "v1" and len(ck) == 39


def test_missing_data_shard_fails_only_on_read(ckpt):
    os.unlink(ckpt + ".data-00000-of-00001")
    with ckptio.open(ckpt) as ck:  # data files are opened lazily (FORMAT §1)
        assert ck["w"].shape == (2, 2)
        with pytest.raises(MissingShardError) as info:
            ck["w"].read()
        assert "data-00000-of-00001" in one_line(info.value)


# --------------------------------------------------------------------------- refused, with a hint


def _refused(path, kind=WrongFileError) -> str:
    with pytest.raises(kind) as info:
        ckptio.open(path)
    msg = one_line(info.value)
    assert str(path) in msg or os.path.basename(str(path)) in msg
    return msg


def test_state_file_itself(ckpt, tmp_path):
    (tmp_path / "checkpoint").write_text('model_checkpoint_path: "model.ckpt-5"\n')
    msg = _refused(tmp_path / "checkpoint")
    assert "'checkpoint' state file" in msg and "pass its directory" in msg and str(tmp_path) in msg


def test_meta_file(ckpt):
    meta = ckpt + ".meta"
    Path(meta).write_bytes(b"\n\x0b\n\x09some graph")
    msg = _refused(meta)
    assert "MetaGraphDef" in msg and f"pass the prefix '{ckpt}'" in msg


def test_h5_file(tmp_path):
    h5 = tmp_path / "weights.h5"
    h5.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(600))
    msg = _refused(h5)
    assert "HDF5" in msg
    assert re.search(r"\bpass\b", msg), f"no hint what to pass instead: {msg}"


def test_keras_zip(tmp_path):
    path = tmp_path / "model.keras"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("config.json", "{}")
        z.writestr("model.weights.h5", b"\x89HDF\r\n\x1a\n")
    msg = _refused(path)
    assert ".keras" in msg and "Keras" in msg
    assert re.search(r"\bpass\b", msg), f"no hint what to pass instead: {msg}"


@pytest.mark.parametrize("form", ["index path", "prefix", "directory"])
def test_git_lfs_pointer(tmp_path, form):
    """A checkpoint committed with Git LFS and cloned without it: every form names the problem."""
    prefix = write_ckpt(tmp_path / "model.ckpt-1")
    Path(prefix + ".index").write_bytes(LFS_TEXT)
    Path(prefix + ".data-00000-of-00001").write_bytes(LFS_TEXT)
    path = {"index path": prefix + ".index", "prefix": prefix, "directory": tmp_path}[form]
    with pytest.raises(WrongFileError) as info:
        ckptio.open(path)
    msg = one_line(info.value)
    assert "Git LFS pointer" in msg and "git lfs pull" in msg


def test_git_lfs_pointer_data_shard(tmp_path):
    """Only the data shard is a pointer: listing works (lazy), reading names the LFS problem."""
    prefix = write_ckpt(tmp_path / "model.ckpt-1")
    Path(prefix + ".data-00000-of-00001").write_bytes(LFS_TEXT)
    with ckptio.open(prefix) as ck:
        assert sorted(ck) == ["global_step", "w"]
        with pytest.raises(WrongFileError) as info:
            ck["w"].read()
    msg = one_line(info.value)
    assert "Git LFS pointer" in msg and "git lfs pull" in msg and "data-00000-of-00001" in msg


def test_plain_text_file(tmp_path):
    p = tmp_path / "notes.txt"
    p.write_text("hello\n" * 20)
    msg = _refused(p)
    assert "not a TensorFlow checkpoint" in msg and "pass" in msg


def test_empty_directory(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    msg = _refused(d, CheckpointNotFoundError)
    assert "no checkpoint" in msg


def test_missing_path(tmp_path):
    msg = _refused(tmp_path / "nothing_here", CheckpointNotFoundError)
    assert "no such checkpoint" in msg
    write_ckpt(tmp_path / "model.ckpt-100")
    msg = _refused(tmp_path / "model.ckpt", CheckpointNotFoundError)
    assert "did you mean" in msg and "model.ckpt-100" in msg
    assert isinstance(CheckpointNotFoundError("x"), FileNotFoundError)


def test_data_shard_without_index(ckpt):
    os.unlink(ckpt + ".index")
    msg = _refused(ckpt + ".data-00000-of-00001", CheckpointNotFoundError)
    assert ".index" in msg and "missing" in msg


def test_directory_with_several_checkpoints_and_no_state(tmp_path):
    write_ckpt(tmp_path / "a-1")
    write_ckpt(tmp_path / "a-2")
    msg = _refused(tmp_path, CheckpointNotFoundError)
    assert "a-1" in msg and "a-2" in msg and "pass one prefix" in msg


def test_state_file_naming_a_missing_checkpoint(tmp_path):
    write_ckpt(tmp_path / "ckpt-1")
    write_ckpt(tmp_path / "ckpt-2")
    (tmp_path / "checkpoint").write_text('model_checkpoint_path: "ckpt-9"\n')
    msg = _refused(tmp_path, CheckpointNotFoundError)  # two present: which one is not ours to guess
    assert "ckpt-9" in msg and "ckpt-1" in msg and "ckpt-2" in msg


def test_garbled_state_file(tmp_path):
    write_ckpt(tmp_path / "ckpt-1")
    (tmp_path / "checkpoint").write_bytes(b"\xff\xfe not a text proto {{{")
    with pytest.raises((WrongFileError, CheckpointNotFoundError)) as info:
        ckptio.open(tmp_path)
    assert "checkpoint" in one_line(info.value)


def test_errors_are_builtin_kinds():
    assert issubclass(WrongFileError, ValueError)
    assert issubclass(CheckpointNotFoundError, FileNotFoundError)
