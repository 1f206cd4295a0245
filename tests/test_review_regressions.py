"""Regression tests for bugs found in review: races in the threaded rewrite, leaked file
descriptors and threads, non-ckptio errors, and memory that grew with the tensor on a streaming path.

Each test failed before its fix. No TensorFlow needed.
"""

from __future__ import annotations

import errno
import importlib
import os
import random
import threading
import time
import tracemalloc

import numpy as np
import pytest

import ckptio
from ckptio.bundle import naming
from ckptio.bundle.entry import Entry, Header
from ckptio.bundle.v1 import V1Reader
from ckptio.bundle.writer import BundleWriter
from ckptio.errors import ChecksumError, CorruptCheckpointError, WriteError
from ckptio.io import FileSource
from ckptio.sstable.coding import crc32c, mask
from ckptio.sstable.table_builder import TableBuilder
from ckptio.transform import Cast

rewrite_module = importlib.import_module("ckptio.rewrite_exec")  # where rewrite() writes: CHUNK_BYTES, _write_piece

needs_proc_fd = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts /proc/self/fd")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def fd_target(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


def write_many(prefix: str, count: int = 200) -> dict:
    """A one-shard bundle of `count` small float32 tensors; returns {name: array}."""
    values = {f"t{i:04d}": np.full(16, i, np.float32) for i in range(count)}
    with BundleWriter(prefix) as w:
        for name, value in values.items():
            w.add_array(name, value)
        w.finish(state_file=False)
    return values


def write_big_endian(prefix: str, tensors: dict, dtypes: dict | None = None) -> None:
    """A big-endian bundle (FORMAT §4.6) of numeric arrays, data byte-swapped on disk; dtypes: name -> enum."""
    data, entries = bytearray(), {}
    for name, arr in tensors.items():
        arr = np.asarray(arr)
        stored = arr.byteswap().tobytes()
        dtype = (dtypes or {}).get(name) or {np.dtype(np.float32): 1, np.dtype(np.int32): 3, np.dtype(np.int64): 9}[
            arr.dtype
        ]
        entries[naming.encode_key(name)] = Entry(dtype, arr.shape, 0, len(data), len(stored), mask(crc32c(stored)))
        data += stored
    os.makedirs(os.path.dirname(prefix), exist_ok=True)
    with open(naming.data_path(prefix, 0, 1), "wb") as f:
        f.write(data)
    with open(naming.index_path(prefix), "wb") as f:
        builder = TableBuilder(f.write)
        builder.add(b"", Header(big_endian=True).encode())
        for key in sorted(entries):
            builder.add(key, entries[key].encode())
        builder.finish()


# -- Copier._check: several output shards queue crc checks at once ----------------------------


def test_parallel_copies_never_lose_a_checksum_mismatch(tmp_path, monkeypatch):
    """Unlocked, two shard threads in _check dropped each other's futures: a corrupt tensor was
    copied, its crc carried over, and the rewrite reported success."""
    src = str(tmp_path / "src" / "m")
    write_many(src)
    with ckptio.open(src) as c:
        entries = c.entries()
    data_path = naming.data_path(src, 0, 1)
    clean = open(data_path, "rb").read()
    # Send even these small tensors through the kernel copy and the checker thread, and slow
    # the checks down, as a busy machine does, so that checks of four shards pile up.
    from ckptio.bundle import copy as copy_mod

    monkeypatch.setattr(copy_mod, "KERNEL_COPY_MIN", 0)
    checks = []
    crc_segment = copy_mod._crc_segment

    def slow_crc_segment(*args):
        checks.append(args[1])
        time.sleep(0.0005)
        return crc_segment(*args)

    monkeypatch.setattr(copy_mod, "_crc_segment", slow_crc_segment)
    rng = random.Random(0)
    for trial in range(25):
        corrupt = bytearray(clean)
        name = f"t{rng.randrange(len(entries)):04d}"
        corrupt[entries[name].offset] ^= 1
        with open(data_path, "wb") as f:
            f.write(corrupt)
        with pytest.raises(ChecksumError):
            ckptio.rewrite(src, str(tmp_path / f"out{trial}" / "m"), num_shards=4)
        assert not (tmp_path / f"out{trial}" / "m.index").exists()
    assert checks  # the checker thread did the checking


