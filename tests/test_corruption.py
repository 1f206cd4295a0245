"""Corruption matrix: flipped bytes, truncations, missing and swapped shards, out-of-order keys.

Over checkpoints written by ckptio's BundleWriter (numeric, strings, sliced, two shards, an index
of many small blocks) and real corpus checkpoints copied to tmp (TF1 with optimizer slots, TF2
with the string object graph, two shards, V1). For every damaged copy:

- `ckptio verify` exits 1 with one line per problem whenever a checksummed byte changed (the
  metaindex included, which TF never reads), and 0 when only the footer's padding changed;
- open / iterate / read raise nothing but CkptioError, and every array they do return is
  bit-identical to the original;
- `doctor` agrees with verify on whether the checkpoint is healthy, and names the situation.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

import ckptio
from ckptio.bundle.entry import Entry
from ckptio.doctor import diagnose
from ckptio.errors import ChecksumError, CkptioError, CorruptCheckpointError, MissingShardError, TruncatedError

try:
    from corrupt_support import (
        FIXTURE_KINDS,
        cli,
        copy_corpus,
        files_of,
        make_fixture,
        raw_table,
        read_all,
        region_of,
        same,
        table_regions,
        write_bundle,
    )
except ImportError:  # tests/ imported as a package
    from .corrupt_support import (
        FIXTURE_KINDS,
        cli,
        copy_corpus,
        files_of,
        make_fixture,
        raw_table,
        read_all,
        region_of,
        same,
        table_regions,
        write_bundle,
    )

CORPUS_CASES = ["tf1_a3c_rmsprop", "tf2_newopt_vars", "sm_a2c_2shard", "est_tfx_taxi_2019", "v1_savenet"]
CASES = [f"built:{k}" for k in FIXTURE_KINDS] + [f"corpus:{n}" for n in CORPUS_CASES]
SAMPLE = 60  # evenly spaced offsets per file, on top of the footer and every block boundary


@dataclass
class Case:
    prefix: str
    files: list[str]
    originals: dict

    @property
    def v1(self) -> bool:
        return not os.path.exists(self.prefix + ".index")


V1_CASES = {"corpus:v1_savenet"}  # V1 keeps values inside the table: no data files, no entry crcs


def _make_case(param: str, tmp_path_factory) -> Case:
    kind, name = param.split(":")
    root = tmp_path_factory.mktemp(name)
    if kind == "corpus":
        prefix = copy_corpus(name, root)  # skips without the corpus (fails with $CI set)
    else:
        prefix = make_fixture(name, root)
    return Case(prefix, files_of(prefix), read_all(prefix))


@pytest.fixture(scope="module", params=CASES)
def case(request, tmp_path_factory) -> Case:
    return _make_case(request.param, tmp_path_factory)


@pytest.fixture(scope="module", params=[c for c in CASES if c not in V1_CASES])
def v2case(request, tmp_path_factory) -> Case:
    c = _make_case(request.param, tmp_path_factory)
    assert not c.v1
    return c


# -- the checks every damaged copy goes through ---------------------------------------------------


def read_everything(case: Case) -> dict:
    """Open, list and read every tensor; only CkptioError may escape a step, arrays must be exact."""
    got = {}
    try:
        ck = ckptio.open(case.prefix)
    except CkptioError:
        return got
    with ck:
        try:
            names = list(ck)
        except CkptioError:
            names = list(case.originals)  # listing failed: still try point lookups
        for name in names:
            try:
                arr = ck[name].read()
            except CkptioError:
                continue
            assert name in case.originals, f"a tensor appeared from nowhere: {name!r}"
            assert same(arr, case.originals[name]), f"wrong array for {name!r}"
            got[name] = arr
    return got


def verify_cli(case: Case) -> tuple[int, str]:
    rc, out, err = cli(["verify", "-q", case.prefix])
    assert rc in (0, 1), (rc, out, err)
    assert "Traceback" not in out + err
    if rc == 1:
        lines = err.strip().splitlines()
        assert lines, "exit 1 without a reason"
        assert all(line.startswith(("ckptio:", "CORRUPT:")) for line in lines), err
    return rc, err


def check(case: Case, expect: str, where: str) -> tuple[int, object]:
    """expect: 'bad' (verify must fail), 'fine' (must pass, all identical), 'either'."""
    rc, err = verify_cli(case)
    got = read_everything(case)
    d = diagnose(case.prefix)
    if expect == "bad":
        assert rc == 1, f"{where}: verify passed"
    if expect == "fine":
        assert rc == 0, f"{where}: verify failed: {err}"
    if rc == 0:
        assert set(got) == set(case.originals), f"{where}: verify passed but tensors are unreadable"
    assert d.healthy == (rc == 0), (
        f"{where}: doctor healthy={d.healthy} but verify rc={rc}: {[str(p) for p in d.problems]} / {err}"
    )
    assert set(d.intact) >= set(got) - set(d.damaged) or not d.healthy
    return rc, d


class Flipped:
    """Flip bit `bit` of byte `offset` in path for the duration of a with-block."""

    def __init__(self, path: str, offset: int, bit: int = 0):
        self.path, self.offset, self.mask = path, offset, 1 << bit

    def __enter__(self):
        with open(self.path, "r+b") as f:
            f.seek(self.offset)
            self.old = f.read(1)
            f.seek(self.offset)
            f.write(bytes([self.old[0] ^ self.mask]))
        return self

    def __exit__(self, *exc):
        with open(self.path, "r+b") as f:
            f.seek(self.offset)
            f.write(self.old)


class Truncated:
    def __init__(self, path: str, size: int):
        self.path, self.size = path, size

    def __enter__(self):
        self.data = Path(self.path).read_bytes()
        with open(self.path, "r+b") as f:
            f.truncate(self.size)
        return self

    def __exit__(self, *exc):
        Path(self.path).write_bytes(self.data)


def table_offsets(data: bytes, regions) -> list[int]:
    n = len(data)
    picks = set(range(max(0, n - 48), n))  # the whole footer
    for ranges in regions.values():
        for a, b in ranges:
            picks.update(o for o in (a, a + 1, a + 2, b - 5, b - 4, b - 1) if a <= o < b)
    picks.update(range(0, n, max(1, n // SAMPLE)))
    return sorted(o for o in picks if 0 <= o < n)


# -- single-byte flips ---------------------------------------------------------------------------


def test_flips_in_table_files(case):
    tables = [case.prefix + ".index"] if not case.v1 else case.files
    for path in tables:
        data = Path(path).read_bytes()
        regions = table_regions(data)
        for offset in table_offsets(data, regions):
            region = region_of(regions, offset)
            expect = {"checked": "bad", "harmless": "fine", "maybe": "either"}[region]
            with Flipped(path, offset, bit=offset % 8):
                check(case, expect, f"{os.path.basename(path)}@{offset} ({region})")


def test_flips_in_tensor_bytes(v2case):
    with ckptio.open(v2case.prefix) as ck:
        reader = ck._reader
        pieces = [(n, e) for n, e in reader.entries().items() if not e.slices]
        pieces += list(reader.slice_entries().items())
        shard_paths = {i: reader.shard_path(i) for i in range(reader.header.num_shards)}
    covered = {i: 0 for i in shard_paths}
    for name, entry in pieces:
        covered[entry.shard_id] += entry.size
        if entry.size == 0:
            continue
        offsets = {entry.offset, entry.offset + entry.size // 2, entry.offset + entry.size - 1}
        if entry.dtype == 7:  # string: every byte of the lengths and their checksum
            offsets.update(range(entry.offset, entry.offset + min(entry.size, entry.num_elements + 4)))
        label = name if isinstance(name, str) else repr(name)
        for offset in sorted(offsets):
            with Flipped(shard_paths[entry.shard_id], offset, bit=offset % 8):
                rc, d = check(v2case, "bad", f"{label}@{offset}")
                assert d.damaged, f"{label}@{offset}: doctor names no damaged tensor"
                assert {p.kind for p in d.problems} <= {"corrupt-tensor", "foreign-shard"}, d.problems
                if isinstance(name, str):
                    with ckptio.open(v2case.prefix) as ck:
                        with pytest.raises(CorruptCheckpointError):
                            ck[name].read()
    for i, path in shard_paths.items():  # TF leaves no unchecked byte in a data file
        assert covered[i] == os.path.getsize(path)


def test_numeric_flip_is_a_checksum_error(v2case):
    with ckptio.open(v2case.prefix) as ck:
        reader = ck._reader
        name, entry = next((n, e) for n, e in reader.entries().items() if not e.slices and e.size and e.dtype != 7)
        path = reader.shard_path(entry.shard_id)
    with Flipped(path, entry.offset + entry.size - 1, bit=3):
        with ckptio.open(v2case.prefix) as ck:
            with pytest.raises(ChecksumError) as info:
                ck[name].read()
    msg = str(info.value)
    assert "\n" not in msg and path in msg and "checksum does not match" in msg
    assert f"offset {entry.offset}" in msg


# -- truncation ----------------------------------------------------------------------------------


def cut_points(size: int) -> list[int]:
    points = {0, 1, 8, size // 3, size // 2, size - 49, size - 48, size - 47, size - 9, size - 8, size - 1}
    points.update(range(0, size, max(1, size // 12)))
    return sorted(p for p in points if 0 <= p < size)


def test_truncated_table(case):
    path = case.files[0]
    size = os.path.getsize(path)
    for cut in cut_points(size):
        with Truncated(path, cut):
            rc, d = check(case, "bad", f"{os.path.basename(path)} cut at {cut}")
            kinds = {p.kind for p in d.problems}
            named = {
                "truncated-index",
                "truncated-file",
                "bad-magic",
                "trailing-bytes",
                "unusable-index",
                "bad-footer",
                "bad-index-block",
                "corrupt-block",
            }
            if case.v1:  # cut inside its first block, a V1 file is indistinguishable from any other file
                named.add("wrong-file")
            assert kinds & named, kinds


def test_truncated_data_shard(v2case):
    with ckptio.open(v2case.prefix) as ck:
        reader = ck._reader
        entries = {n: e for n, e in reader.entries().items() if not e.slices}
        paths = [reader.shard_path(i) for i in range(reader.header.num_shards)]
    for shard, path in enumerate(paths):
        size = os.path.getsize(path)
        for cut in sorted({0, 1, size // 2, size - 1} - {size}):
            if cut < 0:
                continue
            with Truncated(path, cut):
                rc, d = check(v2case, "bad", f"{os.path.basename(path)} cut at {cut}")
                assert "truncated-shard" in {p.kind for p in d.problems}, d.problems
                with ckptio.open(v2case.prefix) as ck:
                    for name, e in entries.items():
                        if e.shard_id != shard or e.offset + e.size <= cut:
                            continue
                        with pytest.raises(TruncatedError):
                            ck[name].read()


# -- missing and swapped shards ------------------------------------------------------------------


def test_missing_shard(v2case, tmp_path):
    with ckptio.open(v2case.prefix) as ck:
        reader = ck._reader
        paths = [reader.shard_path(i) for i in range(reader.header.num_shards)]
        entries = {n: e for n, e in reader.entries().items() if not e.slices}
    for shard, path in enumerate(paths):
        moved = tmp_path / "moved"
        shutil.move(path, moved)
        try:
            rc, err = verify_cli(v2case)
            assert rc == 1 and "missing" in err
            d = diagnose(v2case.prefix)
            assert [p.kind for p in d.problems] == ["missing-shard"]
            assert os.path.basename(path) in str(d.problems[0])
            got = read_everything(v2case)
            with ckptio.open(v2case.prefix) as ck:
                for name, e in entries.items():
                    if e.shard_id == shard:
                        assert name not in got and name in d.damaged
                        with pytest.raises(MissingShardError):
                            ck[name].read()
                    else:
                        assert name in got
        finally:
            shutil.move(moved, path)


def test_shard_from_another_save(tmp_path):
    """Shard 1 replaced by shard 1 of a later save of the same model: same sizes, wrong bytes."""
    prefix = make_fixture("two_shards", tmp_path / "a")
    other = make_fixture("two_shards", tmp_path / "b", seed_offset=1.0)
    originals = read_all(prefix)
    shutil.copyfile(other + ".data-00001-of-00002", prefix + ".data-00001-of-00002")
    case = Case(prefix, files_of(prefix), originals)
    rc, d = check(case, "bad", "swapped shard")
    assert [p.kind for p in d.problems] == ["foreign-shard"], d.problems
    assert "data-00001-of-00002" in str(d.problems[0])
    assert len(d.damaged) == 3 and len(d.intact) == 3
    with ckptio.open(prefix) as ck:
        for name in d.damaged:
            with pytest.raises(ChecksumError):
                ck[name].read()


def test_shard_from_another_checkpoint(tmp_path):
    prefix = copy_corpus("sm_a2c_2shard", tmp_path)  # skips without the corpus (fails with $CI set)
    donor = copy_corpus("tf2_keras_weights_2shard", tmp_path)
    originals = read_all(prefix)
    shutil.copyfile(donor + ".data-00001-of-00002", prefix + ".data-00001-of-00002")
    case = Case(prefix, files_of(prefix), originals)
    rc, d = check(case, "bad", "foreign shard")
    assert "foreign-shard" in {p.kind for p in d.problems}, d.problems
    # the other shard is untouched: what lives there is still intact
    assert "_CHECKPOINTABLE_OBJECT_GRAPH" in d.intact


# -- keys: order, duplicates, header -------------------------------------------------------------


def _tiny_entries():
    import numpy as np

    from ckptio.sstable.coding import crc32c, mask

    a = np.arange(3, dtype=np.float32).tobytes()
    b = np.arange(2, dtype=np.int64).tobytes()
    ea = Entry(1, (3,), 0, 0, len(a), mask(crc32c(a))).encode()
    eb = Entry(9, (2,), 0, len(a), len(b), mask(crc32c(b))).encode()
    return a + b, ea, eb


@pytest.mark.parametrize("layout", ["unsorted", "duplicate", "no_header"])
def test_key_order_problems(tmp_path, layout):
    data, ea, eb = _tiny_entries()
    from ckptio.bundle.entry import Header

    head = (b"", Header().encode())
    items = {
        "unsorted": [head, (b"b", eb), (b"a", ea)],
        "duplicate": [head, (b"a", ea), (b"a", eb), (b"b", eb)],
        "no_header": [(b"a", ea), (b"b", eb)],
    }[layout]
    prefix = str(tmp_path / "ckpt")
    write_bundle(prefix, [], {0: data}, sort=False)
    Path(prefix + ".index").write_bytes(raw_table(items))
    rc, err = verify_cli(Case(prefix, files_of(prefix), {}))
    assert rc == 1
    with pytest.raises(CorruptCheckpointError):
        with ckptio.open(prefix) as ck:
            list(ck)
    d = diagnose(prefix)
    kinds = {p.kind for p in d.problems}
    expected = {"unsorted": "keys-out-of-order", "duplicate": "duplicate-key", "no_header": "bad-header"}[layout]
    assert expected in kinds, d.problems
