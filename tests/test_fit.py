"""ckptio fit: template structure, source values; matching order, mismatch policies, casts, vocabulary remaps."""

from __future__ import annotations

import json

import numpy as np
import pytest
from support import read_all
from test_diff import key, write_named, write_object_based

import ckptio
from ckptio.bundle.naming import OBJECT_GRAPH_KEY
from ckptio.bundle.slices import Slice
from ckptio.bundle.writer import BundleWriter
from ckptio.cli.main import main
from ckptio.errors import MismatchError, PlanError

W = np.arange(12, dtype=np.float32).reshape(3, 4)


def run(capsys, *argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().out


def write_sliced(prefix, name: str, value, parts: list[tuple[int, int]], extra: dict | None = None) -> str:
    """A name-based checkpoint with `name` partitioned along axis 0 into [start, length) parts."""
    from ckptio.bundle.dtypes import from_numpy
    from ckptio.bundle.entry import Entry
    from ckptio.bundle.slices import encode_key

    slices = tuple(Slice(((start, length),) + ((0, None),) * (value.ndim - 1)) for start, length in parts)
    with BundleWriter(str(prefix)) as w:
        for s in slices:
            ((start, length),) = s.extents[:1]
            w.add_array(encode_key(name, s), value[start : start + length])
        w.add_entry(name, Entry(from_numpy(value.dtype).enum, value.shape, slices=slices))
        for n, v in (extra or {}).items():
            w.add_array(n, v)
        w.finish()
    return str(prefix)


@pytest.fixture
def pair(tmp_path):
    src = write_named(
        tmp_path / "src/ckpt",
        {"enc": W, "head": np.ones((4, 2), np.float32), "gone": np.zeros(3, np.float32), "step": np.int64(7)},
    )
    tpl = write_named(
        tmp_path / "tpl/ckpt",
        {
            "enc": np.zeros((3, 4), np.float32),
            "head": np.full((4, 5), 9, np.float32),
            "new": np.full(2, 5, np.float32),
            "step": np.int64(0),
        },
    )
    return src, tpl, str(tmp_path / "out/ckpt")


def test_error_policy_names_both_shapes_and_writes_nothing(pair, capsys):
    src, tpl, out = pair
    with pytest.raises(MismatchError, match=r"'head' has shape \[4, 2\], template tensor 'head' has shape \[4, 5\]"):
        ckptio.fit(src, tpl, out)
    code, _ = run(capsys, "fit", src, "--template", tpl, out)
    assert code == 1
    report = ckptio.fit(src, tpl, out, dry_run=True)  # a dry run reports instead of raising
    assert report.mismatched[0]["action"] == "error" and report.errors[0][0] == "head"
    import os

    assert not os.path.exists(out + ".index")


def test_template_policy_keeps_the_template_and_reports_every_tensor(pair, capsys):
    src, tpl, out = pair
    code, text = run(capsys, "fit", src, "--template", tpl, out, "--on-mismatch", "template", "--json")
    assert code == 0
    assert json.loads(text) == {
        "matched": [{"src": "enc", "dst": "enc", "how": "key"}, {"src": "step", "dst": "step", "how": "key"}],
        "template_only": ["new"],
        "source_only": ["gone"],
        "mismatched": [{"src": "head", "dst": "head", "src_shape": [4, 2], "dst_shape": [4, 5], "action": "template"}],
        "cast": [],
        "remapped": [],
    }
    got = read_all(out)
    assert sorted(got) == ["enc", "head", "new", "step"]
    np.testing.assert_array_equal(got["enc"], W)
    np.testing.assert_array_equal(got["head"], np.full((4, 5), 9, np.float32))
    np.testing.assert_array_equal(got["new"], np.full(2, 5, np.float32))
    assert got["step"] == 7
    with ckptio.open(src) as s, ckptio.open(out) as o:  # copied bytes keep their checksum
        assert o.entries()["enc"].crc32c == s.entries()["enc"].crc32c


def test_slice_policy_copies_the_overlapping_corner(pair):
    src, tpl, out = pair
    report = ckptio.fit(src, tpl, out, on_mismatch="slice")
    assert report.mismatched[0]["action"] == "slice"
    head = read_all(out)["head"]
    np.testing.assert_array_equal(head[:, :2], np.ones((4, 2)))
    np.testing.assert_array_equal(head[:, 2:], np.full((4, 3), 9))


def test_slice_of_a_shrunk_tensor_and_a_rank_change(tmp_path):
    src = write_named(tmp_path / "s/ckpt", {"emb": W, "v": np.ones(3, np.float32)})
    tpl = write_named(tmp_path / "t/ckpt", {"emb": np.zeros((2, 4), np.float32), "v": np.zeros((3, 1), np.float32)})
    with pytest.raises(MismatchError, match="ranks differ"):
        ckptio.fit(src, tpl, tmp_path / "o/ckpt", on_mismatch="slice")
    tpl2 = write_named(tmp_path / "t2/ckpt", {"emb": np.zeros((2, 4), np.float32)})
    ckptio.fit(src, tpl2, tmp_path / "o2/ckpt", on_mismatch="slice")
    np.testing.assert_array_equal(read_all(tmp_path / "o2/ckpt")["emb"], W[:2])


def test_floating_dtypes_are_cast_and_others_refused(tmp_path):
    src = write_named(tmp_path / "s/ckpt", {"w": W.astype(np.float64), "i": np.arange(3, dtype=np.int64)})
    tpl = write_named(tmp_path / "t/ckpt", {"w": np.zeros((3, 4), np.float32), "i": np.zeros(3, np.int32)})
    with pytest.raises(MismatchError, match="'i' is int64, template tensor 'i' is int32"):
        ckptio.fit(src, tpl, tmp_path / "o/ckpt", on_mismatch="template")
    tpl = write_named(tmp_path / "t2/ckpt", {"w": np.zeros((3, 4), np.float32)})
    report = ckptio.fit(src, tpl, tmp_path / "o/ckpt")
    assert report.cast == [{"src": "w", "dst": "w", "src_dtype": "float64", "dst_dtype": "float32"}]
    got = read_all(tmp_path / "o/ckpt")["w"]
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, W)


