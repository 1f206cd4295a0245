"""The fast paths behind `ckptio ls` on big indexes agree with the general ones they stand in for.

- Entry.parse decodes the wire form TensorFlow writes without protobuf and hands everything
  else to protobuf: on any bytes, it must give what parse_with_protobuf gives (the same Entry,
  or the same error type and message). Checked on hand-picked malformed entries, every entry of
  the corpus, generated entries, and seeded random mutations of them.
- Header.parse likewise.
- Table iteration decodes whole blocks and checks their order in C; on a damaged block it must
  still yield exactly what precedes the fault and raise the same error as the per-entry walk.
- `ls --json` formats each entry itself: byte for byte what json.dumps of the entry dicts gave.
"""

from __future__ import annotations

import dataclasses
import json
import random
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ckptio.bundle import entry as entry_module
from ckptio.bundle.entry import MAX_RANK, Entry, Header, parse_with_protobuf
from ckptio.bundle.slices import Slice
from ckptio.bundle.slices import encode_key as slice_key
from ckptio.bundle.writer import BundleWriter
from ckptio.errors import CkptioError, CorruptCheckpointError
from ckptio.io import FileSource, MemorySource
from ckptio.sstable import Table, TableBuilder
from ckptio.sstable.block import Block

try:
    from support import require_corpus
except ImportError:  # tests/ imported as a package
    from .support import require_corpus


def outcome(parse, value: bytes):
    """What a parse gives: ("ok", fields) or ("error", type name, message)."""
    try:
        return ("ok", dataclasses.astuple(parse(value)))
    except CkptioError as exc:
        return ("error", type(exc).__name__, str(exc))


def protobuf_header(value: bytes):
    """Header.parse with the fast path switched off."""
    fast = entry_module._parse_common_header
    entry_module._parse_common_header = lambda v: None
    try:
        return Header.parse(value)
    finally:
        entry_module._parse_common_header = fast


def same_as_protobuf(value: bytes) -> None:
    assert outcome(Entry.parse, value) == outcome(parse_with_protobuf, value), value.hex(" ")


# --------------------------------------------------------------------------- entries


def test_what_tensorflow_writes_takes_the_fast_path():
    for e in (
        Entry(1, (3, 2), offset=32, size=24, crc32c=0xDE037D21),
        Entry(1, (), size=4, crc32c=0x67170879),  # scalar: an empty shape message
        Entry(1, (0,), crc32c=0xA282EAD8),  # a size-0 dim is an empty Dim
        Entry(14, (1024, 4096), shard_id=3, offset=(1 << 40) + 5, size=8 << 20, crc32c=0xFFFFFFFF),
        Entry(7, (2,), size=20, crc32c=1),
        Entry(0, ()),  # dtype 0, scalar
    ):
        raw = e.encode()
        assert entry_module._parse_common(raw) is not None
        assert Entry.parse(raw) == e == parse_with_protobuf(raw)
        assert type(Entry.parse(raw)) is Entry
        assert Entry.parse(bytearray(raw)) == e == Entry.parse(memoryview(raw))  # any bytes-like value


MALFORMED = [
    "08",  # truncated varint
    "08 81",  # truncated multi-byte varint
    "12 05 12 02 08 04",  # shape runs past the end
    "12 04 12 05 08 04",  # dim runs past the shape
    "12 02 12 00 12",  # trailing tag with nothing after it
    "12 08 12 06 08 04 12 02 61 62",  # dim with a name
    "12 04 12 02 10 04",  # dim with an unknown field
    "12 06 12 04 08 04 08 05",  # dim size twice (protobuf: last wins)
    "12 02 18 01",  # unknown_rank
    "12 02 18 00",  # unknown_rank explicitly false
    "08 01 08 02",  # dtype twice
    "12 00 08 01",  # fields out of order
    "12 00 12 04 12 02 08 03",  # shape twice (protobuf merges)
    "08 01 12 0d 12 0b 08 ff ff ff ff ff ff ff ff ff 01",  # negative dim (10-byte varint)
    "08 ff ff ff ff 0f",  # dtype 2**32 - 1: an int32 -1
    "08 80 80 80 80 08",  # dtype 2**31
    "18 ff ff ff ff ff ff ff ff ff 01",  # negative shard_id
    "20 ff ff ff ff ff ff ff ff ff 01",  # negative offset
    "28 80 80 80 80 80 80 80 80 80 02",  # 11-byte varint
    "35 01 02 03",  # truncated fixed32
    "0d 01 00 00 00",  # dtype with the wrong wire type
    "78 07",  # unknown field 15
    "82 01 02 68 69",  # unknown field 16 (two-byte tag)
    "00",  # field 0
    "3a 00",  # an empty slice
    "12 82 01" + " 12 02 08 01" * 32 + " 12 00",  # rank 33: allowed, the length a two-byte varint
    "12 " + "82 02" + " 12 02 08 02" * 65,  # rank 65 (over MAX_RANK); length 0x102
    "12 40" + " 12 06 08 80 80 80 80 40" * 8,  # 2**63+ elements: too many
]