# -- BundleReader.shard: opened lazily by several threads -------------------------------------------


def test_parallel_rewrite_opens_each_source_shard_once(tmp_path):
    """Rewrite threads raced to open the same source shard; all but one descriptor leaked."""
    src = str(tmp_path / "src" / "m")
    values = write_many(src, 40)
    opened = []

    def slow_open(path):
        if ".data-" in path:
            time.sleep(0.05)  # a slow disk: every thread arrives before the first open finishes
        source = FileSource(path)
        opened.append(source)
        return source

    ckpt = ckptio.Checkpoint(src, open_source=slow_open)
    try:
        ckptio.rewrite(ckpt, str(tmp_path / "out" / "m"), num_shards=4)
    finally:
        ckpt.close()
    assert len([s for s in opened if ".data-" in s.name]) == 1
    assert all(s.fileno() == -1 for s in opened)  # close() reached every source
    with ckptio.open(tmp_path / "out" / "m") as out:
        assert all(np.array_equal(out[n].read(), v) for n, v in values.items())


# -- descriptors on failed opens -----------------------------------------------------------------------


@needs_proc_fd
def test_failed_v2_open_closes_the_index(tmp_path):
    prefix = str(tmp_path / "m")
    write_many(prefix, 3)
    index = bytearray(open(naming.index_path(prefix), "rb").read())
    index[5] ^= 0xFF  # data block 0 checksum
    open(naming.index_path(prefix), "wb").write(index)
    before = open_fds()
    for _ in range(20):
        with pytest.raises(CorruptCheckpointError):
            ckptio.open(prefix)
    assert open_fds() == before


@needs_proc_fd
def test_failed_v1_open_closes_every_file(tmp_path):
    good = str(tmp_path / "good")
    write_many(good, 3)  # any table opens; the second file is not one
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x00" * 100)
    before = open_fds()
    for _ in range(20):
        with pytest.raises(CorruptCheckpointError):
            V1Reader([naming.index_path(good), str(bad)])
    assert open_fds() == before


# -- BundleWriter.finish --------------------------------------------------------------------------------


def test_finish_stops_the_checker_thread(tmp_path, monkeypatch):
    """The crc checker thread outlived finish() for as long as the writer was referenced."""
    from ckptio.bundle import copy as copy_mod

    monkeypatch.setattr(copy_mod, "KERNEL_COPY_MIN", 0)  # these tiny tensors too go through the checker
    started = []
    real_init = copy_mod.Checker.__init__
    monkeypatch.setattr(copy_mod.Checker, "__init__", lambda self, n: started.append(n) or real_init(self, n))
    src = str(tmp_path / "src" / "m")
    write_many(src, 5)
    with ckptio.open(src) as c:
        reader = c._reader
        writer = BundleWriter(str(tmp_path / "out" / "m"))
        with writer:
            for name, entry in c.entries().items():
                writer.copy(name, entry, reader.shard(entry.shard_id), name=name)
            writer.finish()
        assert started and not [t for t in threading.enumerate() if t.name.startswith("ckptio-crc")]
        assert writer is not None


def fail_writes_to(monkeypatch, marker: str) -> None:
    """os.write fails with ENOSPC on files whose path contains marker (a disk filling up)."""
    real = os.write

    def write(fd, data):
        if marker in fd_target(fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data)

    monkeypatch.setattr(os, "write", write)


@needs_proc_fd
def test_index_write_failure_closes_its_descriptor(tmp_path, monkeypatch):
    write_many(str(tmp_path / "warm" / "m"), 1)  # imports and caches done before counting
    before = open_fds()
    fail_writes_to(monkeypatch, ".index.ckptio-tmp")
    with pytest.raises(WriteError):
        with BundleWriter(str(tmp_path / "out" / "m")) as w:
            w.add_array("a", np.arange(3.0))
            w.finish()
    assert open_fds() == before
    assert os.listdir(tmp_path / "out") == []


