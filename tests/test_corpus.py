"""Every real-world checkpoint in the corpus reads exactly as TensorFlow read it (MANIFEST.json).

The corpus (/work/shared/corpus, the `corpus` fixture in conftest.py) holds checkpoints
written by other people with TF 1.x-2.x, copied byte-exact from public repositories. Its
MANIFEST.json records what TF 2.21's `tf.train.load_checkpoint` returns for each tensor
(dtype, shape, sha256 by the corpus hash rule). The files are used in place, read-only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import ckptio
from ckptio.errors import CheckpointNotFoundError
from ckptio.verify import verify

try:
    from tf_support import hash_array
except ImportError:  # tests/ imported as a package
    from .tf_support import hash_array

CORPUS_ROOT = (Path(__file__).resolve().parents[1] / ".." / "shared" / "corpus").resolve()  # as conftest.py


def _manifest_entries():
    try:
        manifest = json.loads((CORPUS_ROOT / "MANIFEST.json").read_text())
    except OSError:
        return [pytest.param(None, id="no-corpus")]
    return [pytest.param(c, id=c["short_name"]) for c in manifest["checkpoints"]]


ENTRIES = _manifest_entries()


def check_against_manifest(ck, rec) -> list[str]:
    problems = []
    want = rec["tensors"]
    if set(ck) != set(want):
        problems.append(f"names: only ours {sorted(set(ck) - set(want))}, only TF's {sorted(set(want) - set(ck))}")
    for name, w in want.items():
        if name not in ck:
            continue
        t = ck[name]
        if t.dtype_name != w["dtype"] or list(t.shape) != w["shape"] or t.size != w["num_elements"]:
            problems.append(f"{name}: {t.dtype_name}{list(t.shape)} != {w['dtype']}{w['shape']}")
            continue
        try:
            value = t.read()
        except Exception as exc:  # noqa: BLE001 - list every tensor that fails
            problems.append(f"{name}: {type(exc).__name__}: {exc}")
            continue
        if hash_array(value) != w["sha256"]:
            problems.append(f"{name}: values differ from TF's")
    return problems


@pytest.mark.parametrize("rec", ENTRIES)
def test_corpus_checkpoint(corpus, rec):
    assert rec is not None
    prefix = corpus / rec["prefix"]
    with ckptio.open(prefix) as ck:
        assert ck.format == rec["format"]
        info = rec["format_info"]
        if ck.format == "v2":
            assert ck.num_shards == info["header_num_shards"]
            assert ck.header.big_endian == (info["header_endianness"] == "BIG")
            assert len(ck._reader.table.index) == info["index_data_blocks"]
            assert len(ck.entries()) + len(ck._reader.slice_entries()) == info["index_entries"]
        else:
            assert sum(len(t.index) for t in ck._reader.tables) == info["table_data_blocks"]
        assert len(ck) == rec["num_tensors"]
        assert check_against_manifest(ck, rec) == []
        report = verify(ck)
        assert report.ok, [str(p) for p in report.problems]
        assert report.tensors >= rec["num_tensors"]


@pytest.mark.parametrize("rec", ENTRIES)
def test_corpus_directory(corpus, rec):
    """Opening a checkpoint's directory follows its `checkpoint` state file as TF does. A state file
    naming a checkpoint that is not there: the one V2 checkpoint present is used with a warning;
    otherwise a one-line error lists what is there."""
    assert rec is not None
    directory = (corpus / rec["prefix"]).parent
    state = rec.get("state_file")
    stale = state is not None and not state["points_to_included_checkpoint"]
    if stale and len(list(directory.glob("*.index"))) == 1:
        from ckptio.errors import StateFileWarning

        with pytest.warns(StateFileWarning) as caught:
            with ckptio.open(directory) as ck:
                assert Path(ck.prefix) == corpus / rec["prefix"]
        msg = str(caught[0].message)
        assert state["model_checkpoint_path"] in msg and os.path.basename(rec["prefix"]) in msg
        return
    if stale:
        with pytest.raises(CheckpointNotFoundError) as info:
            ckptio.open(directory)
        msg = str(info.value)
        assert state["model_checkpoint_path"] in msg and os.path.basename(rec["prefix"]) in msg
        assert "\n" not in msg
        return
    with ckptio.open(directory) as ck:
        if rec["format"] == "v2":
            assert Path(ck.prefix) == corpus / rec["prefix"]
        else:
            assert [Path(f) for f in ck.located.files] == [corpus / rec["prefix"]]
        assert len(ck) == rec["num_tensors"]


def test_corpus_used_in_place(corpus):
    """Reading and verifying the whole corpus changes nothing and creates nothing there."""

    def snapshot():
        return {str(p.relative_to(corpus)): (p.stat().st_size, p.stat().st_mtime_ns) for p in corpus.rglob("*")}

    manifest = json.loads((corpus / "MANIFEST.json").read_text())
    before = snapshot()
    total = 0
    for rec in manifest["checkpoints"]:
        with ckptio.open(corpus / rec["prefix"]) as ck:
            for n in ck:
                total += ck[n].read().size
            assert verify(ck).ok
    assert total == sum(t["num_elements"] for r in manifest["checkpoints"] for t in r["tensors"].values())
    assert snapshot() == before


def test_corpus_covers_the_formats(corpus):
    manifest = json.loads((corpus / "MANIFEST.json").read_text())
    kinds = {r["kind"] for r in manifest["checkpoints"]}
    assert {"tf1-saver", "tf1-saver-v1", "tf2-object", "savedmodel-tf2", "estimator"} <= kinds
    assert any(r["format_info"].get("header_num_shards", 1) > 1 for r in manifest["checkpoints"])
    assert any(1 in r["format_info"].get("index_block_compression_types", ()) for r in manifest["checkpoints"])