def test_output_keeps_the_template_object_graph_bytes(tmp_path):
    k = np.ones((2, 2), np.float32)
    src = write_object_based(
        tmp_path / "s/ckpt",
        {"model/enc/_kernel": k * 3, "optimizer/_iterations": np.int64(5)},
        aliases={"optimizer/_trainable_variables/0": "model/enc/_kernel"},
    )
    tpl = write_object_based(tmp_path / "t/ckpt", {"model/enc/_kernel": k, "model/extra/_kernel": k * 2})
    report = ckptio.fit(src, tpl, tmp_path / "o/ckpt")
    assert report.matched == [
        {"src": key("optimizer/_trainable_variables/0"), "dst": key("model/enc/_kernel"), "how": "path"}
    ]
    assert report.source_only == [key("optimizer/_iterations")]
    with ckptio.open(tpl) as t, ckptio.open(tmp_path / "o/ckpt") as o:
        assert o.object_graph_bytes == t.object_graph_bytes
        assert sorted(o) == sorted(t)
        np.testing.assert_array_equal(o[key("model/enc/_kernel")].read(), k * 3)
        np.testing.assert_array_equal(o[key("model/extra/_kernel")].read(), k * 2)
        assert OBJECT_GRAPH_KEY in o


def test_map_comes_first_and_claims_its_sources(tmp_path):
    """`a/=b/` sends a's weight to b even though b's own name also exists in the source (which a rule of
    its own sends elsewhere; without one, two sources for b/w are refused: test_audit_fit_merge.py)."""
    src = write_named(tmp_path / "s/ckpt", {"a/w": np.full(2, 1, np.float32), "b/w": np.full(2, 2, np.float32)})
    tpl = write_named(tmp_path / "t/ckpt", {"a/w": np.zeros(2, np.float32), "b/w": np.zeros(2, np.float32)})
    report = ckptio.fit(src, tpl, tmp_path / "o/ckpt", rules=["a/=b/", "b/=old_b/"])
    assert report.matched == [{"src": "a/w", "dst": "b/w", "how": "map"}]
    assert report.template_only == ["a/w"] and report.source_only == ["b/w"]
    np.testing.assert_array_equal(read_all(tmp_path / "o/ckpt")["b/w"], np.ones(2))