@needs_proc_fd
def test_state_file_write_failure_is_a_write_error(tmp_path, monkeypatch):
    """A full disk while writing `checkpoint` raised a bare OSError and leaked the descriptor.

    The checkpoint is complete by then: the failure is a StateFileWarning naming the WriteError."""
    from ckptio.errors import StateFileWarning

    write_many(str(tmp_path / "warm" / "m"), 1)
    before = open_fds()
    fail_writes_to(monkeypatch, "checkpoint.ckptio-tmp")
    with pytest.warns(StateFileWarning, match="was not updated .*cannot write"):
        with BundleWriter(str(tmp_path / "out" / "m")) as w:
            w.add_array("a", np.arange(3.0))
            w.finish()
    assert w.state_file.startswith("failed: ")
    assert open_fds() == before
    assert not [n for n in os.listdir(tmp_path / "out") if "ckptio-tmp" in n]


# -- rewrite: memory bounded by the chunk, whatever the tensor's shape or byte order ---------------


def peak_rewrite_bytes(src, dst, steps=()) -> int:
    tracemalloc.start()
    try:
        ckptio.rewrite(src, dst, steps, state_file=False)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_cast_of_one_huge_row_streams(tmp_path, monkeypatch):
    """Casts were chunked by rows, so a [1, N] tensor was read and cast whole."""
    src = str(tmp_path / "src" / "m")
    value = np.random.default_rng(0).standard_normal((1, 2 << 20)).astype(np.float32)  # 8 MiB, one row
    with BundleWriter(src) as w:
        w.add_array("row", value)
        w.finish(state_file=False)
    monkeypatch.setattr(rewrite_module, "CHUNK_BYTES", 1 << 16)
    dst = str(tmp_path / "out" / "m")
    assert peak_rewrite_bytes(src, dst, [Cast("bfloat16")]) < 3 << 20  # ~20 MiB before
    with ckptio.open(dst) as out:
        got = out["row"].read()
    assert got.shape == value.shape and got.tobytes() == value.astype(got.dtype).tobytes()


def test_big_endian_input_streams(tmp_path, monkeypatch):
    """Big-endian tensors were decoded whole (read, byte-swapped, re-encoded) however large."""
    src = str(tmp_path / "src" / "m")
    rng = np.random.default_rng(1)
    tensors = {
        "big": rng.standard_normal((512, 4096)).astype(np.float32),  # 8 MiB
        "scalar": np.float32(2.5),
        "ids": np.arange(-3, 5, dtype=np.int64),
        "empty": np.zeros((0, 3), np.float32),
    }
    write_big_endian(src, tensors)
    monkeypatch.setattr(rewrite_module, "CHUNK_BYTES", 1 << 16)
    dst = str(tmp_path / "out" / "m")
    assert peak_rewrite_bytes(src, dst) < 3 << 20  # ~16 MiB before
    cast = str(tmp_path / "cast" / "m")
    ckptio.rewrite(src, cast, [Cast("bfloat16")], num_shards=2)
    with ckptio.open(dst) as out, ckptio.open(cast) as bf16:
        assert not out.header.big_endian
        for name, want in tensors.items():
            want = np.asarray(want)
            got = out[name].read()
            assert got.dtype == want.dtype and got.shape == want.shape and got.tobytes() == want.tobytes(), name
            got = bf16[name].read()
            if want.dtype == np.float32:
                want = want.astype(got.dtype)
            assert got.dtype == want.dtype and got.shape == want.shape and got.tobytes() == want.tobytes(), name


# -- quantized dtypes survive a decode/re-encode (V1 and big-endian inputs) -----------------------------


def write_v1(path: str, tensors: dict) -> None:
    """A V1 table: {name: (DataType enum, int array, slices or None for one full slice)}, values in int_val."""
    from ckptio._proto import saved_tensor_slice_pb2 as pb
    from ckptio.bundle.slices import Slice, encode_key, to_proto

    meta = pb.SavedTensorSlices()
    meta.meta.versions.producer = 1
    items = []
    for name, (dtype, arr, slices) in tensors.items():
        t = meta.meta.tensor.add()
        t.name, t.type = name, dtype
        for d in arr.shape:
            t.shape.dim.add().size = d
        for s in slices or [Slice(tuple((0, None) for _ in arr.shape))]:
            to_proto(s, t.slice.add())
            data = pb.SavedTensorSlices()
            data.data.name = name
            to_proto(s, data.data.slice)
            part = arr[tuple(slice(a, b) for a, b in s.bounds(arr.shape))]
            data.data.data.int_val.extend(int(v) for v in part.reshape(-1))
            items.append((encode_key(name, s), data.SerializeToString()))
    with open(path, "wb") as f:
        builder = TableBuilder(f.write)
        builder.add(b"", meta.SerializeToString())
        for key, value in sorted(items):
            builder.add(key, value)
        builder.finish()