@pytest.mark.parametrize("hex_value", MALFORMED)
def test_malformed_and_unusual_entries_match_protobuf(hex_value):
    same_as_protobuf(bytes.fromhex(hex_value))


def test_rank_and_element_limits_give_the_same_errors():
    with pytest.raises(CorruptCheckpointError, match="rank 65"):
        Entry.parse(Entry(1, (1,) * (MAX_RANK + 1)).encode())
    with pytest.raises(CorruptCheckpointError, match="too many elements"):
        Entry.parse(Entry(1, (1 << 30,) * 3).encode())
    assert Entry.parse(Entry(1, (1,) * MAX_RANK).encode()).shape == (1,) * MAX_RANK


def test_sliced_entries_go_through_protobuf():
    e = Entry(1, (6, 4), shard_id=2, slices=(Slice(((0, 2), (0, None))), Slice(((2, 4), (0, None)))))
    assert entry_module._parse_common(e.encode()) is None
    assert Entry.parse(e.encode()) == e


def test_every_corpus_entry_agrees_and_takes_the_fast_path():
    corpus = require_corpus()
    seen = 0
    for index in sorted(corpus.rglob("*.index")):
        try:
            items = list(Table(FileSource(str(index))))
        except CkptioError:
            continue  # not a table (a V1 file, a SavedModel variable index is still one)
        for key, value in items:
            if key == b"":
                assert entry_module._parse_common_header(value) is not None, index
                assert Header.parse(value) == protobuf_header(value)
                continue
            same_as_protobuf(value)
            if not key.startswith(b"\x00"):  # stored slices are entries of the same form
                assert entry_module._parse_common(value) is not None or parse_with_protobuf(value).slices, (index, key)
            seen += 1
    assert seen > 500


entries = st.builds(
    Entry,
    st.integers(0, 40) | st.integers(0, (1 << 31) - 1),
    st.lists(st.integers(0, 5) | st.integers(0, 1 << 40), max_size=6).map(tuple),
    st.integers(0, 1 << 20),
    st.integers(0, 1 << 62),
    st.integers(0, 1 << 62),
    st.integers(0, (1 << 32) - 1),
)


@settings(max_examples=300, deadline=None)
@given(entries)
def test_generated_entries_round_trip(e):
    raw = e.encode()
    same_as_protobuf(raw)
    if e.problem() is None:
        assert Entry.parse(raw) == e


def _mutate(rng: random.Random, value: bytes, pool: list[bytes]) -> bytes:
    v = bytearray(value)
    for _ in range(rng.choice((1, 1, 2, 3))):
        op = rng.random()
        if op < 0.4 and v:
            v[rng.randrange(len(v))] = rng.randrange(256)
        elif op < 0.55 and v:
            del v[rng.randrange(len(v)) :]
        elif op < 0.8:
            at = rng.randrange(len(v) + 1)
            v[at:at] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 4)))
        else:
            v += rng.choice(pool)
    return bytes(v)


def test_fuzz_mutated_entries_match_protobuf():
    """Seeded random mutations of real-looking entries: both parses agree on every one."""
    rng = random.Random(1234)
    pool = [
        Entry(
            rng.choice((0, 1, 3, 9, 14, 19, 99)),
            tuple(rng.choice((0, 1, 3, 128, 4096, 1 << 33)) for _ in range(rng.choice((0, 1, 2, 4)))),
            rng.choice((0, 0, 7)),
            rng.choice((0, 300, 1 << 35)),
            rng.choice((0, 4, 1 << 20)),
            rng.randrange(1 << 32),
        ).encode()
        for _ in range(100)
    ]
    fast = 0
    for _ in range(20_000):
        value = _mutate(rng, rng.choice(pool), pool)
        same_as_protobuf(value)
        fast += entry_module._parse_common(value) is not None
    assert fast > 1000  # the mutations reach the fast path too, not only the fallback