def test_two_sources_for_one_template_tensor_is_an_error_naming_both(tmp_path, capsys):
    src = write_named(tmp_path / "s/ckpt", {"x": W, "y": W})
    tpl = write_named(tmp_path / "t/ckpt", {"z": W})
    assert main(["fit", src, "--template", tpl, str(tmp_path / "o/ckpt"), "--map", "x=z", "--map", "y=z"]) == 2
    assert "'x' and 'y'" in capsys.readouterr().err
    with pytest.raises(PlanError, match="'x' and 'y'"):
        ckptio.fit(src, tpl, tmp_path / "o/ckpt", rules=[("x", "z"), ("y", "z")])


OLD = ["a", "b", "c", "d"]
NEW = ["c", "x", "a", "b", "y"]


def test_vocab_moves_rows_and_new_tokens_keep_the_template(tmp_path, capsys):
    emb = np.arange(8, dtype=np.float32).reshape(4, 2)
    slot = emb + 100
    src = write_named(tmp_path / "s/ckpt", {"emb": emb, "emb/Adam": slot})
    tpl_emb = np.full((6, 2), -1, np.float32)  # one more row than NEW: an out-of-vocabulary bucket
    tpl = write_named(tmp_path / "t/ckpt", {"emb": tpl_emb, "emb/Adam": tpl_emb - 1})
    (tmp_path / "old.txt").write_text("\n".join(OLD) + "\n")
    (tmp_path / "new.txt").write_text("\n".join(NEW) + "\n")
    code, text = run(
        capsys,
        "fit",
        src,
        "--template",
        tpl,
        tmp_path / "o/ckpt",
        "--json",
        "--vocab",
        f"emb={tmp_path / 'old.txt'}:{tmp_path / 'new.txt'}",
    )
    assert code == 0
    report = json.loads(text)
    assert report["remapped"] == [
        {"src": "emb", "dst": "emb", "vocab": "emb", "moved": 3, "new": 2},
        {"src": "emb/Adam", "dst": "emb/Adam", "vocab": "emb", "moved": 3, "new": 2},
    ]
    assert report["mismatched"] == []
    got = read_all(tmp_path / "o/ckpt")
    for name, old, template in (("emb", emb, tpl_emb), ("emb/Adam", slot, tpl_emb - 1)):
        for j in range(6):
            token = NEW[j] if j < len(NEW) else None
            expected = old[OLD.index(token)] if token in OLD else template[j]
            np.testing.assert_array_equal(got[name][j], expected)


def test_vocab_on_axis_1_and_its_checks(tmp_path):
    w = np.arange(8, dtype=np.float32).reshape(2, 4)
    src = write_named(tmp_path / "s/ckpt", {"w": w})
    tpl = write_named(tmp_path / "t/ckpt", {"w": np.zeros((2, 5), np.float32)})
    ckptio.fit(src, tpl, tmp_path / "o/ckpt", vocab={"w": (OLD, NEW)}, vocab_axis=1)
    np.testing.assert_array_equal(read_all(tmp_path / "o/ckpt")["w"], w[:, [2, 0, 0, 1, 0]] * [1, 0, 1, 1, 0])
    with pytest.raises(PlanError, match="names no template tensors"):
        ckptio.fit(src, tpl, tmp_path / "o2/ckpt", vocab={"nope": (OLD, NEW)})
    with pytest.raises(PlanError, match="twice"):
        ckptio.fit(src, tpl, tmp_path / "o2/ckpt", vocab={"w": (["a", "a"], NEW)})
    with pytest.raises(PlanError, match="5 old and 5 new tokens"):
        ckptio.fit(src, tpl, tmp_path / "o2/ckpt", vocab={"w": (OLD + ["e"], NEW)}, vocab_axis=1)
    with pytest.raises(MismatchError, match="differ beyond axis 0"):
        ckptio.fit(src, tpl, tmp_path / "o2/ckpt", vocab={"w": (OLD[:2], NEW[:2])}, vocab_axis=0)


