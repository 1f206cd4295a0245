"""Audit of fit/diff/merge (issues 14 and 16): the gaps the checklists found, each with a regression test."""

from __future__ import annotations

import os

import numpy as np
import pytest
from test_diff import key, write_named, write_object_based

import ckptio
from ckptio.cli.main import main
from ckptio.errors import MismatchError

ONES, TWOS = np.ones(2, np.float32), np.full(2, 2, np.float32)


# -- fit: a template tensor matched by two sources (a --map rule's and an implicit match) -------------


def test_fit_map_target_also_matched_by_key_is_an_error_naming_both(tmp_path, capsys):
    """`--map a/=b/` gives b/w to a/w; the source's own b/w matches b/w by key and was dropped silently."""
    src = write_named(tmp_path / "s/ckpt", {"a/w": ONES, "b/w": TWOS})
    tpl = write_named(tmp_path / "t/ckpt", {"b/w": np.zeros(2, np.float32)})
    out = tmp_path / "o/ckpt"
    with pytest.raises(
        MismatchError,
        match=r"'b/w' is matched by two source tensors: 'a/w' \(--map\) and 'b/w' "
        r"\(key\)",
    ):
        ckptio.fit(src, tpl, out, rules=["a/=b/"])
    code = main(["fit", src, "--template", tpl, str(out), "--map", "a/=b/"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "'a/w'" in err and "'b/w'" in err, err
    assert not os.path.exists(f"{out}.index")
    code = main(["fit", src, "--template", tpl, str(out), "--map", "a/=b/", "--dry-run"])
    assert code == 1 and "two source tensors" in capsys.readouterr().err


def test_fit_map_target_also_matched_by_object_path_is_an_error(tmp_path):
    """Object-based: the renamed encoder claims the backbone's kernel; the source's own backbone shares its path."""
    k = np.ones((2, 2), np.float32)
    src = write_object_based(tmp_path / "s/ckpt", {"model/encoder/_kernel": k, "model/backbone/_kernel": k * 2})
    tpl = write_object_based(tmp_path / "t/ckpt", {"model/backbone/_kernel": k * 0})
    with pytest.raises(
        MismatchError,
        match=r"'model/encoder/_kernel/.ATTRIBUTES/VARIABLE_VALUE' \(--map\) and "
        r"'model/backbone/_kernel/.ATTRIBUTES/VARIABLE_VALUE' \(path\)",
    ):
        ckptio.fit(src, tpl, tmp_path / "o/ckpt", rules=["model/encoder/=model/backbone/"])


def test_fit_second_source_consumed_by_a_rule_of_its_own_is_fine(tmp_path):
    """A swap: both sources are claimed by explicit rules, so neither shadows the other."""
    src = write_named(tmp_path / "s/ckpt", {"a/w": ONES, "b/w": TWOS})
    tpl = write_named(tmp_path / "t/ckpt", {"a/w": np.zeros(2, np.float32), "b/w": np.zeros(2, np.float32)})
    report = ckptio.fit(src, tpl, tmp_path / "o/ckpt", rules=["a/=b/", "b/=a/"])
    assert sorted((m["src"], m["dst"], m["how"]) for m in report.matched) == [
        ("a/w", "b/w", "map"),
        ("b/w", "a/w", "map"),
    ]
    with ckptio.open(tmp_path / "o/ckpt") as o:
        np.testing.assert_array_equal(o["b/w"].read(), ONES)
        np.testing.assert_array_equal(o["a/w"].read(), TWOS)


def test_diff_still_reports_the_shadowed_tensor_as_only_in_a(tmp_path):
    """diff is a report, not a writer: the second source stays visible as only in A (no refusal)."""
    a = write_named(tmp_path / "a/ckpt", {"a/w": ONES, "b/w": TWOS})
    b = write_named(tmp_path / "b/ckpt", {"b/w": ONES})
    r = ckptio.diff(a, b, rules=ckptio.Rename((("a/", "b/"),)))
    assert r.only_a == ["b/w"] and [(p[0], p[1]) for p in r.pairs] == [("a/w", "b/w")]


# -- merge --last N DIR: a listed checkpoint that was deleted --------------------------------------


def _run_dir(tmp_path, names, listed):
    """A directory holding checkpoints `names` (w = its number) whose state file lists `listed`, oldest first."""
    from test_merge import write

    d = tmp_path / "run"
    for n in names:
        write(d / n, {"w": np.full(2, float(n.rsplit("-", 1)[1]), np.float32), "global_step": np.int64(0)})
    (d / "checkpoint").write_text(
        f'model_checkpoint_path: "{listed[-1]}"\n' + "".join(f'all_model_checkpoint_paths: "{n}"\n' for n in listed)
    )
    return str(d)


def test_merge_last_refuses_a_listed_checkpoint_that_was_deleted(tmp_path, capsys):
    """ckpt-5 is listed but gone: --last 3 must not quietly average ckpt-3, ckpt-4 and ckpt-6 instead."""
    d = _run_dir(tmp_path, ["ckpt-3", "ckpt-4", "ckpt-6"], ["ckpt-3", "ckpt-4", "ckpt-5", "ckpt-6"])
    out = tmp_path / "avg"
    with pytest.raises(ckptio.CkptioError, match="lists ckpt-5, which does not exist"):
        ckptio.merge([d], out, last=3)
    assert main(["merge", "--last", "3", d, str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ckpt-5" in err, err
    assert not os.path.exists(f"{out}.index")
    # A deleted checkpoint older than the window does not matter.
    d2 = _run_dir(tmp_path / "b", ["ckpt-3", "ckpt-4"], ["ckpt-2", "ckpt-3", "ckpt-4"])
    report = ckptio.merge([d2], tmp_path / "avg2", last=2)
    assert [os.path.basename(p) for p in report.inputs] == ["ckpt-3", "ckpt-4"]
    with ckptio.open(tmp_path / "avg2") as o:
        assert o["w"].read().tolist() == [3.5, 3.5]


# -- diff --values: a corrupt second input is unreadable (exit 2), never "changed" (exit 1) -----------


def _flip_byte_of(prefix, name):
    """Flip one data byte of tensor `name` (its stored checksum no longer matches)."""
    with ckptio.open(prefix) as c:
        e = c.entries()[name]
    data = f"{prefix}.data-00000-of-00001"
    raw = bytearray(open(data, "rb").read())
    raw[e.offset + 1] ^= 0xFF
    open(data, "wb").write(bytes(raw))


@pytest.mark.parametrize("chunk", [1 << 20, 64])  # the tensor in one chunk, or in many
def test_diff_values_checks_the_checksum_of_both_inputs(tmp_path, capsys, monkeypatch, chunk):
    import importlib

    monkeypatch.setattr(importlib.import_module("ckptio.diff"), "CHUNK_BYTES", chunk)
    w = np.arange(300, dtype=np.float32)
    a = write_named(tmp_path / "a/ckpt", {"w": w})
    b = write_named(tmp_path / "b/ckpt", {"w": w})
    _flip_byte_of(b, "w")
    for first, second in ((a, b), (b, a)):
        with pytest.raises(ckptio.errors.ChecksumError):
            ckptio.diff(first, second, values=True)
        assert main(["diff", first, second, "--values"]) == 2
        err = capsys.readouterr().err
        assert "checksum" in err and err.count("\n") == 1, err


# -- diff --json: the "changed" records exactly as the issue's schema ---------------------------------


def test_diff_values_json_is_exactly_the_issue_schema(tmp_path, capsys):
    x = np.array([1.0, 2.0, 4.0], np.float32)
    a = write_named(tmp_path / "a/ckpt", {"x": x, "same": ONES, "gone": ONES})
    b = write_named(tmp_path / "b/ckpt", {"x": x + np.float32(0.5), "same": ONES, "new": np.ones(3, np.int8)})
    assert main(["diff", a, b, "--values", "--json"]) == 1
    import json

    got = json.loads(capsys.readouterr().out)
    assert got == {
        "only_a": ["gone"],
        "only_b": ["new"],
        "mismatched": [],
        "changed": [{"a": "x", "b": "x", "max_abs": 0.5, "rel_l2": pytest.approx(np.sqrt(0.75) / np.sqrt(21))}],
        "equal": 1,
    }


# -- fit --vocab on a partitioned variable whose optimizer slots are partitioned too ------------------


def test_fit_vocab_moves_partitioned_slots_with_their_partitioned_variable(tmp_path):
    """TF1 Saver layout: emb and emb/Adam in 2 slices each -> a template with 3 slices each."""
    from ckptio.bundle.dtypes import from_numpy
    from ckptio.bundle.entry import Entry
    from ckptio.bundle.slices import Slice, encode_key
    from ckptio.bundle.writer import BundleWriter

    def write(prefix, arrays: dict, parts) -> str:
        with BundleWriter(str(prefix)) as w:
            for name, value in arrays.items():
                slices = tuple(Slice(((s, n), (0, None))) for s, n in parts)
                for s, (start, n) in zip(slices, parts):
                    w.add_array(encode_key(name, s), value[start : start + n])
                w.add_entry(name, Entry(from_numpy(value.dtype).enum, value.shape, slices=slices))
            w.finish()
        return str(prefix)

    old, new = ["a", "b", "c", "d"], ["c", "x", "a", "b", "y"]
    emb = np.arange(8, dtype=np.float32).reshape(4, 2)
    src = write(tmp_path / "s/ckpt", {"emb": emb, "emb/Adam": emb + 100}, [(0, 2), (2, 2)])
    t_emb = np.full((5, 2), -1, np.float32)
    tpl = write(tmp_path / "t/ckpt", {"emb": t_emb, "emb/Adam": t_emb - 1}, [(0, 2), (2, 2), (4, 1)])
    report = ckptio.fit(src, tpl, tmp_path / "o/ckpt", vocab={"emb": (old, new)})
    assert sorted(r["dst"] for r in report.remapped) == ["emb", "emb/Adam"]
    with ckptio.open(tmp_path / "o/ckpt") as o:
        for name, src_v, tpl_v in (("emb", emb, t_emb), ("emb/Adam", emb + 100, t_emb - 1)):
            assert len(o[name].slices) == 3
            want = np.stack([src_v[2], tpl_v[1], src_v[0], src_v[1], tpl_v[4]])
            np.testing.assert_array_equal(o[name].read(), want, err_msg=name)


def test_diff_internal_error_exits_2_not_1(tmp_path, capsys, monkeypatch):
    """Exit 1 means "the checkpoints differ"; a crash inside diff is trouble (2), like diff(1)."""
    import importlib

    a = write_named(tmp_path / "a/ckpt", {"x": ONES})

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.delenv("CKPTIO_DEBUG", raising=False)
    monkeypatch.setattr(importlib.import_module("ckptio.diff"), "_diff", broken)
    assert main(["diff", a, a]) == 2
    err = capsys.readouterr().err
    assert "internal error: RuntimeError: boom" in err and err.count("\n") == 1
