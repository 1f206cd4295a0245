"""`ckptio doctor`: every situation named in plain words, one line per problem; --salvage output.

Each broken checkpoint is made from a healthy one (written by BundleWriter, or a corpus copy),
then diagnosed; salvaged copies must open and hold exactly the intact tensors, bit for bit.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import ckptio
from ckptio.bundle import strings
from ckptio.bundle.entry import Entry, Header
from ckptio.bundle.paths import resolve
from ckptio.doctor import diagnose, salvage
from ckptio.errors import PlanError, WrongFileError
from ckptio.sstable.coding import crc32c, mask

try:
    from corrupt_support import (
        CORPUS,
        cli,
        copy_corpus,
        corpus_manifest,
        files_of,
        make_fixture,
        read_all,
        same,
        write_bundle,
    )
except ImportError:  # tests/ imported as a package
    from .corrupt_support import (
        CORPUS,
        cli,
        copy_corpus,
        corpus_manifest,
        files_of,
        make_fixture,
        read_all,
        same,
        write_bundle,
    )

LFS = b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"0" * 64 + b"\nsize 4242\n"

needs_corpus = pytest.mark.usefixtures("corpus")  # skips without the corpus, fails with $CI set


def kinds(d) -> list[str]:
    return [p.kind for p in d.problems]


def flip(path, offset, mask_=0x10):
    data = bytearray(Path(path).read_bytes())
    data[offset] ^= mask_
    Path(path).write_bytes(bytes(data))


def salvaged_equals(d, originals, out) -> dict:
    """Salvage d into out; the copy must hold exactly d.intact, each tensor bit-identical."""
    written = salvage(d, out)
    assert written == d.intact
    got = read_all(str(out))
    assert sorted(got) == sorted(d.intact)
    for name, arr in got.items():
        assert same(arr, originals[name]), name
    return got


def doctor_cli(*argv) -> tuple[int, list[str], str]:
    rc, out, err = cli(["doctor", *argv])
    assert "Traceback" not in out + err
    return rc, out.splitlines(), err


# -- healthy -------------------------------------------------------------------------------------


@needs_corpus
def test_every_corpus_checkpoint_is_healthy():
    for rec in corpus_manifest()["checkpoints"]:
        d = diagnose(CORPUS / rec["prefix"])
        assert d.healthy, (rec["short_name"], [str(p) for p in d.problems], d.damaged)
        assert sorted(d.intact) == sorted(rec["tensors"]), rec["short_name"]
        assert not d.notes, (rec["short_name"], d.notes)


@pytest.mark.parametrize("kind", ["numeric", "strings", "sliced", "two_shards", "multiblock"])
def test_healthy_fixture_and_cli(tmp_path, kind):
    prefix = make_fixture(kind, tmp_path)
    rc, lines, _ = doctor_cli(prefix)
    assert rc == 0
    assert lines[-1].startswith("verdict: healthy")
    assert not any(line.startswith(("problem:", "damaged:")) for line in lines)
    assert sum(line.startswith("intact: ") for line in lines) == len(read_all(prefix))
    rc, lines, _ = doctor_cli(prefix, "--json")
    report = json.loads("\n".join(lines))
    assert rc == 0 and report["healthy"] and report["problems"] == [] and report["damaged"] == {}


# -- wrong files ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,content",
    [
        ("model.ckpt.meta", b"\x0a\x04meta"),
        ("checkpoint", b'model_checkpoint_path: "model.ckpt"\n'),
        ("weights.h5", b"\x89HDF\r\n\x1a\n" + bytes(600)),
        ("notes.txt", b"hello, I am not a checkpoint, but I am long enough to have 48 bytes at least\n"),
    ],
)
def test_wrong_file(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(WrongFileError) as info:
        resolve(path)
    d = diagnose(path)
    assert kinds(d) == ["wrong-file"]
    assert d.problems[0].message == info.value.message  # the same advice as ckptio.open gives
    rc, lines, _ = doctor_cli(path)
    assert rc == 1 and sum(line.startswith("problem: wrong-file") for line in lines) == 1


def test_not_found_and_missing_index(tmp_path):
    d = diagnose(tmp_path / "nothing")
    assert kinds(d) == ["not-found"]
    prefix = make_fixture("two_shards", tmp_path)
    os.unlink(prefix + ".index")
    for path in (prefix, prefix + ".data-00000-of-00002"):
        d = diagnose(path)
        assert kinds(d) == ["missing-index"], path
        assert "index" in d.problems[0].message


def test_lfs_pointers(tmp_path):
    prefix = make_fixture("two_shards", tmp_path)
    originals = read_all(prefix)
    Path(prefix + ".data-00001-of-00002").write_bytes(LFS)
    d = diagnose(prefix)
    assert kinds(d) == ["lfs-pointer"] and "git lfs pull" in d.problems[0].message
    assert len(d.damaged) == 3 and all("LFS" in why for why in d.damaged.values())
    salvaged_equals(d, originals, tmp_path / "out" / "s")
    with ckptio.open(prefix) as ck:  # the reader says the same when a tensor is read
        name = next(iter(d.damaged))
        with pytest.raises(WrongFileError, match="Git LFS pointer"):
            ck[name].read()
    Path(prefix + ".index").write_bytes(LFS)
    d = diagnose(prefix)
    assert kinds(d)[0] == "lfs-pointer" and d.problems[0].path.endswith(".index")
    with pytest.raises(WrongFileError, match="Git LFS pointer"):
        ckptio.open(prefix)
    d = diagnose(prefix + ".index")
    assert kinds(d) == ["lfs-pointer"]


# -- shards --------------------------------------------------------------------------------------


def test_missing_shard_one_line(tmp_path):
    prefix = make_fixture("two_shards", tmp_path)
    originals = read_all(prefix)
    os.unlink(prefix + ".data-00000-of-00002")
    rc, lines, _ = doctor_cli(prefix)
    assert rc == 1
    problems = [line for line in lines if line.startswith("problem:")]
    assert problems == [
        f"problem: missing-shard: {prefix}.data-00000-of-00002: data shard "
        "ckpt.data-00000-of-00002 is missing; 3 tensor(s) are stored there"
    ]
    damaged = [line for line in lines if line.startswith("damaged:")]
    assert len(damaged) == 3 and all("is missing" in line for line in damaged)
    assert lines[-1].startswith("verdict: damaged: 3 of 6 tensor(s) lost")
    out = tmp_path / "salvaged" / "ckpt"
    rc, lines, _ = doctor_cli(prefix, "--salvage", out)
    assert rc == 1 and lines[-1].endswith(f"wrote the 3 intact one(s) to {out}")
    got = read_all(str(out))
    assert len(got) == 3 and all(same(a, originals[n]) for n, a in got.items())
    assert cli(["verify", "-q", out])[0] == 0
    rc, _, err = cli(["doctor", prefix, "--salvage", out])  # exists: usage error, nothing touched
    assert rc == 2 and "exists" in err
    rc, _, _ = cli(["doctor", prefix, "--salvage", out, "--force"])
    assert rc == 1 and len(read_all(str(out))) == 3


def test_truncated_and_foreign_shards(tmp_path):
    prefix = make_fixture("two_shards", tmp_path / "a")
    other = make_fixture("two_shards", tmp_path / "b", seed_offset=2.0)
    originals = read_all(prefix)
    shard = prefix + ".data-00001-of-00002"
    good = Path(shard).read_bytes()
    Path(shard).write_bytes(good[: len(good) // 2])
    d = diagnose(prefix)
    assert kinds(d) == ["truncated-shard"] and f"{len(good) // 2} bytes" in d.problems[0].message
    salvaged_equals(d, originals, tmp_path / "o1" / "s")
    shutil.copyfile(other + ".data-00001-of-00002", shard)
    d = diagnose(prefix)
    assert kinds(d) == ["foreign-shard"] and "different checkpoint" in d.problems[0].message
    salvaged_equals(d, originals, tmp_path / "o2" / "s")


def test_index_and_data_from_different_saves(tmp_path):
    one = make_fixture("numeric", tmp_path / "one")
    two = make_fixture("two_shards", tmp_path / "two")
    os.unlink(one + ".data-00000-of-00001")
    for f in files_of(two)[1:]:
        shutil.copyfile(f, one + f[len(two) :])
    d = diagnose(one)
    assert "shard-count-mismatch" in kinds(d) and "missing-shard" in kinds(d)


# -- the index table -----------------------------------------------------------------------------


def test_bad_magic_still_salvages_everything(tmp_path):
    prefix = make_fixture("strings", tmp_path)
    originals = read_all(prefix)
    size = os.path.getsize(prefix + ".index")
    flip(prefix + ".index", size - 3)
    with pytest.raises(ckptio.CorruptCheckpointError, match="bad magic"):
        ckptio.open(prefix)
    d = diagnose(prefix)
    assert kinds(d) == ["bad-magic"] and not d.damaged
    salvaged_equals(d, originals, tmp_path / "out" / "s")


def test_bad_index_block_with_usable_handles(tmp_path):
    prefix = make_fixture("multiblock", tmp_path)
    originals = read_all(prefix)
    from ckptio.io import MemorySource
    from ckptio.sstable.format import Footer

    data = Path(prefix + ".index").read_bytes()
    footer = Footer.decode(data[-48:])
    # flip a byte inside a separator key: the handles stay right, the block checksum fails
    flip(prefix + ".index", footer.index.offset + 4, 0x01)
    d = diagnose(prefix)
    assert kinds(d) == ["bad-index-block"] and "still look usable" in d.problems[0].message
    assert not d.damaged
    salvaged_equals(d, originals, tmp_path / "out" / "s")
    del MemorySource


def test_corrupt_data_block_names_lost_tensors(tmp_path):
    prefix = make_fixture("multiblock", tmp_path)
    originals = read_all(prefix)
    from ckptio.io import MemorySource
    from ckptio.sstable import Table

    table = Table(MemorySource(Path(prefix + ".index").read_bytes()))
    lost = {k.decode() for k, _ in table.block(2).entries()}
    handle = table.index[2][1]
    flip(prefix + ".index", handle.offset + handle.size // 2, 0x04)
    d = diagnose(prefix)
    assert kinds(d) == ["corrupt-block"] and "data block 2" in d.problems[0].message
    assert set(d.damaged) == lost
    assert all("damaged block" in why for why in d.damaged.values())
    salvaged_equals(d, originals, tmp_path / "out" / "s")


def test_truncated_index_recovers_leading_blocks(tmp_path):
    prefix = make_fixture("multiblock", tmp_path)
    originals = read_all(prefix)
    path = prefix + ".index"
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])
    d = diagnose(prefix)
    assert kinds(d) == ["truncated-index"] and "recovered by scanning" in d.problems[0].message
    assert 0 < len(d.intact) < len(originals)
    salvaged_equals(d, originals, tmp_path / "out" / "s")


def test_trailing_bytes_after_footer(tmp_path):
    prefix = make_fixture("numeric", tmp_path)
    originals = read_all(prefix)
    with open(prefix + ".index", "ab") as f:
        f.write(b"\x00garbage")
    d = diagnose(prefix)
    assert kinds(d) == ["trailing-bytes"] and not d.damaged
    salvaged_equals(d, originals, tmp_path / "out" / "s")


def test_bad_header_and_bad_entry(tmp_path):
    a = np.arange(6, dtype=np.float32)
    b = np.arange(3, dtype=np.int64)
    data = a.tobytes() + b.tobytes()
    items = [
        ("a", Entry(1, (6,), 0, 0, 24, mask(crc32c(a.tobytes()))).encode()),
        ("b", Entry(9, (3,), 0, 24, 24, mask(crc32c(b.tobytes()))).encode()),
        ("c", b"\x08\x01\x12\x07garbage"),
    ]
    prefix = write_bundle(str(tmp_path / "x" / "ckpt"), items, {0: data}, header=b"\x08\x80\x80\x80\x80\x08")
    d = diagnose(prefix)
    assert kinds(d) == ["bad-header", "bad-entry"]
    assert [n.kind for n in d.notes] == ["shard-count-inferred"]
    assert d.damaged.keys() == {"c"} and d.intact == ["a", "b"]
    written = salvage(d, tmp_path / "out" / "s")
    got = read_all(str(tmp_path / "out" / "s"))
    assert written == ["a", "b"] and same(got["a"], a) and same(got["b"], b)


# -- tensors -------------------------------------------------------------------------------------


def test_corrupt_tensor_and_sliced_salvage(tmp_path):
    prefix = make_fixture("sliced", tmp_path)
    originals = read_all(prefix)
    with ckptio.open(prefix) as ck:
        piece = next(iter(ck._reader.slice_entries().values()))
        plain = ck["plain"].entry
    flip(prefix + ".data-00000-of-00001", plain.offset + 1)
    d = diagnose(prefix)
    assert kinds(d) == ["corrupt-tensor"] and d.problems[0].key == "plain"
    assert "checksum does not match" in d.damaged["plain"]
    got = salvaged_equals(d, originals, tmp_path / "o1" / "s")
    with ckptio.open(str(tmp_path / "o1" / "s")) as ck:  # still stored as slices
        assert ck["part_emb"].slices and same(got["part_emb"], originals["part_emb"])
    flip(prefix + ".data-00000-of-00001", plain.offset + 1)  # heal
    flip(prefix + ".data-00000-of-00001", piece.offset)
    d = diagnose(prefix)
    assert d.damaged.keys() == {"part_emb"} and d.damaged["part_emb"].startswith("slice [")
    salvaged_equals(d, originals, tmp_path / "o2" / "s")


def test_missing_slice_entry(tmp_path):
    prefix = make_fixture("sliced", tmp_path)
    with ckptio.open(prefix) as ck:
        items = [(k, v) for k, v in ck._reader.table if k]
        data = Path(prefix + ".data-00000-of-00001").read_bytes()
    items = [(k, v) for k, v in items if not (k[:1] == b"\x00" and b"\x84" in k)]  # drop the slice at row 4
    prefix2 = write_bundle(str(tmp_path / "y" / "ckpt"), items, {0: data})
    d = diagnose(prefix2)
    assert "missing-slice" in kinds(d) and "part_emb" in d.damaged and "plain" in d.intact


@needs_corpus
def test_v1_salvage_and_damage(tmp_path):
    prefix = copy_corpus("v1_savenet", tmp_path)
    originals = read_all(prefix)
    d = diagnose(prefix)
    assert d.healthy and d.format == "v1"
    salvaged_equals(d, originals, tmp_path / "o1" / "s")
    from ckptio.io import MemorySource
    from ckptio.sstable import Table

    table = Table(MemorySource(Path(prefix).read_bytes()))
    handle = table.index[0][1]
    flip(prefix, handle.offset + handle.size - 20)
    d = diagnose(prefix)
    assert kinds(d) == ["corrupt-block"] and not d.intact
    with pytest.raises(PlanError):
        salvage(d, tmp_path / "o2" / "s")


@needs_corpus
def test_tf2_checkpoint_with_a_damaged_tensor(tmp_path):
    prefix = copy_corpus("tf2_newopt_vars", tmp_path)
    originals = read_all(prefix)
    with ckptio.open(prefix) as ck:
        name = next(n for n in ck if "kernel" in n and "optimizer" not in n)
        e = ck[name].entry
    flip(prefix + ".data-00000-of-00001", e.offset + e.size - 1)
    d = diagnose(prefix)
    assert kinds(d) == ["corrupt-tensor"] and list(d.damaged) == [name]
    salvaged_equals(d, originals, tmp_path / "out" / "s")


def test_big_endian_bundle_salvaged_as_little_endian(tmp_path):
    arrays = {"f": np.arange(6, dtype=np.float32).reshape(2, 3) / 7, "i": np.arange(4, dtype=np.int64) - 2}
    blob, items = b"", []
    for name, arr in arrays.items():
        raw = arr.astype(arr.dtype.newbyteorder(">")).tobytes()
        items.append(
            (
                name,
                Entry(
                    1 if arr.dtype == np.float32 else 9, arr.shape, 0, len(blob), len(raw), mask(crc32c(raw))
                ).encode(),
            )
        )
        blob += raw
    text, crc = strings.encode([b"ab", b"", b"xyz"], big_endian=True)
    items.append(("s", Entry(7, (3,), 0, len(blob), len(text), crc).encode()))
    blob += text
    prefix = write_bundle(
        str(tmp_path / "be" / "ckpt"), items, {0: blob}, header=Header(num_shards=1, big_endian=True).encode()
    )
    originals = read_all(prefix)
    assert same(originals["f"], arrays["f"])
    d = diagnose(prefix)
    assert d.healthy
    salvaged_equals(d, originals, tmp_path / "out" / "s")
    with ckptio.open(str(tmp_path / "out" / "s")) as ck:
        assert not ck.header.big_endian


def test_cli_json_and_exit_codes(tmp_path):
    prefix = make_fixture("numeric", tmp_path)
    flip(prefix + ".data-00000-of-00001", 2)
    rc, lines, _ = doctor_cli(prefix, "--json")
    report = json.loads("\n".join(lines))
    assert rc == 1 and not report["healthy"]
    assert [p["kind"] for p in report["problems"]] == ["corrupt-tensor"]
    assert len(report["damaged"]) == 1 and len(report["intact"]) == 5
    rc, lines, _ = doctor_cli(prefix)
    assert rc == 1 and sum(line.startswith("problem:") for line in lines) == 1
    rc, _, err = cli(["doctor"])
    assert rc == 2


# -- archives and URLs (the same checks on every store: tests/test_stores_parametrized.py) ----------


def _big_two_shards(prefix: str) -> dict:
    from ckptio.bundle.writer import BundleWriter

    rng = np.random.default_rng(5)
    arrays = {f"t{i}": rng.standard_normal(100_000).astype(np.float32) for i in range(6)}
    with BundleWriter(prefix, num_shards=2) as w:
        for i, (name, arr) in enumerate(arrays.items()):
            w.add_array(name, arr, shard=i % 2)
        w.finish(state_file=False)
    return arrays


def test_archive_cut_short_keeps_what_it_reached(tmp_path):
    """Random floats do not compress: cut in the second shard, the first shard's tensors are intact."""
    from ckptio.archive import pack

    originals = _big_two_shards(str(tmp_path / "c" / "ckpt"))
    archive = tmp_path / "c.tar.zst"
    pack(str(tmp_path / "c" / "ckpt"), archive, level=1)
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) - 200_000])
    d = diagnose(archive)
    assert d.format == "v2" and ("unreadable" in kinds(d) or "corrupt-tensor" in kinds(d)), d.problems
    assert d.intact and d.damaged and set(d.intact) | set(d.damaged) == set(originals)
    assert {"t0", "t2", "t4"} <= set(d.intact)  # shard 0 lies before the cut
    salvaged_equals(d, originals, tmp_path / "out" / "s")
    rc, lines, err = doctor_cli(archive)
    assert rc == 1 and err == "" and lines[-1].startswith("verdict: damaged:")