def test_vocab_into_a_differently_partitioned_template(tmp_path):
    emb = np.arange(12, dtype=np.float32).reshape(4, 3)
    src = write_sliced(tmp_path / "s/ckpt", "emb", emb, [(0, 2), (2, 2)])
    tpl_emb = np.full((5, 3), -7, np.float32)
    tpl = write_sliced(tmp_path / "t/ckpt", "emb", tpl_emb, [(0, 2), (2, 2), (4, 1)])
    ckptio.fit(src, tpl, tmp_path / "o/ckpt", vocab={"emb": (OLD, NEW)})
    with ckptio.open(tmp_path / "o/ckpt") as o, ckptio.open(tpl) as t:
        assert o["emb"].slices == t["emb"].slices
        got = o["emb"].read()
    expected = np.stack([emb[2], tpl_emb[1], emb[0], emb[1], tpl_emb[4]])
    np.testing.assert_array_equal(got, expected)


def test_partitioning_differs_without_vocab_is_recut(tmp_path):
    emb = np.arange(12, dtype=np.float32).reshape(4, 3)
    src = write_sliced(tmp_path / "s/ckpt", "emb", emb, [(0, 1), (1, 3)])
    tpl = write_sliced(tmp_path / "t/ckpt", "emb", np.zeros((4, 3), np.float32), [(0, 2), (2, 2)])
    same = write_sliced(tmp_path / "t2/ckpt", "emb", np.zeros((4, 3), np.float32), [(0, 1), (1, 3)])
    for template in (tpl, same):
        out = tmp_path / ("o" + template[-8]) / "ckpt"
        ckptio.fit(src, template, out)
        with ckptio.open(out) as o, ckptio.open(template) as t:
            assert o["emb"].slices == t["emb"].slices
            np.testing.assert_array_equal(o["emb"].read(), emb)


def test_dry_run_writes_nothing_and_predicts_an_existing_output(pair, capsys):
    src, tpl, out = pair
    code, text = run(capsys, "fit", src, "--template", tpl, out, "--dry-run")
    assert code == 1 and "ERROR" in text  # the mismatch a real run would stop at
    import os

    assert not os.path.exists(out + ".index")
    ckptio.fit(src, tpl, out, on_mismatch="template")
    code, _ = run(capsys, "fit", src, "--template", tpl, out, "--on-mismatch", "template", "--dry-run")
    assert code == 2  # exists, no --force
    assert run(capsys, "fit", src, "--template", tpl, out, "--on-mismatch", "template", "--force")[0] == 0


def test_usage_errors(pair, capsys):
    src, tpl, out = pair
    assert run(capsys, "fit", src, out)[0] == 2  # no --template
    assert run(capsys, "fit", src, "--template", tpl)[0] == 2
    assert run(capsys, "fit", src, "--template", tpl, out, "--vocab", "novocab")[0] == 2
    assert run(capsys, "fit", src, "--template", tpl, out, "--map", "zzz/=y/")[0] == 2
    assert run(capsys, "fit", src, "--template", tpl, src)[0] == 2  # the output is an input
    assert run(capsys, "fit", src + "x", "--template", tpl, out)[0] == 1  # unreadable input
    archive = ("fit", src, "--template", tpl, out + ".tar.zst", "--on-mismatch", "template")
    assert run(capsys, *archive)[0] == 0  # written through the archive's store (test_url_writers.py)
    assert run(capsys, *archive)[0] == 2  # and then refused: it exists (--force replaces it)


def test_public_api_is_the_function():
    import importlib

    fit = ckptio.fit
    importlib.import_module("ckptio.fit")
    assert ckptio.fit is fit and callable(fit)


