"""Who owns an output and when it is done (issue 12, items 7 and the exit-code, archive, progress,
async-save, stale-state and batch-row defects).

- Two writers of one output: exactly one wins, the other fails in one line; the result is whole.
- A checkpoint complete on disk is a success: a failed state-file write warns, a late Ctrl-C waits.
- Archive staging left by a killed writer is swept; a missing output directory is created.
- The progress bar counts what is written, so it ends at 100%.
- Batch: unfinished saves are skipped per row, bad inputs fail their own row.
- A state file naming a checkpoint that is gone: the one checkpoint present is used, with a warning.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
from support import read_all, same

import ckptio
from ckptio.bundle.state import read_state
from ckptio.bundle.writer import BundleWriter
from ckptio.cli.main import main
from ckptio.errors import CheckpointNotFoundError, OutputBusyError, StateFileWarning
from ckptio.io import OutputClaim

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write(prefix, tensors: dict, state_file: bool = False) -> str:
    with BundleWriter(str(prefix)) as w:
        for name, value in tensors.items():
            w.add_array(name, np.asarray(value))
        w.finish(state_file=state_file)
    return str(prefix)


def training(seed: int, n: int = 1000) -> dict:
    """A weight with its two Adam slots: a strip keeps one third of the bytes."""
    rng = np.random.default_rng(seed)
    return {
        "w": rng.standard_normal(n).astype("float32"),
        "w/Adam": rng.standard_normal(n).astype("float32"),
        "w/Adam_1": rng.standard_normal(n).astype("float32"),
        "global_step": np.int64(seed),
    }


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def env() -> dict:
    return {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}


def same_as(prefix, tensors: dict) -> bool:
    got = read_all(prefix)
    return got.keys() == tensors.keys() and all(same(got[k], tensors[k]) for k in tensors)


# -- two writers, one output -------------------------------------------------------------------------------

# Both processes import first and start writing at one agreed instant, so their writes overlap.
AT_ONCE = (
    "import sys, time\n"
    "from ckptio.cli.main import main\n"
    "time.sleep(max(0.0, float(sys.argv[1]) - time.time()))\n"
    "sys.exit(main(sys.argv[2:]))\n"
)


def race(pairs, extra=()) -> list[list[tuple[int, str]]]:
    """Start each pair's two rewrites at the same instant; return [(exit code, stderr)] per pair."""
    start = time.time() + 0.6
    procs = [
        [
            subprocess.Popen(
                [sys.executable, "-c", AT_ONCE, str(start), "rewrite", "-q", *extra, src, dst],
                env=env(),
                stderr=subprocess.PIPE,
                text=True,
            )
            for src, dst in pair
        ]
        for pair in pairs
    ]
    return [[(p.wait(timeout=120), p.stderr.read()) for p in pair] for pair in procs]


@pytest.fixture(scope="module")
def two_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("race")
    # Many small tensors: each write takes long enough (a tenth of a second or more) for the two to overlap.
    # (The old code let both writers succeed in every such pair.)
    a = {f"t{i:04d}": np.full(256, i, dtype="float32") for i in range(600)}
    b = {f"t{i:04d}": np.full(256, 10_000 + i, dtype="float32") for i in range(600)}
    return write(root / "a", a), write(root / "b", b), a, b


LOSER = (
    "another process is writing this output right now",
    "a checkpoint already exists here",
    "another writer committed a checkpoint here first",
)


def test_two_writers_without_force_exactly_one_wins(two_inputs, tmp_path):
    pa, pb, a, b = two_inputs
    results = []
    for batch in range(10):  # 50 pairs, 5 at a time
        pairs = [
            [(pa, str(tmp_path / f"p{batch}_{i}" / "m")), (pb, str(tmp_path / f"p{batch}_{i}" / "m"))] for i in range(5)
        ]
        results += list(zip(pairs, race(pairs)))
    for pair, outcome in results:
        codes = [c for c, _ in outcome]
        assert sorted(c == 0 for c in codes) == [False, True], outcome
        ((loser_code, loser_err),) = [o for o in outcome if o[0] != 0]
        assert loser_code in (1, 2) and loser_err.count("\n") == 1 and any(m in loser_err for m in LOSER), loser_err
        winner = a if outcome[0][0] == 0 else b
        dst = pair[0][1]
        assert not ckptio.verify(dst).problems
        assert same_as(dst, winner)  # the winner's data under the winner's index, never mixed
        assert sorted(os.listdir(os.path.dirname(dst))) == ["checkpoint", "m.data-00000-of-00001", "m.index"]