# --------------------------------------------------------------------------- header


@pytest.mark.parametrize(
    "hex_value",
    [
        "08 01 1a 02 08 01",  # what TF writes
        "08 04 10 01 1a 04 08 01 10 01",  # big-endian, min_consumer 1
        "08 01",  # no version
        "08 01 1a 00",
        "",  # no shards: an error
        "08 01 10 02 1a 02 08 01",  # unknown endianness: an error
        "08 01 1a 02 08 01 1a 02 08 02",  # version twice (protobuf merges)
        "08 01 1a 04 08 01 18 05",  # bad_consumers: protobuf
        "08 01 1a 04 08 01 10 02",  # min_consumer 2: unsupported
        "08 ff ff ff ff 0f",  # -1 shards
        "08 01 1a 05 08 01",  # version runs past the end
        "08",  # truncated
        "10 01 08 01",  # out of order
        "78 01 08 01",  # unknown field
    ],
)
def test_headers_match_protobuf(hex_value):
    value = bytes.fromhex(hex_value)
    assert outcome(Header.parse, value) == outcome(protobuf_header, value)


def test_fuzz_mutated_headers_match_protobuf():
    rng = random.Random(99)
    pool = [Header(1).encode(), Header(3, True).encode(), Header(2, False, 5, 1, (2, 3)).encode(), b"\x08\x01"]
    for _ in range(5_000):
        value = _mutate(rng, rng.choice(pool), pool)
        assert outcome(Header.parse, value) == outcome(protobuf_header, value), value.hex(" ")


# --------------------------------------------------------------------------- table iteration


def _table(keys: list[bytes], block_size: int = 64) -> bytes:
    out = bytearray()
    b = TableBuilder(out.extend, block_size=block_size, restart_interval=4)
    for k in keys:
        b.add(k, b"v" + k)
    b.finish()
    return bytes(out)


def test_block_items_equal_entries():
    data = _table([b"key%05d" % i for i in range(500)])
    table = Table(MemorySource(data))
    for i in range(len(table.index)):
        block = table.block(i)
        keys, values = block.items()
        assert list(zip(keys, values)) == list(block.entries())
    assert [k for k, _ in table] == [b"key%05d" % i for i in range(500)]


def _walk(table: Table):
    """(items yielded, error) of a full iteration."""
    got = []
    try:
        for item in table:
            got.append(item)
    except CkptioError as exc:
        return got, str(exc)
    return got, None


def test_damaged_blocks_yield_what_precedes_the_fault():
    """Each data block, corrupted in turn (a key out of order, a bad entry header): the fast path
    gives way to the per-entry walk, which yields the entries before the fault, then raises."""
    keys = [b"key%05d" % i for i in range(200)]
    data = _table(keys)
    table = Table(MemorySource(data))
    handle = table.index[3][1]
    start = handle.offset
    block = data[start : start + handle.size]
    # The first entry of a block is a restart (shared 0): its header is 3 one-byte varints, then the key.
    first_key = block[3 : 3 + block[1]]
    cases = {
        # the block's first key changed to sort before the previous block's last key
        "out of order": block[:3] + b"aaa" + first_key[3:] + block[3 + len(first_key) :],
        # its first header says the key is longer than the block
        "runs past": block[:1] + b"\x7f" + block[2:],
    }
    for what, damaged in cases.items():
        bad = bytearray(data)
        bad[start : start + handle.size] = damaged
        t = Table(MemorySource(bytes(bad)), verify=False)
        got, error = _walk(t)
        before = sum(len(t.block(i).items()[0]) for i in range(3))
        assert [k for k, _ in got] == keys[:before], what
        assert error is not None and what in error


def test_key_beyond_separator_is_caught():
    keys = [b"key%05d" % i for i in range(100)]
    data = _table(keys)
    table = Table(MemorySource(data))
    table.index[0] = (b"key00000", table.index[0][1])  # a separator below the block's last key
    got, error = _walk(table)
    assert [k for k, _ in got] == [b"key00000"]
    assert "beyond its index separator" in error


