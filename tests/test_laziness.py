"""Laziness, by counting bytes: opening reads the footer, the index block and the first data
block; listing never touches data shards; a point lookup reads one index data block; reading a
tensor reads exactly its bytes; iter_chunks streams in bounded pieces.

Every read goes through a FileSource subclass that logs (file, offset, length), and the totals
are cross-checked with `Checkpoint.bytes_read` and with the file sizes parsed here independently.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pytest

import ckptio
from ckptio.bundle.writer import BundleWriter
from ckptio.errors import ChecksumError
from ckptio.io import FileSource

N_ENTRIES = 20_000


class LoggingSource(FileSource):
    """A FileSource that appends (basename, offset, length) to a shared log for every read."""

    log: list  # set per test through factory()

    def _pread(self, offset, length):
        data = super()._pread(offset, length)
        self.log.append((os.path.basename(self.name), offset, len(data)))
        return data

    def readinto(self, offset, buf):
        n = super().readinto(offset, buf)
        self.log.append((os.path.basename(self.name), offset, n))
        return n

    @classmethod
    def factory(cls, log):
        def open_source(path):
            src = cls(path)
            src.log = log
            opened.append(os.path.basename(path))
            return src

        opened: list = []
        open_source.opened = opened
        return open_source


def open_logged(path):
    log: list = []
    opener = LoggingSource.factory(log)
    return ckptio.open(path, open_source=opener), log, opener.opened


def index_layout(index_path) -> dict:
    """Footer, index block and data block handles of an .index, parsed without ckptio."""
    data = Path(index_path).read_bytes()

    def varint(buf, pos):
        v = shift = 0
        while True:
            b = buf[pos]
            pos += 1
            v |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                return v, pos

    foot = data[-48:]
    pos = 0
    handles = []
    for _ in range(4):
        v, pos = varint(foot, pos)
        handles.append(v)
    idx_off, idx_size = handles[2], handles[3]
    block = data[idx_off : idx_off + idx_size]
    n = struct.unpack_from("<I", block, len(block) - 4)[0]
    limit = len(block) - 4 - 4 * n
    pos, key, blocks = 0, b"", []
    while pos < limit:
        shared, pos = varint(block, pos)
        unshared, pos = varint(block, pos)
        vlen, pos = varint(block, pos)
        key = key[:shared] + block[pos : pos + unshared]
        pos += unshared
        off, p2 = varint(block, pos)
        size, _ = varint(block, p2)
        blocks.append((key, off, size))
        pos += vlen
    return {"file_size": len(data), "index": (idx_off, idx_size), "blocks": blocks}


def name_of(i: int) -> str:
    return f"tower_{i:05d}/encoder/layer_norm/attention/output/dense/kernel/ExponentialMovingAverage"


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    """A checkpoint with 20,000 small tensors and an index of many data blocks."""
    prefix = str(tmp_path_factory.mktemp("many") / "many")
    with BundleWriter(prefix) as w:
        for i in range(N_ENTRIES):
            w.add_bytes(name_of(i), 3, (2,), [struct.pack("<ii", i, -i)])
        w.add_array("big", np.arange(1000 * 64, dtype=np.float32).reshape(1000, 64))
        w.add_array("strings", np.array([b"alpha", b"", b"gamma" * 50], dtype=object))
        w.add_array("scalar", np.float64(2.5))
        w.add_array("empty", np.zeros((0, 3), np.int32))
        w.finish()
    layout = index_layout(prefix + ".index")
    assert len(layout["blocks"]) >= 8, "the index should span many data blocks"
    return prefix, layout


def test_open_reads_footer_index_and_first_block(many):
    prefix, layout = many
    ck, log, opened = open_logged(prefix)
    with ck:
        size = layout["file_size"]
        idx_off, idx_size = layout["index"]
        _, b0_off, b0_size = layout["blocks"][0]
        assert opened == ["many.index"]  # no data shard opened
        assert log == [
            ("many.index", size - 48, 48),
            ("many.index", idx_off, idx_size + 5),
            ("many.index", b0_off, b0_size + 5),
        ]
        assert ck.bytes_read == 48 + idx_size + 5 + b0_size + 5
        assert ck.bytes_read < size / 4


def test_point_lookup_reads_one_index_block(many):
    prefix, layout = many
    blocks = layout["blocks"]
    ck, log, opened = open_logged(prefix)
    with ck:
        for i in (0, 1, N_ENTRIES // 2, N_ENTRIES - 2, N_ENTRIES - 1):
            name = name_of(i)
            k = next(j for j, (sep, _, _) in enumerate(blocks) if sep >= name.encode())
            log.clear()
            before = ck.bytes_read
            t = ck[name]
            assert t.shape == (2,) and t.dtype_name == "int32" and t.nbytes == 8
            assert log == [("many.index", blocks[k][1], blocks[k][2] + 5)], name
            assert ck.bytes_read - before == blocks[k][2] + 5
        assert opened == ["many.index"]
        with pytest.raises(KeyError):
            ck["tower_99999/missing"]


def test_reading_a_tensor_reads_exactly_its_bytes(many):
    prefix, _ = many
    ck, log, opened = open_logged(prefix)
    with ck:
        for name in ("big", "strings", "scalar", name_of(123), "empty"):
            t = ck[name]
            e = t.entry
            log.clear()
            before = ck.bytes_read
            value = t.read()
            data_reads = [r for r in log if r[0].startswith("many.data-")]
            assert ck.bytes_read - before == e.size, name
            assert log == data_reads  # nothing re-read from the index
            if e.size:
                assert data_reads == [("many.data-00000-of-00001", e.offset, e.size)], name
            assert value.shape == t.shape
        assert ck["big"].read()[999, 63] == 1000 * 64 - 1
        assert ck[name_of(123)].read().tolist() == [123, -123]


def test_listing_never_touches_data_shards(many):
    prefix, layout = many
    ck, log, opened = open_logged(prefix)
    with ck:
        assert len(ck) == N_ENTRIES + 4
        names = list(ck)
        assert names == sorted(names) and name_of(7) in ck and "nope" not in ck
        total = sum(ck[n].nbytes for n in names)
        assert total == N_ENTRIES * 8 + 1000 * 64 * 4 + ck["strings"].entry.size + 8
        for n in names[:100]:
            ck[n].dtype_name, ck[n].shape, ck[n].size
        assert opened == ["many.index"]
        assert all(r[0] == "many.index" for r in log)
        # the whole index is read once for the listing, no block twice beyond block 0 at open
        assert ck.bytes_read <= layout["file_size"] + layout["blocks"][0][2] + 5


def test_iter_chunks_bounded_and_equal_to_read(many):
    prefix, _ = many
    ck, log, _ = open_logged(prefix)
    with ck:
        t = ck["big"]  # 1000 x 64 float32: 256 bytes per row
        whole = t.read()
        for max_bytes in (4096, 1000, 100, 1 << 30):
            log.clear()
            pieces = list(t.iter_chunks(max_bytes=max_bytes))
            rows = max(1, max_bytes // 256)
            assert all(p.shape[1:] == (64,) and p.dtype == np.float32 for p in pieces)
            assert all(p.nbytes <= max(max_bytes, 256) for p in pieces), max_bytes
            assert len(pieces) == -(-1000 // rows)
            assert np.array_equal(np.concatenate(pieces), whole)
            reads = [r for r in log if r[0].startswith("many.data-")]
            assert sum(r[2] for r in reads) == t.entry.size  # every byte read exactly once
            assert max(r[2] for r in reads) <= max(rows * 256, 256)  # memory stays bounded


@pytest.mark.parametrize("name", ["scalar", "empty", "strings", name_of(5)])
def test_iter_chunks_small_tensors(many, name):
    """Scalars, empty tensors, strings and tiny tensors: pieces still concatenate to read()."""
    prefix, _ = many
    with ckptio.open(prefix) as ck:
        t = ck[name]
        want = t.read()
        pieces = list(t.iter_chunks(max_bytes=16))
        assert pieces and all(p.dtype == want.dtype for p in pieces)
        if t.shape == ():
            assert len(pieces) == 1 and pieces[0].shape == () and pieces[0] == want
        else:
            assert all(p.shape[1:] == t.shape[1:] for p in pieces)
            got = np.concatenate(pieces)
            assert got.shape == want.shape and (got == want).all()


def test_iter_chunks_verifies_the_checksum(tmp_path):
    prefix = str(tmp_path / "c")
    with BundleWriter(prefix) as w:
        w.add_array("t", np.arange(4096, dtype=np.int64).reshape(512, 8))
        w.finish()
    path = prefix + ".data-00000-of-00001"
    data = bytearray(Path(path).read_bytes())
    data[-1] ^= 0xFF  # last row
    Path(path).write_bytes(bytes(data))
    with ckptio.open(prefix) as ck:
        it = ck["t"].iter_chunks(max_bytes=1024)
        first = next(it)
        assert first.tolist()[0] == list(range(8))  # earlier pieces stream before the check
        with pytest.raises(ChecksumError):
            list(it)


def test_v1_open_and_lookup_are_lazy(corpus):
    """A V1 checkpoint (values inside the table): open reads the metadata block, reading one
    tensor reads the one block that holds it."""
    path = corpus / "v1_vocal_adam" / "model.ckpt"
    layout = index_layout(path)
    assert len(layout["blocks"]) == 3
    ck, log, opened = open_logged(path)
    with ck:
        idx_off, idx_size = layout["index"]
        _, b0_off, b0_size = layout["blocks"][0]
        assert log == [
            ("model.ckpt", layout["file_size"] - 48, 48),
            ("model.ckpt", idx_off, idx_size + 5),
            ("model.ckpt", b0_off, b0_size + 5),
        ]
        n = len(ck)
        names = list(ck)
        assert n == 39 and len(log) == 3  # listing comes from the metadata entry only
        log.clear()
        ck[names[-1]].read()
        assert len(log) == 1 and (log[0][1], log[0][2]) in {(o, s + 5) for _, o, s in layout["blocks"]}