@pytest.mark.parametrize("src_shape, dst_shape", [((7, 3), (10, 5)), ((10, 5), (7, 3)), ((9, 2), (4, 6))])
def test_slice_streams_rows_a_chunk_at_a_time(tmp_path, bounded_reads, src_shape, dst_shape):
    source = np.arange(np.prod(src_shape), dtype=np.float64).reshape(src_shape)
    template = -np.arange(np.prod(dst_shape), dtype=np.float32).reshape(dst_shape)
    src = write_named(tmp_path / "s/ckpt", {"emb": source})
    tpl = write_named(tmp_path / "t/ckpt", {"emb": template})
    report = []
    sizes = bounded_reads(lambda: report.append(ckptio.fit(src, tpl, tmp_path / "o/ckpt", on_mismatch="slice")))
    assert report[0].cast[0]["src_dtype"] == "float64"
    widest_row = max(source[0].nbytes, template[0].nbytes)  # one row a step when a row exceeds the chunk
    assert 0 < max(sizes) <= max(2 * ROW, widest_row) < source.nbytes / 2
    expected = template.copy()
    r, c = min(src_shape[0], dst_shape[0]), min(src_shape[1], dst_shape[1])
    expected[:r, :c] = source[:r, :c]
    got = read_all(tmp_path / "o/ckpt")["emb"]
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)


ROW = 3 * 4  # bytes of one row of the float32 [n, 3] tensors below


@pytest.fixture
def bounded_reads(monkeypatch):
    """bounded_reads(fn): run fn with two rows per chunk in fit and in crc checks, failing on any whole-tensor
    read; returns the sizes of the data-shard reads it made."""
    import sys

    from ckptio import checkpoint
    from ckptio.io import FileSource

    def run(fn):
        sizes = []
        real = FileSource.read

        def read(self, offset, length, **kw):
            if ".data-" in self.name:
                sizes.append(length)
            return real(self, offset, length, **kw)

        whole = lambda *a: pytest.fail("a whole tensor was read")  # noqa: E731
        with monkeypatch.context() as m:
            m.setattr(FileSource, "read", read)
            m.setattr(FileSource, "readinto", whole)
            m.setattr(sys.modules["ckptio.fit_write"], "CHUNK_BYTES", 2 * ROW)
            m.setattr(checkpoint, "VERIFY_CHUNK", 2 * ROW)
            m.setattr(checkpoint.Checkpoint, "_read", whole)
            fn()
        return sizes

    return run


BIG_OLD = [f"t{i}" for i in range(40)]
BIG_NEW = [f"t{i}" for i in range(45, 0, -3)] + [f"t{i}" for i in range(1, 40, 3)]  # reversed, new, dropped


@pytest.mark.parametrize("case", ["vocab0", "vocab0-partitioned", "vocab1", "recut", "slice-partitioned"])
def test_remap_recut_and_slice_pass_through_memory_a_chunk_at_a_time(tmp_path, bounded_reads, case):
    old = np.arange(40 * 3, dtype=np.float32).reshape(40, 3)
    rows = len(BIG_NEW) + 2
    tpl_value = -np.arange(rows * 3, dtype=np.float32).reshape(rows, 3)
    where = {t: i for i, t in enumerate(BIG_OLD)}
    expected = tpl_value.copy()
    for j, t in enumerate(BIG_NEW):
        if t in where:
            expected[j] = old[where[t]]
    vocab, axis, policy = {"emb": (BIG_OLD, BIG_NEW)}, 0, "error"
    src = write_named(tmp_path / "s/ckpt", {"emb": old})
    tpl = write_named(tmp_path / "t/ckpt", {"emb": tpl_value})
    if case == "vocab0-partitioned":
        src = write_sliced(tmp_path / "s2/ckpt", "emb", old, [(0, 13), (13, 27)])
        tpl = write_sliced(tmp_path / "t2/ckpt", "emb", tpl_value, [(0, 5), (5, 20), (25, rows - 25)])
    elif case == "vocab1":
        old, tpl_value = old.T.copy(), tpl_value.T.copy()  # [3, n]: a row is 40 or `rows` floats, read whole
        src = write_named(tmp_path / "s2/ckpt", {"emb": old})
        tpl = write_named(tmp_path / "t2/ckpt", {"emb": tpl_value})
        expected, axis = expected.T, 1
    elif case in ("recut", "slice-partitioned"):
        vocab = None
        src = write_sliced(tmp_path / "s2/ckpt", "emb", old, [(0, 7), (7, 33)])
        if case == "recut":
            tpl = write_sliced(tmp_path / "t2/ckpt", "emb", np.zeros_like(old), [(0, 20), (20, 11), (31, 9)])
            expected = old
        else:
            tpl = write_sliced(tmp_path / "t2/ckpt", "emb", tpl_value, [(0, 20), (20, rows - 20)])
            expected = tpl_value.copy()
            expected[:40] = old[:rows] if rows < 40 else old
            policy = "slice"
    sizes = bounded_reads(
        lambda: ckptio.fit(src, tpl, tmp_path / "o/ckpt", vocab=vocab, vocab_axis=axis, on_mismatch=policy)
    )
    # A row of the [3, n] tensors is wider than a chunk: one row at a time then (crc checks stay at 2 * ROW).
    limit = max(old.shape[1], tpl_value.shape[1]) * 4 if axis else 2 * ROW
    assert 0 < max(sizes) <= limit <= old.nbytes / 2
    with ckptio.open(tmp_path / "o/ckpt") as o, ckptio.open(tpl) as t:
        assert o["emb"].slices == t["emb"].slices
    np.testing.assert_array_equal(read_all(tmp_path / "o/ckpt")["emb"], expected)


