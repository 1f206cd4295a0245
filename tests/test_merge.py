"""ckptio.merge on checkpoints written by our own writer: each method against a numpy model, the
stated rules for non-floating tensors and optimizer state, refusals, chunk boundaries and memory.

Real TensorFlow checkpoints and TF's own reading are in tests/workflows/test_merge_workflows.py.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import os
import tracemalloc

import ml_dtypes
import numpy as np
import pytest
from support import read_all

import ckptio
from ckptio.bundle.entry import Entry
from ckptio.bundle.slices import Slice, encode_key
from ckptio.bundle.writer import BundleWriter
from ckptio.cli.main import main
from ckptio.errors import ChecksumError, MismatchError, OutputExistsError, PlanError

mm = importlib.import_module("ckptio.merge_math")
BF16 = ml_dtypes.bfloat16


def write(prefix, tensors: dict, sliced: dict | None = None) -> str:
    """A V2 checkpoint of plain tensors, plus sliced ones {name: (full array, [Slice, ...])}."""
    prefix = str(prefix)
    with BundleWriter(prefix) as w:
        for name, a in tensors.items():
            w.add_array(name, a)
        for name, (full, slices) in (sliced or {}).items():
            info = ckptio.bundle.dtypes.from_numpy(full.dtype)
            w.add_entry(name, Entry(info.enum, full.shape, slices=tuple(slices)))
            for s in slices:
                w.add_array(encode_key(name, s), full[tuple(slice(a, b) for a, b in s.bounds(full.shape))])
        w.finish(state_file=False)
    return prefix


def model(seed: int, step: int, shape=(6, 5)) -> dict:
    """One 'training run' checkpoint: weights in three float dtypes, Adam slots, counters and a string."""
    rng = np.random.default_rng(seed)
    return {
        "dense/kernel": rng.standard_normal(shape).astype(np.float32),
        "dense/bias": rng.standard_normal(shape[-1]).astype(BF16),
        "dense/scale": rng.standard_normal(3).astype(np.float16),
        "dense/kernel/Adam": rng.standard_normal(shape).astype(np.float32),
        "dense/kernel/Adam_1": np.abs(rng.standard_normal(shape)).astype(np.float32),
        "beta1_power": np.array(0.9**step, np.float32),
        "global_step": np.array(step, np.int64),
        "counts": np.arange(4, dtype=np.int32) + step,
        "vocab": np.array([b"a%d" % step, b"b"], dtype=object),
    }


WEIGHTS = ("dense/kernel", "dense/bias", "dense/scale")


@pytest.fixture
def run(tmp_path):
    """Three checkpoints of one run (steps 100, 200, 300) and their values."""
    values = [model(i, 100 * (i + 1)) for i in range(3)]
    prefixes = [write(tmp_path / "run" / f"model.ckpt-{100 * (i + 1)}", v) for i, v in enumerate(values)]
    return prefixes, values


def f64(values, name):
    return [v[name].astype(np.float64) for v in values]


def within_f32_rounding(got, want64, dtype):
    """got (in dtype) is the float64 reference rounded to dtype, give or take one unit in the last place."""
    want = want64.astype(dtype)
    assert got.dtype == want.dtype and got.shape == want.shape
    ulp = np.spacing(np.abs(want.astype(np.float32)).astype(dtype)).astype(np.float64)
    diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
    assert (diff <= ulp).all(), (got, want)


# -- methods -------------------------------------------------------------------------------------


def test_mean_is_numpys_float64_mean_cast_back_and_keeps_the_last_inputs_counters(run, tmp_path):
    prefixes, values = run
    report = ckptio.merge(prefixes, tmp_path / "out" / "avg")
    got = read_all(tmp_path / "out" / "avg")
    for name in WEIGHTS:
        want = np.mean(np.stack(f64(values, name)), axis=0).astype(values[0][name].dtype)
        assert got[name].dtype == want.dtype and got[name].tobytes() == want.tobytes(), name
    assert got["global_step"] == 300 and list(got["counts"]) == [300, 301, 302, 303]
    assert list(got["vocab"]) == [b"a300", b"b"]
    assert not any("Adam" in n or "power" in n for n in got), sorted(got)
    assert sorted(report.dropped) == ["beta1_power", "dense/kernel/Adam", "dense/kernel/Adam_1"]
    assert sorted(report.combined) == sorted(WEIGHTS) and report.copied_from == prefixes[-1]
    assert ckptio.verify(ckptio.open(tmp_path / "out" / "avg")).ok


def test_weighted_normalises_and_says_so(run, tmp_path):
    prefixes, values = run
    report = ckptio.merge(prefixes, tmp_path / "w", method="weighted", weights=[1, 2, 5])
    assert report.weights == [1 / 8, 2 / 8, 5 / 8]
    assert any("normalised" in n for n in report.notes)
    got = read_all(tmp_path / "w")
    for name in WEIGHTS:
        xs = f64(values, name)
        want = xs[0] * (1 / 8) + xs[1] * (2 / 8) + xs[2] * (5 / 8)
        within_f32_rounding(got[name], want, values[0][name].dtype)


def test_ema_runs_in_step_order_whatever_the_order_given(run, tmp_path):
    prefixes, values = run
    d = 0.7
    report = ckptio.merge([prefixes[2], prefixes[0], prefixes[1]], tmp_path / "e", method="ema", decay=d)
    assert report.inputs == prefixes and report.order == "by global_step"
    assert report.weights == pytest.approx([d * d, (1 - d) * d, 1 - d])
    got = read_all(tmp_path / "e")
    for name in WEIGHTS:
        m = None
        for x in f64(values, name):  # the documented recurrence
            m = x if m is None else d * m + (1 - d) * x
        within_f32_rounding(got[name], m, values[0][name].dtype)
    assert got["global_step"] == 300  # the newest, not the last given


def test_ema_without_counters_orders_by_prefix_number(tmp_path):
    vals = [{"w": np.full(3, float(i), np.float32)} for i in range(3)]
    prefixes = [write(tmp_path / f"ckpt-{n}", v) for n, v in zip((30, 4, 200), vals)]
    report = ckptio.merge(prefixes, tmp_path / "e", method="ema", decay=0.5)
    assert report.inputs == [prefixes[1], prefixes[0], prefixes[2]]
    # m = x(4)=1; 0.5*1 + 0.5*x(30)=0 -> 0.5; 0.5*0.5 + 0.5*x(200)=2 -> 1.25
    assert read_all(tmp_path / "e")["w"].tolist() == [1.25] * 3


def test_task_arithmetic_adds_weighted_task_vectors_to_the_base(run, tmp_path):
    prefixes, values = run
    base = model(9, 50)
    base_prefix = write(tmp_path / "base" / "model.ckpt", base)
    report = ckptio.merge(
        prefixes[1:], tmp_path / "t", method="task-arithmetic", base=base_prefix, weights=[0.5, -0.25]
    )
    got = read_all(tmp_path / "t")
    for name in WEIGHTS:
        b = base[name].astype(np.float64)
        xs = f64(values[1:], name)
        want = b + 0.5 * (xs[0] - b) + -0.25 * (xs[1] - b)
        within_f32_rounding(got[name], want, base[name].dtype)
    assert got["global_step"] == 50 and list(got["vocab"]) == [b"a50", b"b"]  # from the base
    assert report.copied_from == base_prefix


def slerp_reference(a, b, t):
    a, b = a.astype(np.float64).reshape(-1), b.astype(np.float64).reshape(-1)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    cos = np.dot(a, b) / (na * nb)
    theta = np.arccos(cos)
    return np.sin((1 - t) * theta) / np.sin(theta) * a + np.sin(t * theta) / np.sin(theta) * b


def test_slerp_matches_numpy_and_spans_chunks(run, tmp_path, monkeypatch):
    prefixes, values = run
    monkeypatch.setattr(mm, "CHUNK_ELEMENTS", 7)  # the kernel's 30 elements in 5 chunks: norms over all of them
    report = ckptio.merge(prefixes[:2], tmp_path / "s", method="slerp", weights=[0.3])
    got = read_all(tmp_path / "s")
    for name in WEIGHTS:
        want = slerp_reference(values[0][name], values[1][name], 0.3).reshape(values[0][name].shape)
        within_f32_rounding(got[name], want, values[0][name].dtype)
    assert report.linear == []


def test_slerp_of_parallel_or_zero_tensors_interpolates_linearly(tmp_path):
    a = write(
        tmp_path / "a",
        {
            "p": np.array([1.0, 2.0, 3.0], np.float32),
            "z": np.zeros(2, np.float32),
            "o": np.array([1.0, 0.0], np.float32),
        },
    )
    b = write(
        tmp_path / "b",
        {
            "p": np.array([2.0, 4.0, 6.0], np.float32),
            "z": np.ones(2, np.float32),
            "o": np.array([-3.0, 0.0], np.float32),
        },
    )
    report = ckptio.merge([a, b], tmp_path / "s", method="slerp", weights=[0.25])
    got = read_all(tmp_path / "s")
    assert got["p"].tolist() == [1.25, 2.5, 3.75]
    assert got["z"].tolist() == [0.25, 0.25]
    assert got["o"].tolist() == [0.0, 0.0]  # opposite: 0.75*1 + 0.25*(-3)
    assert sorted(report.linear) == ["o", "p", "z"]


def test_slerp_without_an_angle_interpolates_linearly():
    assert mm.slerp_coefficients(float("nan"), 1.0, 1.0, 0.25) == (0.75, 0.25, True)
    assert mm.slerp_coefficients(1.0, float("inf"), 2.0, 0.25) == (0.75, 0.25, True)  # a norm overflowed
    assert mm.slerp_coefficients(float("inf"), float("inf"), float("inf"), 0.5) == (0.5, 0.5, True)


def test_slerp_of_orthogonal_unit_vectors_stays_on_the_circle(tmp_path):
    a = write(tmp_path / "a", {"v": np.array([1.0, 0.0], np.float64)})
    b = write(tmp_path / "b", {"v": np.array([0.0, 1.0], np.float64)})
    ckptio.merge([a, b], tmp_path / "s", method="slerp", weights=[1 / 3])
    got = read_all(tmp_path / "s")["v"]
    assert got == pytest.approx([math.cos(math.pi / 6), math.sin(math.pi / 6)], abs=1e-15)


# -- chunking, slicing, memory -----------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 3, 29, 30, 1 << 20])
def test_mean_is_exact_at_any_chunk_size(run, tmp_path, monkeypatch, chunk):
    prefixes, values = run
    monkeypatch.setattr(mm, "CHUNK_ELEMENTS", chunk)
    ckptio.merge(prefixes, tmp_path / "avg")
    want = np.mean(np.stack(f64(values, "dense/kernel")), axis=0).astype(np.float32)
    assert read_all(tmp_path / "avg")["dense/kernel"].tobytes() == want.tobytes()


def test_sliced_tensors_are_combined_slice_by_slice(tmp_path, monkeypatch):
    monkeypatch.setattr(mm, "CHUNK_ELEMENTS", 4)
    slices = [Slice(((0, 2), (0, None))), Slice(((2, 3), (0, None)))]  # (start, length)
    fulls = [np.random.default_rng(i).standard_normal((5, 3)).astype(np.float32) for i in range(2)]
    a = write(tmp_path / "a", {}, {"emb": (fulls[0], slices)})
    b = write(tmp_path / "b", {}, {"emb": (fulls[1], slices)})
    ckptio.merge([a, b], tmp_path / "m")
    with ckptio.open(tmp_path / "m") as c:
        assert c["emb"].slices == tuple(slices)
        assert c["emb"].read().tobytes() == ((fulls[0].astype(np.float64) + fulls[1]) / 2).astype(np.float32).tobytes()
    ckptio.merge([a, b], tmp_path / "s", method="slerp", weights=[0.5])  # norms over both slices
    want = slerp_reference(fulls[0], fulls[1], 0.5).reshape(5, 3)
    within_f32_rounding(read_all(tmp_path / "s")["emb"], want, np.float32)
    c = write(tmp_path / "c", {}, {"emb": (fulls[1], [Slice(((0, 3), (0, None))), Slice(((3, 2), (0, None)))])})
    with pytest.raises(MismatchError, match="different slices"):
        ckptio.merge([a, c], tmp_path / "x")


def test_memory_holds_a_chunk_per_input_not_a_tensor(tmp_path, monkeypatch):
    monkeypatch.setattr(mm, "CHUNK_ELEMENTS", 1 << 16)  # 512 KiB as float64
    big = 4 << 20  # elements: 16 MiB of float32 per input, 32 MiB as float64
    prefixes = [write(tmp_path / f"m{i}", {"w": np.full(big, i, np.float32)}) for i in range(3)]
    tracemalloc.start()
    try:
        ckptio.merge(prefixes, tmp_path / "avg")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, peak  # whole tensors would need 3 x 16 MiB read plus 32 MiB summed
    assert (read_all(tmp_path / "avg")["w"] == 1.0).all()


def test_a_corrupt_input_is_caught_even_when_it_is_not_the_first(run, tmp_path, monkeypatch):
    prefixes, _ = run
    monkeypatch.setattr(mm, "CHUNK_ELEMENTS", 4)
    with ckptio.open(prefixes[2]) as c:
        e = c.entries()["dense/kernel"]
        data = c._reader.shard_path(e.shard_id)
    with open(data, "r+b") as f:
        f.seek(e.offset + e.size - 1)  # the last chunk: its crc is checked only when the stream is drained
        byte = f.read(1)
        f.seek(e.offset + e.size - 1)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(ChecksumError):
        ckptio.merge(prefixes, tmp_path / "out" / "avg")
    assert not os.path.exists(tmp_path / "out" / "avg.index")


# -- rules: optimizer, include/exclude, --last, outputs -------------------------------------------------


def test_keep_optimizer_combines_slots_and_copies_counters(run, tmp_path):
    prefixes, values = run
    report = ckptio.merge(prefixes, tmp_path / "k", keep_optimizer=True)
    got = read_all(tmp_path / "k")
    want = np.mean(np.stack(f64(values, "dense/kernel/Adam_1")), axis=0).astype(np.float32)
    assert got["dense/kernel/Adam_1"].tobytes() == want.tobytes()
    assert "beta1_power" in report.combined and report.dropped == []
    assert got["global_step"] == 300


def test_include_exclude_choose_what_is_merged_and_compared(run, tmp_path):
    prefixes, values = run
    other = dict(values[1], extra=np.zeros(2, np.float32))
    del other["dense/scale"]
    odd = write(tmp_path / "odd", other)
    with pytest.raises(MismatchError):
        ckptio.merge([prefixes[0], odd], tmp_path / "x")
    report = ckptio.merge([prefixes[0], odd], tmp_path / "y", exclude=["scale", "extra"])
    assert "dense/scale" not in read_all(tmp_path / "y") and "dense/kernel" in report.combined
    report = ckptio.merge(prefixes, tmp_path / "z", include=["^dense/kernel$", "global_step"])
    assert sorted(read_all(tmp_path / "z")) == ["dense/kernel", "global_step"]


def test_last_takes_the_newest_the_state_file_lists(run, tmp_path):
    prefixes, values = run
    d = os.path.dirname(prefixes[0])
    names = [os.path.basename(p) for p in prefixes]
    with open(os.path.join(d, "checkpoint"), "w") as f:
        f.write(
            f'model_checkpoint_path: "{names[2]}"\n' + "".join(f'all_model_checkpoint_paths: "{n}"\n' for n in names)
        )
    report = ckptio.merge([d], tmp_path / "l", last=2)
    assert report.inputs == prefixes[1:]
    want = np.mean(np.stack(f64(values[1:], "dense/kernel")), axis=0).astype(np.float32)
    assert read_all(tmp_path / "l")["dense/kernel"].tobytes() == want.tobytes()
    with pytest.raises(PlanError, match="lists 3"):
        ckptio.merge([d], tmp_path / "l4", last=4)
    state = open(os.path.join(d, "checkpoint")).read()
    ckptio.merge([d], os.path.join(d, "avg"), last=3)  # written into the run's own directory
    assert open(os.path.join(d, "checkpoint")).read() == state  # its state file is left alone


def test_dry_run_reads_no_tensor_and_writes_nothing(run, tmp_path):
    prefixes, _ = run
    report = ckptio.merge(prefixes, tmp_path / "d", dry_run=True)
    assert report.dry_run and sorted(report.combined) == sorted(WEIGHTS)
    assert report.tensors["dense/kernel"] == "float32[6, 5]"
    assert not os.path.exists(tmp_path / "d.index")
    listing = 0
    for p in prefixes:
        with ckptio.open(p) as c:
            c.entries()
            listing += c.bytes_read
    assert report.bytes_read == listing  # what listing the indexes reads: no tensor bytes


def test_output_may_not_be_an_input_and_is_not_replaced_without_force(run, tmp_path):
    prefixes, _ = run
    with pytest.raises(OutputExistsError):
        ckptio.merge(prefixes, prefixes[0], force=True)
    ckptio.merge(prefixes, tmp_path / "o")
    with pytest.raises(OutputExistsError):
        ckptio.merge(prefixes, tmp_path / "o")
    ckptio.merge(prefixes, tmp_path / "o", force=True)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(method="median"), "method must be"),
        (dict(method="mean", weights=[1, 2, 3]), "mean takes no weights"),
        (dict(method="weighted"), "needs --weights"),
        (dict(method="weighted", weights=[1, 2]), "2 weights for 3 inputs"),
        (dict(method="weighted", weights=[1, -1, 1]), "weights >= 0"),
        (dict(method="ema"), "needs --decay"),
        (dict(method="ema", decay=1.0), "needs --decay"),
        (dict(method="slerp", weights=[0.5]), "exactly two inputs"),
        (dict(method="task-arithmetic"), "needs --base"),
        (dict(method="mean", base="x"), "--base is for"),
        (dict(method="mean", decay=0.5), "--decay is for"),
    ],
)
def test_bad_options_are_refused_before_anything_is_read(run, tmp_path, kwargs, message):
    prefixes, _ = run
    with pytest.raises(PlanError, match=message):
        ckptio.merge(prefixes, tmp_path / "bad", **kwargs)


# -- mismatches ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, expect",
    [
        (lambda v: v.pop("dense/bias"), "'dense/bias' is in {a} but not in {b}"),
        (
            lambda v: v.update({"dense/kernel": np.zeros((6, 4), np.float32)}),
            "float32[6, 5] in {a} but float32[6, 4] in {b}",
        ),
        (lambda v: v.update({"dense/scale": np.zeros(3, np.float32)}), "float16[3] in {a} but float32[3] in {b}"),
    ],
)
def test_the_first_disagreement_names_the_tensor_and_both_files(run, tmp_path, change, expect):
    prefixes, values = run
    other = dict(values[1])
    change(other)
    b = write(tmp_path / "other" / "model.ckpt", other)
    with pytest.raises(MismatchError) as info:
        ckptio.merge([prefixes[0], b], tmp_path / "x")
    text = str(info.value)
    assert expect.format(a=prefixes[0], b=b) in text and f"ckptio diff {prefixes[0]} {b}" in text


# -- CLI ---------------------------------------------------------------------------------------------


def test_cli_merges_and_reports_json(run, tmp_path, capsys):
    prefixes, values = run
    out = str(tmp_path / "cli" / "avg")
    assert main(["merge", *prefixes, out, "--method", "weighted", "--weights", "1,1,2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["method"] == "weighted" and report["weights"] == [0.25, 0.25, 0.5]
    assert report["dst"] == out and read_all(out)["global_step"] == 300


def test_cli_dry_run_says_what_is_combined_and_how(run, tmp_path, capsys):
    prefixes, _ = run
    assert main(["merge", *prefixes, str(tmp_path / "d"), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "combine dense/kernel  float32[6, 5]  (mean, in float64)" in text
    assert f"copy    global_step  int64[]  (from {prefixes[-1]})" in text
    assert "drop    dense/kernel/Adam" in text and "would write" in text
    assert not os.path.exists(str(tmp_path / "d") + ".index")


def test_cli_mismatch_exits_1_naming_tensor_and_files(run, tmp_path, capsys):
    prefixes, values = run
    other = dict(values[1])
    del other["dense/kernel"]
    b = write(tmp_path / "b", other)
    assert main(["merge", prefixes[0], b, str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "dense/kernel" in err and prefixes[0] in err and b in err
    assert "ckptio diff" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["merge", "only-out"],
        ["merge", "a", "b", "out", "--last", "2"],
        ["merge", "a", "b", "out", "--weights", "1,x"],
    ],
)
def test_cli_usage_errors_exit_2(argv, capsys):
    assert main(argv) == 2
    assert "error" in capsys.readouterr().err


def test_cli_bad_method_options_exit_2(run, tmp_path, capsys):
    prefixes, _ = run
    assert main(["merge", *prefixes, str(tmp_path / "x"), "--method", "slerp", "--weights", "0.5"]) == 2
    assert "exactly two inputs" in capsys.readouterr().err


def test_ckptio_merge_stays_the_function_once_its_module_is_imported():
    import subprocess
    import sys

    code = (
        "import ckptio, ckptio.merge, ckptio.merge_math; from ckptio.merge import MergeReport; "
        "import types; print(isinstance(ckptio.merge, types.FunctionType), 'numpy' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", "import sys; " + code],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    )
    assert out.stdout.split() == ["True", "True"], out.stderr
    light = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, ckptio; ckptio.__all__; print(any(m.startswith('ckptio.merge') for m in sys.modules))",
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    )
    assert light.stdout.split() == ["False"], light.stderr  # `import ckptio` does not load merge


def test_fast_bfloat16_rounding_is_ml_dtypes_rounding():
    """to_bfloat16 rounds float64 once, like astype(bfloat16), including the double-rounding traps."""
    rng = np.random.default_rng(7)
    with np.errstate(all="ignore"):  # some of the bit patterns are NaNs
        grid = (rng.integers(0, 1 << 16, 1 << 16).astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    cases = np.concatenate(
        [
            rng.standard_normal(1 << 16),
            rng.standard_normal(1 << 12) * 1e-39,
            rng.standard_normal(1 << 12) * 3e38,
            grid * (1 + 2.0**-8),
            grid * (1 + 2.0**-8 * (1 + 2.0**-40)),
            grid * (1 - 2.0**-9 * (1 - 2.0**-40)),
            rng.integers(0, 1 << 64, 1 << 14, dtype=np.uint64).view(np.float64),  # every exponent, NaNs, infs
            [0.0, -0.0, np.inf, -np.inf, np.nan, 1 + 2.0**-8 + 2.0**-30, 3.4e38, -3.39e38, 5e-324, 2.0**-134 * 1.5],
        ]
    )
    out = np.empty(cases.size, BF16)
    with np.errstate(all="ignore"):
        mm.to_bfloat16(cases, out)
        want = cases.astype(BF16)
    nan = np.isnan(cases)
    assert (np.isnan(out.astype(np.float32)) == nan).all()
    assert (out.view(np.uint16)[~nan] == want.view(np.uint16)[~nan]).all()
    # the trap itself: through float32 this would round to 1.0
    assert mm.to_bfloat16(np.array([1 + 2.0**-8 + 2.0**-30]), out[:1]) is None and out[0] == BF16(1.0078125)


def test_iter_raw_into_alternating_buffers_gives_the_same_bytes_and_checks_crc(run):
    prefixes, values = run
    with ckptio.open(prefixes[0]) as c:
        e = c.entries()["dense/kernel"]
        bufs = [memoryview(bytearray(16)), memoryview(bytearray(16))]
        pieces = [bytes(d) for d in c._reader.iter_raw("dense/kernel", e, 16, buffers=bufs)]
        assert b"".join(pieces) == values[0]["dense/kernel"].tobytes() and len(pieces) == 8
        with pytest.raises(ChecksumError):
            list(c._reader.iter_raw("dense/kernel", dataclasses.replace(e, crc32c=e.crc32c ^ 1), 16, buffers=bufs))


def test_inputs_by_any_path_form_including_an_archive(run, tmp_path, monkeypatch):
    prefixes, values = run
    monkeypatch.setattr(mm, "CHUNK_ELEMENTS", 4)  # the archive streams forward through several chunks
    archive = str(tmp_path / "first.tar.zst")
    assert main(["pack", prefixes[0], archive, "-q"]) == 0
    d = os.path.dirname(prefixes[2])
    with open(os.path.join(d, "checkpoint"), "w") as f:
        f.write(f'model_checkpoint_path: "{os.path.basename(prefixes[2])}"\n')
    report = ckptio.merge([archive, prefixes[1] + ".index", d], tmp_path / "m")  # a directory: its latest
    assert report.inputs[1:] == prefixes[1:]
    want = np.mean(np.stack(f64(values, "dense/kernel")), axis=0).astype(np.float32)
    assert read_all(tmp_path / "m")["dense/kernel"].tobytes() == want.tobytes()
