"""Gaps found in the issue 12 review (reviewer a1-audit12), pure Python.

- A filter written from plain `ls` (a Keras 3 weight's storage key, `optimizer/_trainable_variables/0/...`)
  selects nothing by object path: it is refused, naming the object path to use, instead of a silent no-op.
- Batch mode over a glob such as 'run/*' passes over the state file, .meta and events files beside the
  checkpoints instead of failing rows for them (exit 1 on a run that wrote everything).
"""

from __future__ import annotations

import os

import pytest
from test_objects_semantics import WEIGHTS, K, keras3_functional
from test_objgraph import run

from ckptio import PlanError, Select, StripOptimizer
from ckptio.batch import gather_inputs

KEY0 = "optimizer/_trainable_variables/0" + K  # what plain `ls` shows for the first layer's kernel


@pytest.mark.parametrize(
    "select",
    [
        Select(exclude=("^optimizer/_trainable_variables/0/",)),
        Select(include=("^optimizer/_trainable_variables/0/", "^save_counter/")),
        Select(exclude=("optimizer/_trainable_variables/0/*",), glob=True),
    ],
)
@pytest.mark.parametrize("strip_first", [False, True])
def test_a_pattern_matching_only_a_storage_key_is_refused_naming_the_object_path(select, strip_first):
    steps = (StripOptimizer(), select) if strip_first else (select,)
    with pytest.raises(PlanError) as exc:
        run(keras3_functional(), *steps)
    message = str(exc.value)
    assert "\n" not in message and "matches only storage keys" in message
    assert "ls --objects" in message and repr(WEIGHTS[KEY0]) in message


def test_a_pattern_matching_several_storage_keys_names_an_example():
    with pytest.raises(PlanError, match="the 2 tensors it matches have object paths such as 'model/_operations/1/"):
        run(keras3_functional(), Select(exclude=("_trainable_variables/",)))


@pytest.mark.parametrize(
    "select",
    [
        Select(exclude=("^optimizer/",)),  # matches the optimizer's own state by path: meaningful
        Select(exclude=("^nothing/",)),  # matches neither: as on name-based checkpoints, a no-op
        Select(exclude=("^model/_operations/1/",)),  # the object path itself
    ],
)
def test_patterns_that_match_an_object_path_or_nothing_are_not_refused(select):
    mapping, _ = run(keras3_functional(), select)
    assert mapping


def _touch(path, data=b""):
    with open(path, "wb") as f:
        f.write(data)


def test_a_batch_glob_passes_over_state_meta_and_events_files(tmp_path):
    for step in (1, 2):
        _touch(tmp_path / f"ckpt-{step}.index", b"x")
        _touch(tmp_path / f"ckpt-{step}.data-00000-of-00001")
    _touch(tmp_path / "checkpoint", b'model_checkpoint_path: "ckpt-2"\nall_model_checkpoint_paths: "ckpt-2"\n')
    _touch(tmp_path / "model.ckpt-2.meta", b"\x0a\x00")
    _touch(tmp_path / "events.out.tfevents.1.host", b"\x00")
    inputs = gather_inputs([os.path.join(tmp_path, "*")])
    assert [(os.path.basename(i.path), i.error) for i in inputs] == [("ckpt-1", None), ("ckpt-2", None)]


def test_a_batch_glob_of_only_other_files_fails_its_row(tmp_path):
    _touch(tmp_path / "checkpoint", b'model_checkpoint_path: "ckpt-2"\n')
    inputs = gather_inputs([os.path.join(tmp_path, "check*")])
    assert len(inputs) == 1 and "matches no checkpoint" in inputs[0].error
    # Named explicitly (no glob), the state file is still an input that fails with its own reason.
    assert gather_inputs([os.path.join(tmp_path, "checkpoint")])[0].error is None


@pytest.mark.parametrize("pattern", ["*.index", "model.ckpt-*", "*"])
def test_doctor_of_a_glob_naming_one_checkpoint_checks_its_tensors(tmp_path, pattern, capsys):
    """Issue 12 item 4 says doctor called a quoted glob healthy with 0 tensors; the path-form tests check ls,
    show, verify and strip on one match, and doctor only on two."""
    from test_path_forms import write_ckpt

    from ckptio.cli.main import main

    write_ckpt(tmp_path / "run" / "model.ckpt-5", 5.0, state_file=True)
    (tmp_path / "run" / "model.ckpt-5.meta").write_bytes(b"\x0a\x02ab")
    capsys.readouterr()
    assert main(["doctor", str(tmp_path / "run" / pattern)]) == 0
    out = capsys.readouterr().out
    assert "2 tensor(s)" in out and "intact: w" in out and "intact: global_step" in out


@pytest.mark.parametrize("ci", ["", "true"])
def test_corpus_tests_skip_with_where_it_goes_and_fail_under_ci(monkeypatch, tmp_path, ci):
    """Usability bullet: a fresh clone without ../shared/corpus skips corpus tests saying where the corpus
    goes; with CI set they may not skip."""
    import support

    monkeypatch.setattr(support, "CORPUS", tmp_path / "nowhere")
    monkeypatch.setenv("CI", ci)
    expected = pytest.fail.Exception if ci else pytest.skip.Exception
    with pytest.raises(expected) as info:
        support.require_corpus()
    assert str(tmp_path / "nowhere") in str(info.value) and "MANIFEST.json" in str(info.value)


def _archive(path, members) -> str:
    """A .tar.zst holding members [(name, bytes)] in order, duplicates allowed."""
    import io
    import tarfile

    import zstandard

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for member, blob in members:
            info = tarfile.TarInfo(member)
            info.size = len(blob)
            t.addfile(info, io.BytesIO(blob))
    path.write_bytes(zstandard.ZstdCompressor().compress(buf.getvalue()))
    return str(path)


@pytest.mark.parametrize("argv", [["strip"], ["rewrite", "--cast", "float16"], ["rename", "--map", "w=v"]])
@pytest.mark.parametrize("out", ["o/m", "o/m.tar.zst"])
def test_a_rewrite_from_an_archive_with_a_later_duplicate_member_is_refused(tmp_path, capsys, argv, out):
    """Hostile bullet "refuse duplicate members": a second copy of the data shard after the one ckptio reads
    (what `tar -x` would keep) went unnoticed by strip/rewrite, which wrote the first copy's values, exit 0."""
    import numpy as np
    from test_path_forms import write_ckpt

    from ckptio.cli.main import main

    prefix = write_ckpt(tmp_path / "src" / "ckpt", 5.0)
    index = (tmp_path / "src" / "ckpt.index").read_bytes()
    data = (tmp_path / "src" / "ckpt.data-00000-of-00001").read_bytes()
    shard = "ckpt.data-00000-of-00001"
    bad = _archive(tmp_path / "twice.tar.zst", [("ckpt.index", index), (shard, data), (f"./{shard}", bytes(len(data)))])
    good = _archive(tmp_path / "once.tar.zst", [("ckpt.index", index), (shard, data)])
    command, *flags = argv
    capsys.readouterr()
    assert main([command, bad, str(tmp_path / out), *flags]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "twice" in err and shard in err and "Traceback" not in err
    assert not (tmp_path / "o").exists() or not [f for f in os.listdir(tmp_path / "o") if not f.startswith(".")]
    # The same archive without the duplicate still rewrites (the check reads past the tensors, nothing more).
    assert main([command, good, str(tmp_path / "ok" / "m"), *flags]) == 0
    import ckptio

    with ckptio.open(prefix) as ck:
        assert np.array_equal(ck["w"].read(), np.full((2, 2), 5.0, np.float32))