def test_read_rows_matches_read_and_checks_the_whole_piece_crc(tmp_path):
    from ckptio.errors import ChecksumError

    value = np.arange(40 * 3, dtype=np.float32).reshape(40, 3)
    sliced = write_sliced(tmp_path / "s/ckpt", "emb", value, [(0, 7), (7, 33)], extra={"flat": value})
    with ckptio.open(sliced) as c:
        for name in ("emb", "flat"):
            for start, stop in ((0, 40), (5, 9), (7, 7), (39, 40)):
                np.testing.assert_array_equal(c[name].read_rows(start, stop), value[start:stop])
        with pytest.raises(IndexError):
            c["emb"].read_rows(3, 41)
        entry = c["flat"].entry
    data = tmp_path / "s/ckpt.data-00000-of-00001"
    raw = bytearray(data.read_bytes())
    raw[entry.offset + entry.size - 1] ^= 1  # the last row; rows 0-1 themselves are intact
    data.write_bytes(bytes(raw))
    with ckptio.open(sliced) as c, pytest.raises(ChecksumError):
        c["flat"].read_rows(0, 2)


@pytest.mark.parametrize("flags, shards", [(["--shards", "3"], 3), (["--max-shard-size", "100"], None), ([], 1)])
def test_shards_split_copies_and_built_tensors(tmp_path, capsys, flags, shards):
    import glob

    emb = np.arange(40 * 3, dtype=np.float32).reshape(40, 3)
    tensors = {f"w{i}": np.full((5, 4), i, np.float32) for i in range(6)}  # 80 bytes each
    src = write_named(tmp_path / "s/ckpt", {**tensors, "emb": emb})
    tpl = write_named(
        tmp_path / "t/ckpt",
        {
            **{n: np.zeros_like(v) for n, v in tensors.items()},
            "emb": np.zeros((50, 3), np.float32),
            "new": np.ones(3, np.float32),
        },
    )
    out = tmp_path / "o/ckpt"
    code, _ = run(capsys, "fit", src, "--template", tpl, out, "--on-mismatch", "slice", *flags)
    assert code == 0
    files = sorted(glob.glob(f"{out}.data-*"))
    with ckptio.open(out) as o:
        assert o.num_shards == len(files)
        used = {e.shard_id for e in o.entries().values()}
    if shards is None:  # 6 * 80 + 600 + 12 bytes, at most 100 a shard unless one tensor is larger
        assert len(files) >= 6 and used == set(range(len(files)))
    else:
        assert len(files) == shards and used <= set(range(shards)) and len(used) == min(shards, 2)
    got = read_all(out)
    for n, v in tensors.items():
        np.testing.assert_array_equal(got[n], v)
    expected = np.zeros((50, 3), np.float32)
    expected[:40] = emb
    np.testing.assert_array_equal(got["emb"], expected)
    np.testing.assert_array_equal(got["new"], np.ones(3, np.float32))
    assert run(capsys, "fit", src, "--template", tpl, tmp_path / "x/ckpt", "--shards", "0")[0] == 2
    assert (
        run(capsys, "fit", src, "--template", tpl, tmp_path / "x/ckpt", "--shards", "2", "--max-shard-size", "1K")[0]
        == 2
    )