def test_whole_and_per_entry_iteration_agree_on_flipped_bytes():
    keys = [b"k/%03d/x" % i for i in range(120)]
    data = _table(keys, block_size=128)
    rng = random.Random(5)
    for _ in range(300):
        bad = bytearray(data)
        bad[rng.randrange(len(data) - 48)] ^= 1 << rng.randrange(8)
        try:
            table = Table(MemorySource(bytes(bad)), verify=False)
        except CkptioError:
            continue
        got, error = _walk(table)
        slow, slow_error = [], None
        last = None
        try:
            for i in range(len(table.index)):
                for key, value in table.block(i).entries():
                    if last is not None and key <= last:
                        raise CorruptCheckpointError("order")
                    if key > table.index[i][0]:
                        raise CorruptCheckpointError("separator")
                    last = key
                    slow.append((key, value))
        except CkptioError as exc:
            slow_error = str(exc)
        assert got == slow
        assert (error is None) == (slow_error is None)


# --------------------------------------------------------------------------- ls --json


def test_ls_json_is_what_json_dumps_of_the_entry_dicts_gives(tmp_path, capsys):
    from ckptio.cli.ls import _json_entries
    from ckptio.cli.main import main

    prefix = str(tmp_path / "model.ckpt")
    full = np.arange(24, dtype=np.float32).reshape(6, 4)
    rows = [Slice(((0, 2), (0, None))), Slice(((2, 4), (0, None)))]
    names = ['a"quote\\', "ctl\x01\n", "ünï/cödé", "emoji/\U0001f600", "bad\udcffbyte", "dense/kernel/Adam", "s"]
    with BundleWriter(prefix) as w:
        for i, name in enumerate(names):
            w.add_array(name, np.ones((i, 2, 1)[: i % 3], np.float16 if i % 2 else np.int64))
        w.add_array("strings", np.array([b"x", b"yz"], dtype=object))
        w.add_entry("part", Entry(1, full.shape, slices=tuple(rows)))
        for s in rows:
            w.add_array(slice_key("part", s), full[tuple(slice(a, b) for a, b in s.bounds(full.shape))])
        w.finish()
    assert main(["ls", "--json", prefix]) == 0
    text = capsys.readouterr().out
    doc = json.loads(text)
    expected = [
        {k: e[k] for k in ("name", "dtype", "shape", "nbytes", "role", "shard", "offset", "size", "crc32c", "slices")}
        for e in doc["entries"]
    ]
    assert text == json.dumps(doc) + "\n"  # the whole document, separators and escapes included
    assert [json.loads(s) for s in _json_entries(_rows(doc))] == expected
    assert {e["name"] for e in doc["entries"]} == set(names) | {"strings", "part"}
    assert next(e for e in doc["entries"] if e["name"] == "part")["slices"] == ["0,2:-", "2,4:-"]


def _rows(doc):
    """ls rows rebuilt from its JSON: (name, dtype, shape, nbytes, role, entry-like)."""
    from types import SimpleNamespace

    out = []
    for e in doc["entries"]:
        slices = [SimpleNamespace(spec=lambda s=s: s) for s in e["slices"]]
        entry = SimpleNamespace(
            shard_id=e["shard"], offset=e["offset"], size=e["size"], crc32c=e["crc32c"], slices=slices
        )
        out.append((e["name"], e["dtype"], tuple(e["shape"]), e["nbytes"], e["role"], entry))
    return out


def test_ls_sorts_by_key_bytes_with_and_without_undecodable_names(tmp_path, capsys):
    from ckptio.cli.main import main

    for names in (["b", "a", "é", "z"], ["b", "a\udcff", "a\U0001f600", "\ue000", "z"]):
        prefix = str(tmp_path / f"m{len(names)}" / "model.ckpt")
        with BundleWriter(prefix) as w:
            for name in names:
                w.add_array(name, np.zeros(1, np.float32))
            w.finish()
        assert main(["ls", "--json", prefix]) == 0
        listed = [e["name"] for e in json.loads(capsys.readouterr().out)["entries"]]
        assert listed == sorted(names, key=lambda n: n.encode("utf-8", "surrogateescape"))


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