def test_two_writers_with_force_give_one_whole_result(two_inputs, tmp_path):
    pa, pb, a, b = two_inputs
    old = training(1)
    results = []
    for batch in range(4):  # 20 pairs replacing an existing checkpoint
        pairs = []
        for i in range(5):
            dst = str(tmp_path / f"p{batch}_{i}" / "m")
            write(dst, old)
            pairs.append([(pa, dst), (pb, dst)])
        results += list(zip(pairs, race(pairs, extra=("--force",))))
    for pair, outcome in results:
        # --force replaces a finished checkpoint, not one another writer is writing: that one is refused.
        winners = [i for i, (c, _) in enumerate(outcome) if c == 0]
        assert winners, outcome
        for c, err in outcome:
            assert c == 0 or (
                c == 1 and "another process is writing this output right now" in err and err.count("\n") == 1
            ), outcome
        dst = pair[0][1]
        assert not ckptio.verify(dst).problems
        assert same_as(dst, a) or same_as(dst, b)
        if len(winners) == 1:
            assert same_as(dst, a if winners[0] == 0 else b)
        assert sorted(os.listdir(os.path.dirname(dst))) == ["checkpoint", "m.data-00000-of-00001", "m.index"]


def test_a_held_output_is_refused_and_a_dead_writers_claim_is_not(tmp_path, capsys):
    src = write(tmp_path / "in", training(2))
    out = tmp_path / "o" / "m"
    os.makedirs(out.parent)
    claim = OutputClaim(str(out))  # a live writer (this process) holds the output
    try:
        with pytest.raises(OutputBusyError, match="another process is writing this output"):
            ckptio.rewrite(src, out)
        rc, _, err = run(capsys, "rewrite", src, out)
        assert rc == 1 and err.count("\n") == 1 and "another process is writing this output" in err
        assert not os.path.exists(f"{out}.index")
    finally:
        claim.release()
    # A writer killed with -9 leaves its lock file unheld: the next writer takes it over and removes it.
    open(tmp_path / "o" / ".m.ckptio-lock", "w").close()
    open(tmp_path / "o" / ".other.ckptio-lock", "w").close()
    assert run(capsys, "rewrite", src, out)[0] == 0
    assert sorted(os.listdir(tmp_path / "o")) == ["checkpoint", "m.data-00000-of-00001", "m.index"]


# -- complete on disk means success ------------------------------------------------------------------------


def test_state_file_failure_after_commit_warns_and_exits_0(tmp_path, capsys, monkeypatch):
    src = write(tmp_path / "in", training(3))
    import ckptio.bundle.state as state

    def full_disk(directory, st):
        from ckptio.errors import WriteError

        raise WriteError("cannot write: No space left on device", path=os.path.join(directory, "checkpoint"))

    monkeypatch.setattr(state, "write_state", full_disk)
    rc, out, err = run(capsys, "strip", src, tmp_path / "o" / "m")
    assert rc == 0, err
    assert err.count("\n") == 1 and err.startswith("ckptio: warning:") and "No space left" in err
    assert "is complete" in err
    assert not ckptio.verify(str(tmp_path / "o" / "m")).problems
    assert not os.path.exists(tmp_path / "o" / "checkpoint")