def test_fit_exact_map_rule_on_an_object_path(tmp_path):
    new_head = np.zeros((3, 4), np.float32)
    src = write_object_based(tmp_path / "s/ckpt", {"model/dense/kernel": W})
    tpl = write_object_based(tmp_path / "t/ckpt", {"model/head/kernel": new_head})
    report = ckptio.fit(src, tpl, tmp_path / "o/ckpt", rules=["model/dense/kernel=model/head/kernel"])
    assert report.matched == [{"src": key("model/dense/kernel"), "dst": key("model/head/kernel"), "how": "map"}]
    np.testing.assert_array_equal(read_all(tmp_path / "o/ckpt")[key("model/head/kernel")], W)


def test_non_floating_dtype_change_is_refused_with_a_remedy_that_applies(tmp_path):
    src = write_named(tmp_path / "s/ckpt", {"ids": np.arange(4, dtype=np.int64), "w": W})
    tpl = write_named(tmp_path / "t/ckpt", {"ids": np.zeros(4, np.int32), "w": np.zeros((3, 4), np.float16)})
    for policy in ("error", "template", "slice"):  # no policy converts an int64 into an int32
        with pytest.raises(
            MismatchError, match=r"'ids' is int64, template tensor 'ids' is int32.*rename rule can pair it"
        ):
            ckptio.fit(src, tpl, tmp_path / "o/ckpt", on_mismatch=policy)
    report = ckptio.fit(src, tpl, tmp_path / "o/ckpt", dry_run=True)
    assert [e[0] for e in report.errors] == ["ids"]
    assert report.cast == [{"src": "w", "dst": "w", "src_dtype": "float32", "dst_dtype": "float16"}]


def test_string_tensors_slice_and_remap_whole(tmp_path):
    words = np.array([b"a", b"bb", b"", b"dddd"], dtype=object)
    src = write_named(tmp_path / "s/ckpt", {"words": words, "grid": words.reshape(2, 2)})
    tpl = write_named(
        tmp_path / "t/ckpt",
        {"words": np.array([b"?"] * 5, dtype=object), "grid": np.array([[b"x"] * 3] * 3, dtype=object)},
    )
    ckptio.fit(src, tpl, tmp_path / "o/ckpt", vocab={"words": (OLD, NEW)}, on_mismatch="slice")
    got = read_all(tmp_path / "o/ckpt")
    assert list(got["words"]) == [b"", b"?", b"a", b"bb", b"?"]
    assert got["grid"].tolist() == [[b"a", b"bb", b"x"], [b"", b"dddd", b"x"], [b"x", b"x", b"x"]]


def test_tf1_partitioned_source_into_an_object_based_template_by_full_name(tmp_path):
    emb = np.arange(24, dtype=np.float32).reshape(8, 3)
    src = write_sliced(
        tmp_path / "s/ckpt", "embedding/embeddings", emb, [(0, 3), (3, 5)], extra={"embedding/embeddings/Adam": emb}
    )
    tpl = write_object_based(
        tmp_path / "t/ckpt",
        {"model/emb/embeddings": np.zeros((8, 3), np.float32)},
        full_names={"model/emb/embeddings": "embedding/embeddings"},
    )
    report = ckptio.fit(src, tpl, tmp_path / "o/ckpt")
    assert report.matched == [{"src": "embedding/embeddings", "dst": key("model/emb/embeddings"), "how": "full_name"}]
    assert report.source_only == ["embedding/embeddings/Adam"]
    with ckptio.open(tmp_path / "o/ckpt") as o:
        assert o[key("model/emb/embeddings")].slices == ()  # the template's layout: whole
        np.testing.assert_array_equal(o[key("model/emb/embeddings")].read(), emb)


def test_vocab_refuses_a_slot_not_shaped_like_its_variable(tmp_path):
    emb = np.arange(8, dtype=np.float32).reshape(4, 2)
    src = write_named(tmp_path / "s/ckpt", {"emb": emb, "emb/Adafactor": np.ones(4, np.float32)})
    tpl = write_named(
        tmp_path / "t/ckpt", {"emb": np.zeros((5, 2), np.float32), "emb/Adafactor": np.zeros(5, np.float32)}
    )
    with pytest.raises(PlanError, match="slot 'emb/Adafactor' is not shaped like its variable 'emb'"):
        ckptio.fit(src, tpl, tmp_path / "o/ckpt", vocab={"emb": (OLD, NEW)})