def test_v1_quantized_tensors_keep_their_dtype(tmp_path):
    """V1 tensors were re-encoded under numpy's dtype: qint8 became int8 (TF's RestoreV2 of the
    qint8 variable then fails), and a sliced one got int8 slices under qint8 metadata."""
    from ckptio.bundle.slices import Slice

    src = str(tmp_path / "q.ckpt")
    rows = [Slice(((0, 1), (0, None))), Slice(((1, 2), (0, None)))]
    tensors = {
        "qi8": (11, np.array([-3, 4, 5], np.int8), None),
        "qu8": (12, np.array([3, 250], np.uint8), None),
        "qi32": (13, np.array([-70000, 5], np.int32), None),
        "parts": (11, np.arange(-6, 6, dtype=np.int8).reshape(3, 4), rows),
    }
    write_v1(src, tensors)
    dst = str(tmp_path / "out" / "m")
    ckptio.rewrite(src, dst, num_shards=2)
    with ckptio.open(src) as a, ckptio.open(dst) as b:
        for name, (dtype, value, _) in tensors.items():
            assert a[name].entry.dtype == dtype
            assert b[name].entry.dtype == dtype, name
            assert b[name].read().tobytes() == value.tobytes(), name


def test_salvage_of_big_endian_quantized_keeps_dtype(tmp_path):
    from ckptio.doctor import diagnose, salvage

    src = str(tmp_path / "src" / "m")
    value = np.array([-3, 4, 5], np.int32)
    write_big_endian(src, {"q": value}, dtypes={"q": 13})  # qint32
    out = str(tmp_path / "out" / "m")
    salvage(diagnose(src), out)
    with ckptio.open(out) as c:
        assert c["q"].dtype_name == "qint32"
        assert c["q"].read().tobytes() == value.tobytes()


# -- batch: a damaged state file in an input directory ---------------------------------------------------


@pytest.mark.parametrize("text", [b'model_checkpoint_path: "m" garbage {', b"\xff\xfe binary"])
def test_batch_input_with_unparsable_state_file_is_a_ckptio_error(tmp_path, text):
    """expand_inputs let protobuf's ParseError (or UnicodeDecodeError) escape: a traceback from the CLI."""
    from ckptio.batch import expand_inputs
    from ckptio.errors import WrongFileError

    (tmp_path / "checkpoint").write_bytes(text)
    with pytest.raises(WrongFileError, match="state file"):
        expand_inputs([str(tmp_path)])


# -- rewrite.execute: one shard fails, the others stop ------------------------------------------------------


def test_failing_shard_stops_the_other_shard_threads(tmp_path, monkeypatch):
    """After one shard thread failed, the others went on writing their whole shards (minutes on
    a big checkpoint; Ctrl-C waited for them the same way) before the error was raised."""
    src = str(tmp_path / "src" / "m")
    write_many(src, 200)
    real = rewrite_module._write_piece
    calls = []

    def write_piece(ckpt, writer, piece, shard, verify):
        calls.append(piece.name)
        if shard == 0:
            raise ChecksumError("simulated", key=piece.name)
        time.sleep(0.005)
        return real(ckpt, writer, piece, shard, verify)

    monkeypatch.setattr(rewrite_module, "_write_piece", write_piece)
    with pytest.raises(ChecksumError, match="simulated"):
        ckptio.rewrite(src, str(tmp_path / "out" / "m"), num_shards=4)
    assert len(calls) < 20  # 150 before: every piece of shards 1-3
    assert not (tmp_path / "out" / "m.index").exists()


def test_salvage_of_v1_quantized_keeps_dtype(tmp_path):
    from ckptio.doctor import diagnose, salvage

    src = str(tmp_path / "q.ckpt")
    value = np.array([-3, 4, 5], np.int8)
    write_v1(src, {"q": (11, value, None)})  # qint8
    out = str(tmp_path / "out" / "m")
    salvage(diagnose(src), out)
    with ckptio.open(out) as c:
        assert c["q"].dtype_name == "qint8"
        assert c["q"].read().tobytes() == value.tobytes()