def test_archive_that_is_not_zstd_is_the_wrong_file(tmp_path):
    bogus = tmp_path / "x.tar.zst"
    bogus.write_bytes(b"not an archive" * 100)
    d = diagnose(bogus)
    assert kinds(d) == ["wrong-file"] and "zstandard" in d.problems[0].message


def test_archive_missing_a_shard_names_it(tmp_path):
    import tarfile

    import zstandard

    prefix = make_fixture("two_shards", tmp_path)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for f in (prefix + ".index", prefix + ".data-00000-of-00002"):
            tar.add(f, arcname=os.path.basename(f))
    archive = tmp_path / "m.tar.zst"
    archive.write_bytes(zstandard.ZstdCompressor().compress(buf.getvalue()))
    d = diagnose(archive)
    assert kinds(d) == ["missing-shard"] and d.problems[0].path == f"{archive}/ckpt.data-00001-of-00002"
    assert d.intact == ["layer0/w", "layer2/w", "layer4/w"]


def test_url_with_a_truncated_shard_is_salvaged_locally(tmp_path):
    fsspec = pytest.importorskip("fsspec")
    prefix = make_fixture("two_shards", tmp_path)
    originals = read_all(prefix)
    fs = fsspec.filesystem("memory")
    for f in files_of(prefix):
        data = Path(f).read_bytes()
        fs.pipe(f"/doctor-url-test/{os.path.basename(f)}", data[: len(data) // 2] if f.endswith("1-of-00002") else data)
    try:
        d = diagnose("memory:///doctor-url-test/ckpt")
        assert kinds(d) == ["truncated-shard"] and d.intact and d.damaged
        salvaged_equals(d, originals, tmp_path / "out" / "s")
    finally:
        fs.rm("/doctor-url-test", recursive=True)