def test_one_tensor_with_two_vocabularies_is_refused(tmp_path, capsys):
    emb = np.arange(8, dtype=np.float32).reshape(4, 2)
    src = write_object_based(tmp_path / "s/ckpt", {"model/emb/embeddings": emb})
    tpl = write_object_based(tmp_path / "t/ckpt", {"model/emb/embeddings": np.zeros((5, 2), np.float32)})
    other = list(reversed(NEW))
    with pytest.raises(PlanError, match="name one template tensor"):
        ckptio.fit(
            src,
            tpl,
            tmp_path / "o/ckpt",
            vocab={"model/emb/embeddings": (OLD, NEW), key("model/emb/embeddings"): (OLD, other)},
        )
    named = write_named(tmp_path / "s2/ckpt", {"emb": emb, "emb/Adam": emb})
    named_tpl = write_named(
        tmp_path / "t2/ckpt", {"emb": np.zeros((5, 2), np.float32), "emb/Adam": np.zeros((5, 2), np.float32)}
    )
    with pytest.raises(PlanError, match="names optimizer slot 'emb/Adam', which moves with its variable"):
        ckptio.fit(named, named_tpl, tmp_path / "o/ckpt", vocab={"emb": (OLD, NEW), "emb/Adam": (OLD, other)})
    (tmp_path / "a.txt").write_text("\n".join(OLD))
    (tmp_path / "b.txt").write_text("\n".join(NEW))
    files = f"{tmp_path / 'a.txt'}:{tmp_path / 'b.txt'}"
    assert (
        run(
            capsys,
            "fit",
            named,
            "--template",
            named_tpl,
            tmp_path / "o/ckpt",
            "--vocab",
            f"emb={files}",
            "--vocab",
            f"emb={files}",
        )[0]
        == 2
    )


def test_a_fit_that_takes_nothing_from_the_source_is_refused(tmp_path, capsys):
    """Nothing matched: the output would be the template unchanged, so it is refused (one line, exit 1)."""
    src = write_named(tmp_path / "src/ckpt", {"old_enc": W, "old_head": np.ones((4, 2), np.float32)})
    tpl = write_named(
        tmp_path / "tpl/ckpt", {"enc": np.zeros((3, 4), np.float32), "head": np.zeros((4, 2), np.float32)}
    )
    out = str(tmp_path / "out/ckpt")
    report = ckptio.fit(src, tpl, None, dry_run=True)  # a dry run still reports
    assert report.matched == [] and sorted(report.template_only) == ["enc", "head"]
    with pytest.raises(MismatchError, match="no template tensor matched a source tensor"):
        ckptio.fit(src, tpl, out)
    code = main(["fit", src, "--template", tpl, out])
    err = capsys.readouterr().err
    assert code == 1 and "nothing written" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    assert ckptio.fit(src, tpl, out, rules=["old_enc=enc", "old_head=head"]).matched  # rules make it fit


def test_api_errors_name_keyword_arguments_and_the_cli_names_flags(pair, capsys):
    """A shape mismatch says what gets past it in the caller's words: on_mismatch='template' or --on-mismatch."""
    src, tpl, out = pair
    with pytest.raises(MismatchError) as info:
        ckptio.fit(src, tpl, out)
    assert "pass on_mismatch='template' to keep the template's value" in str(info.value)
    assert info.value.remedy.param == "on_mismatch" and "--on-mismatch" not in str(info.value)
    assert main(["fit", src, "--template", tpl, out]) == 1
    assert "pass --on-mismatch template to keep the template's value" in capsys.readouterr().err


def test_diff_takes_rules_as_fit_does(pair):
    src, tpl, _ = pair
    renamed = ckptio.diff(src, tpl, rules=["enc=new"])  # strings, as fit takes them, not only a Rename
    assert "new" not in renamed.only_b and "enc" in renamed.only_b
    assert "enc" not in ckptio.diff(src, tpl).only_b
    assert "enc" in ckptio.diff(src, tpl, rules=[(r"^(e)nc$", r"\1xx")], regex=True).only_b