# A terminal's Ctrl-C: the default handler, even when the test runner's own SIGINT is ignored.
SIGINT_ON = "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
INTERRUPT_AFTER = (
    "import os, signal, sys\n" + SIGINT_ON + "import ckptio.io as io\n"
    "real = io.AtomicFiles.{method}\n"
    "def hooked(self, *a, **k):\n"
    "    {before}\n"
    "    result = real(self, *a, **k)\n"
    "    {after}\n"
    "    return result\n"
    "io.AtomicFiles.{method} = hooked\n"
    "from ckptio.cli.main import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)
CTRL_C = "os.kill(os.getpid(), signal.SIGINT)"


def test_ctrl_c_just_after_the_rename_is_a_success(tmp_path):
    src = write(tmp_path / "in", training(4))
    code = INTERRUPT_AFTER.format(method="commit", before="pass", after=CTRL_C)
    p = subprocess.run(
        [sys.executable, "-c", code, "strip", src, str(tmp_path / "o" / "m")],
        env=env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    assert same_as(tmp_path / "o" / "m", {k: v for k, v in training(4).items() if "Adam" not in k})


def test_ctrl_c_before_the_commit_still_stops_with_130_and_no_output(tmp_path):
    src = write(tmp_path / "in", training(5))
    # Ctrl-C once the index is written, before anything is renamed into place.
    code = (
        "import os, signal, sys\n" + SIGINT_ON + "from ckptio.bundle.writer import BundleWriter\n"
        "real = BundleWriter._write_index\n"
        "def hooked(self):\n    real(self)\n    " + CTRL_C + "\n"
        "BundleWriter._write_index = hooked\n"
        "from ckptio.cli.main import main\nsys.exit(main(sys.argv[1:]))\n"
    )
    p = subprocess.run(
        [sys.executable, "-c", code, "strip", src, str(tmp_path / "o" / "m")],
        env=env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    # The signal is delivered before the first rename: nothing is committed.
    assert p.returncode == 130, p.stderr
    assert os.listdir(tmp_path / "o") == []


# -- archive outputs ---------------------------------------------------------------------------------------


def test_killed_archive_writer_leaves_staging_that_the_next_run_removes(tmp_path):
    src = write(tmp_path / "in", training(6))
    out_dir = tmp_path / "arch"
    # This writer hangs once its staging directory holds the stripped checkpoint; then it is killed -9.
    code = (
        "import sys, time\nimport ckptio.store.archive_output as a  # the output packs its staged members here\n"
        "def hang(*args, **kw):\n    print('staged', flush=True)\n    time.sleep(600)\n"
        "a.write_archive = hang\nfrom ckptio.cli.main import main\nsys.exit(main(sys.argv[1:]))\n"
    )
    p = subprocess.Popen(
        [sys.executable, "-c", code, "strip", "-q", src, str(out_dir / "m.tar.zst")],
        env=env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert p.stdout.readline() == "staged\n"
    finally:
        p.kill()
        p.wait()
    staged = [n for n in os.listdir(out_dir) if n.startswith(".ckptio-pack-")]
    assert len(staged) == 1
    assert main(["strip", "-q", src, str(out_dir / "n.tar.zst")]) == 0
    assert sorted(os.listdir(out_dir)) == ["n.tar.zst"]
    with ckptio.open(out_dir / "n.tar.zst") as ck:
        assert sorted(ck) == ["global_step", "w"]


def test_archive_output_into_a_missing_directory_creates_it(tmp_path, capsys):
    src = write(tmp_path / "in", training(7))
    rc, _, err = run(capsys, "rewrite", src, tmp_path / "new" / "deeper" / "x.tar.zst")
    assert rc == 0, err
    assert os.listdir(tmp_path / "new" / "deeper") == ["x.tar.zst"]
    with ckptio.open(tmp_path / "new" / "deeper" / "x.tar.zst") as ck:
        assert len(ck) == 4


# -- progress ----------------------------------------------------------------------------------------------


def test_progress_of_a_strip_ends_at_100_percent(tmp_path, capsys, monkeypatch):
    src = write(tmp_path / "in", training(8, n=200_000))
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # the bar draws only on a terminal
    rc, out, err = run(capsys, "strip", src, tmp_path / "o" / "m")
    assert rc == 0
    frames = [f for f in err.split("\r") if f.strip()]
    assert frames and "100.0%" in frames[-1], frames[-3:]
    assert all("%" in f for f in frames)


# -- batch -------------------------------------------------------------------------------------------------


def test_batch_skips_unfinished_saves_and_says_so(tmp_path, capsys):
    run_dir = tmp_path / "run"
    done = write(run_dir / "ckpt-1", training(9))
    # ckpt-2: TF's merge has renamed the data file into place; the .index is not written yet and
    # ckpt-2_temp/ still holds the part's index (an async or sharded save in flight).
    write(run_dir / "ckpt-2_temp" / "part-00000-of-00001", training(10))
    os.rename(
        run_dir / "ckpt-2_temp" / "part-00000-of-00001.data-00000-of-00001", run_dir / "ckpt-2.data-00000-of-00001"
    )
    # ckpt-3: only the parts exist so far.
    write(run_dir / "ckpt-3_temp" / "part-00000-of-00001", training(11))
    rc, out, err = run(
        capsys, "strip", "--out-dir", tmp_path / "out", run_dir / "ckpt-1", run_dir / "ckpt-2", run_dir / "ckpt-3"
    )
    assert rc == 0, out + err
    rows = {line.split()[0]: line.split()[1] for line in out.splitlines()[1:] if line.startswith(str(run_dir))}
    assert rows == {done: "ok", str(run_dir / "ckpt-2"): "unfinished", str(run_dir / "ckpt-3"): "unfinished"}
    assert out.count("save still in progress (ckpt-2_temp present, .index not yet written)") == 1
    assert out.count("save still in progress (ckpt-3_temp present, .index not yet written)") == 1
    assert "2 unfinished saves skipped" in out
    assert sorted(os.listdir(tmp_path / "out")) == ["checkpoint", "ckpt-1.data-00000-of-00001", "ckpt-1.index"]
    assert read_state(str(tmp_path / "out")).paths == ("ckpt-1",)
    # A glob over the directory meets the temp directories themselves: skipped the same way.
    rc, out, _ = run(capsys, "strip", "--out-dir", tmp_path / "out2", run_dir / "ckpt-*")
    rows = {line.split()[0]: line.split()[1] for line in out.splitlines()[1:] if line.startswith(str(run_dir))}
    assert rc == 0 and rows == {
        done: "ok",
        str(run_dir / "ckpt-2_temp"): "unfinished",
        str(run_dir / "ckpt-3_temp"): "unfinished",
    }


def test_batch_short_data_file_under_an_index_is_damage_not_a_save_in_progress(tmp_path, capsys):
    # TF renames whole data files into place before writing the index: a short one is damage.
    run_dir = tmp_path / "run"
    write(run_dir / "ckpt-1", training(24))
    write(run_dir / "ckpt-3", training(11))
    data = run_dir / "ckpt-3.data-00000-of-00001"
    os.truncate(data, os.path.getsize(data) // 2)
    rc, out, _ = run(capsys, "strip", "--out-dir", tmp_path / "out", run_dir / "ckpt-*")
    rows = [line.split()[:2] for line in out.splitlines()[1:] if line.startswith(str(run_dir))]
    assert rc == 1 and rows == [[str(run_dir / "ckpt-1"), "ok"], [str(run_dir / "ckpt-3"), "failed"]]
    assert "lie past the end" in out or "shard ends" in out


def test_batch_unfinished_save_without_its_temp_dir(tmp_path):
    from ckptio.batch import unfinished

    write(tmp_path / "ckpt-4", training(12))
    os.unlink(tmp_path / "ckpt-4.index")  # data renamed into place, index not yet written
    assert "data files present, .index not yet written" in unfinished(str(tmp_path / "ckpt-4"))
    write(tmp_path / "ckpt-5", training(13))
    os.makedirs(tmp_path / "ckpt-5_temp")  # left behind by a finished merge: complete all the same
    assert unfinished(str(tmp_path / "ckpt-5")) is None
    assert "save still in progress (ckpt-6.part-00000-of-00001" in unfinished_with_part(tmp_path)


def unfinished_with_part(tmp_path) -> str:
    """An s3-style save in flight: parts written as <prefix>.part-*, no .index yet."""
    from ckptio.batch import unfinished

    write(tmp_path / "ckpt-6.part-00000-of-00001", training(14))
    return unfinished(str(tmp_path / "ckpt-6"))


def test_batch_bad_inputs_fail_their_own_rows(tmp_path, capsys):
    run_dir = tmp_path / "run"
    write(run_dir / "ckpt-1", training(14))
    write(run_dir / "ckpt-3", training(15))
    (run_dir / "checkpoint").write_text(
        'model_checkpoint_path: "ckpt-3"\n'
        'all_model_checkpoint_paths: "ckpt-1"\n'
        'all_model_checkpoint_paths: "ckpt-2"\n'
        'all_model_checkpoint_paths: "ckpt-3"\n'
    )
    junk = tmp_path / "junk.index"
    junk.write_bytes(b"not a table at all")
    rc, out, err = run(capsys, "strip", "--out-dir", tmp_path / "out", run_dir, junk, tmp_path / "nothing*")
    assert rc == 1
    rows = [line.split()[:2] for line in out.splitlines()[1:] if line.startswith(str(tmp_path))]
    assert rows == [
        [str(run_dir / "ckpt-1"), "ok"],
        [str(run_dir / "ckpt-2"), "failed"],
        [str(run_dir / "ckpt-3"), "ok"],
        [str(tmp_path / "junk"), "failed"],
        [str(tmp_path / "nothing*"), "failed"],
    ]
    assert "listed in" in out and "glob matches nothing" in out
    assert "5 inputs: 2 written, 0 skipped, 3 failed" in out
    assert read_state(str(tmp_path / "out")).paths == ("ckpt-1", "ckpt-3")


def test_batch_resumed_keeps_its_own_state_file_up_to_date(tmp_path, capsys):
    run_dir = tmp_path / "run"
    for i in (1, 2):
        write(run_dir / f"ckpt-{i}", training(20 + i))
    assert run(capsys, "strip", "--out-dir", tmp_path / "out", run_dir / "ckpt-1")[0] == 0
    first = read_state(str(tmp_path / "out"))
    assert run(capsys, "strip", "--out-dir", tmp_path / "out", run_dir / "ckpt-*")[0] == 0
    second = read_state(str(tmp_path / "out"))
    # The file listed only this batch's outputs: it is ckptio's and grows; the first entry keeps its time.
    assert second.paths == ("ckpt-1", "ckpt-2") and second.timestamps[0] == first.timestamps[0]


# -- a state file naming a checkpoint that is gone ---------------------------------------------------------


def test_stale_state_file_with_one_checkpoint_present_uses_it(tmp_path, capsys):
    write(tmp_path / "ckpt-4", training(16))
    (tmp_path / "checkpoint").write_text('model_checkpoint_path: "ckpt-9"\nall_model_checkpoint_paths: "ckpt-9"\n')
    with pytest.warns(StateFileWarning, match="names 'ckpt-9', which does not exist; using ckpt-4"):
        with ckptio.open(tmp_path) as ck:
            assert ck.prefix == str(tmp_path / "ckpt-4")
    rc, out, err = run(capsys, "ls", tmp_path)
    assert rc == 0 and "w/Adam" in out
    assert err.count("\n") == 1 and err.startswith("ckptio: warning:") and "using ckpt-4" in err
    rc, out, err = run(capsys, "strip", tmp_path, tmp_path / "s" / "m")
    assert rc == 0 and "using ckpt-4" in err
    # Batch over the directory: the listed ckpt-9 is gone, so the one present is used.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StateFileWarning)
        rc, out, err = run(capsys, "strip", "--out-dir", tmp_path / "b", tmp_path)
    assert rc == 0 and read_state(str(tmp_path / "b")).paths == ("ckpt-4",)


def test_stale_state_file_with_several_present_is_one_line_listing_them(tmp_path, capsys):
    write(tmp_path / "ckpt-4", training(17))
    write(tmp_path / "ckpt-5", training(18))
    (tmp_path / "checkpoint").write_text('model_checkpoint_path: "ckpt-9"\n')
    with pytest.raises(
        CheckpointNotFoundError, match="names 'ckpt-9', which does not exist; checkpoints present: ckpt-4, ckpt-5"
    ):
        ckptio.open(tmp_path)
    rc, _, err = run(capsys, "ls", tmp_path)
    assert rc == 1 and err.count("\n") == 1 and "ckpt-4, ckpt-5" in err


# -- the state file of a single output ---------------------------------------------------------------------


def test_single_output_state_file_rules(tmp_path, capsys):
    src = write(tmp_path / "in", training(19))
    # No state file: a new one lists just the output, with a timestamp (a manager manages it).
    assert run(capsys, "strip", src, tmp_path / "o" / "a")[0] == 0
    st = read_state(str(tmp_path / "o"))
    assert st.paths == ("a",) and st.latest == "a" and len(st.timestamps) == 1
    # It lists only other outputs of ours? No: only "a". A second output is someone else's entry: left alone.
    before = (tmp_path / "o" / "checkpoint").read_bytes()
    rc, out, _ = run(capsys, "strip", src, tmp_path / "o" / "b")
    assert rc == 0 and "left as it was" in out
    assert (tmp_path / "o" / "checkpoint").read_bytes() == before
    # Replacing the one checkpoint the file lists (--force) keeps it current.
    assert run(capsys, "strip", "--force", src, tmp_path / "o" / "a")[0] == 0
    assert read_state(str(tmp_path / "o")).paths == ("a",)
    # --make-latest adds b after a, keeping a's timestamp.
    assert run(capsys, "strip", "--force", "--make-latest", src, tmp_path / "o" / "b")[0] == 0
    st2 = read_state(str(tmp_path / "o"))
    assert st2.paths == ("a", "b") and st2.latest == "b" and st2.timestamps[0] == read_state_ts(before)


def read_state_ts(text: bytes) -> float:
    from ckptio.bundle.state import parse

    return parse(text).timestamps[0]


def test_batch_into_a_foreign_state_file_only_with_make_latest(tmp_path, capsys):
    src = write(tmp_path / "in" / "ckpt-1", training(30))
    out = tmp_path / "out"
    write(out / "theirs", training(31))
    (out / "checkpoint").write_text(
        'model_checkpoint_path: "theirs"\nall_model_checkpoint_paths: "theirs"\n'
        "all_model_checkpoint_timestamps: 1700000000.5\nlast_preserved_timestamp: 1.5\n"
    )
    before = (out / "checkpoint").read_bytes()
    rc, stdout, _ = run(capsys, "strip", "--out-dir", out, src)
    assert rc == 0 and (out / "checkpoint").read_bytes() == before and "left as it was" in stdout
    rc, _, _ = run(capsys, "strip", "--no-resume", "--make-latest", "--out-dir", out, src)
    st = read_state(str(out))
    assert rc == 0 and st.paths == ("theirs", "ckpt-1") and st.latest == "ckpt-1"
    assert st.timestamps[0] == 1700000000.5 and st.last_preserved == 1.5


# -- bundle/state.py: the state file's encoder and decoder ---------------------------------------------------


def test_state_file_round_trip_and_what_tf_readers_accept(tmp_path):
    from ckptio.bundle.state import State, parse, read_state, render, write_state

    st = State("ckpt-4", ("ckpt-3", "ckpt-4"), (1796177986.2520885, 1e20), 1796177985.1881194)
    text = render(st)
    assert text == (
        b'model_checkpoint_path: "ckpt-4"\nall_model_checkpoint_paths: "ckpt-3"\n'
        b'all_model_checkpoint_paths: "ckpt-4"\nall_model_checkpoint_timestamps: 1796177986.2520885\n'
        b"all_model_checkpoint_timestamps: 1e+20\nlast_preserved_timestamp: 1796177985.1881194\n"
    )
    assert parse(text) == st
    # What TF's reader (text_format.Merge) also accepts: comments, any order, single quotes, lists.
    odd = b"# note\nall_model_checkpoint_paths: ['a', 'b']\nmodel_checkpoint_path: 'b'\n"
    assert parse(odd) == State("b", ("a", "b"), (), 0.0)
    write_state(str(tmp_path), st)
    assert read_state(str(tmp_path)) == st and os.listdir(tmp_path) == ["checkpoint"]  # no temp file left
    assert read_state(str(tmp_path / "nowhere")) is None


def test_state_file_that_is_not_one_is_a_wrong_file_error(tmp_path):
    from ckptio.bundle import state
    from ckptio.errors import WrongFileError

    for text in (b'model_checkpoint_path: "m" garbage {', b"\xff\xfe binary", b"unknown_field: 1\n"):
        with pytest.raises(WrongFileError, match="cannot parse the 'checkpoint' state file"):
            state.parse(text)
    with open(tmp_path / "checkpoint", "wb") as f:  # sparse: no memory is spent on it
        f.truncate(state.MAX_STATE_BYTES + 10)
    with pytest.raises(WrongFileError, match="larger than"):
        state.read_state(str(tmp_path))


def test_make_latest_in_a_saver_file_keeps_its_absolute_style(tmp_path):
    from ckptio.bundle.state import parse, with_latest

    saver = parse(
        f'model_checkpoint_path: "{tmp_path}/m-2"\nall_model_checkpoint_paths: "{tmp_path}/m-1"\n'
        f'all_model_checkpoint_paths: "{tmp_path}/m-2"\n'.encode()
    )
    got = with_latest(saver, str(tmp_path), str(tmp_path / "s"), 5.0)
    # Absolute like the rest, and no timestamp (a manager zips paths with timestamps: all or none).
    assert got.paths == (f"{tmp_path}/m-1", f"{tmp_path}/m-2", f"{tmp_path}/s") and got.timestamps == ()
