"""Helpers for the corruption, fuzz, hostile-limit and doctor tests.

CORPUS                               the real-world corpus root (used in place, copied to tmp)
copy_corpus(name, directory)         copy one corpus checkpoint's files; return its prefix there
make_fixture(kind, directory)        a checkpoint written with ckptio's BundleWriter; return prefix
reindex(prefix, block_size, restart) rewrite the .index with tiny blocks (several data blocks)
raw_table(items)                     table bytes with items in the given order (no order checks)
write_bundle(prefix, items, shards)  .index from (key, value bytes) + data files, no validation
read_all(prefix)                     {name: array} of every tensor, via ckptio.open
same(a, b)                           bit-identical arrays (strings element by element)
table_regions(data)                  byte ranges of a table file, by what TF checks there
cli(argv)                            (exit code, stdout, stderr) of ckptio.cli.main.main(argv)
files_of(prefix)                     the files of a V2 prefix or V1 file/pattern
"""

from __future__ import annotations

import contextlib
import glob
import io
import json
import os
import shutil
import struct
from pathlib import Path

import numpy as np

import ckptio
from ckptio.bundle import naming
from ckptio.bundle.entry import Entry, Header
from ckptio.bundle.slices import Slice
from ckptio.bundle.slices import encode_key as slice_key
from ckptio.bundle.writer import BundleWriter
from ckptio.io import MemorySource
from ckptio.sstable import Table, TableBuilder
from ckptio.sstable.coding import encode_varint
from ckptio.sstable.format import FOOTER_SIZE, BlockHandle, Footer, encode_trailer

try:
    from support import CORPUS, require_corpus
except ImportError:  # tests/ imported as a package
    from .support import CORPUS, require_corpus


def corpus_manifest() -> dict:
    return json.loads((require_corpus() / "MANIFEST.json").read_text())


def corpus_record(name: str) -> dict:
    return next(c for c in corpus_manifest()["checkpoints"] if c["short_name"] == name)


def files_of(prefix: str) -> list[str]:
    if os.path.exists(prefix + ".index"):
        return [prefix + ".index"] + sorted(glob.glob(glob.escape(prefix) + ".data-?????-of-?????"))
    if os.path.isfile(prefix):
        return [prefix]
    return sorted(glob.glob(glob.escape(prefix) + "-?????-of-?????"))


def copy_corpus(name: str, directory) -> str:
    """Copy corpus checkpoint `name` into directory (writable); return the prefix of the copy."""
    rec = corpus_record(name)
    src_prefix = str(CORPUS / rec["prefix"])
    dst = Path(directory) / name
    dst.mkdir(parents=True, exist_ok=True)
    for f in files_of(src_prefix):
        target = dst / os.path.basename(f)
        shutil.copyfile(f, target)
        os.chmod(target, 0o644)
    return str(dst / os.path.basename(src_prefix))


# -- checkpoints written by ckptio ---------------------------------------------------------------

FIXTURE_KINDS = ("numeric", "strings", "sliced", "two_shards", "multiblock")


def fixture_arrays(kind: str) -> dict:
    rng = np.random.default_rng(7)
    if kind == "numeric":
        import ml_dtypes

        return {
            "dense/kernel": rng.standard_normal((3, 4)).astype(np.float32),
            "dense/bias": np.arange(4, dtype=np.float64),
            "global_step": np.array(1234, dtype=np.int64),
            "mask": np.array([True, False, True]),
            "emb": rng.standard_normal((5, 2)).astype(ml_dtypes.bfloat16),
            "empty": np.zeros((0, 3), dtype=np.float32),
        }
    if kind == "strings":

        def objs(items, shape=None):
            a = np.empty(len(items), dtype=object)
            a[:] = items
            return a.reshape(shape or (len(items),))

        return {
            "vocab": objs([b"", b"a", b"xyz", b"\x00\xff" * 20, b"hello world"]),
            "scalar": objs([b"hello"], ()),
            "grid": objs([bytes([i]) * i for i in range(6)], (2, 3)),
            "weights": rng.standard_normal((4,)).astype(np.float32),
            "empty_strings": objs([], (0,)),
        }
    if kind == "sliced":
        return {
            "part_emb": rng.standard_normal((10, 4)).astype(np.float32),
            "plain": np.arange(6, dtype=np.int32),
        }
    if kind == "two_shards":
        return {f"layer{i}/w": rng.standard_normal((i + 2, 3)).astype(np.float32) for i in range(6)}
    if kind == "multiblock":
        return {f"var{i:03d}/kernel": (np.arange(i % 5 + 1, dtype=np.float32) + i) for i in range(60)}
    raise ValueError(kind)


SLICED = {"part_emb": [Slice(((0, 4), (0, 4))), Slice(((4, 3), (0, None))), Slice(((7, 3), (0, 4)))]}


def make_fixture(kind: str, directory, *, seed_offset: float = 0.0) -> str:
    """Write fixture `kind` under directory/kind/ckpt with BundleWriter; return the prefix."""
    prefix = os.path.join(os.fspath(directory), kind, "ckpt")
    arrays = fixture_arrays(kind)
    if seed_offset:
        arrays = {
            k: (v + np.asarray(seed_offset, dtype=v.dtype) if v.dtype.kind == "f" else v) for k, v in arrays.items()
        }
    shards = 2 if kind == "two_shards" else 1
    with BundleWriter(prefix, num_shards=shards) as w:
        for i, (name, arr) in enumerate(arrays.items()):
            if name in SLICED:
                slices = SLICED[name]
                w.add_entry(name, Entry(_dtype_enum(arr), arr.shape, slices=tuple(slices)))
                for s in slices:
                    w.add_array(slice_key(name, s), arr[tuple(slice(a, b) for a, b in s.bounds(arr.shape))])
            else:
                w.add_array(name, arr, shard=i % shards)
        w.finish(state_file=False)
    if kind == "multiblock":
        reindex(prefix, block_size=200, restart_interval=3)
    return prefix


def _dtype_enum(arr) -> int:
    from ckptio.bundle import dtypes

    return dtypes.from_numpy(arr.dtype).enum


def reindex(prefix: str, *, block_size: int, restart_interval: int) -> None:
    """Re-encode prefix.index with small data blocks (same keys and values)."""
    path = naming.index_path(prefix)
    data = Path(path).read_bytes()
    items = list(Table(MemorySource(data, path)))
    out = bytearray()
    tb = TableBuilder(out.extend, block_size=block_size, restart_interval=restart_interval)
    for k, v in items:
        tb.add(k, v)
    tb.finish()
    Path(path).write_bytes(bytes(out))


def raw_table(items) -> bytes:
    """One data block holding items in the given order (restart at every entry), then the usual tail."""
    buf, restarts = bytearray(), []
    for key, value in items:
        restarts.append(len(buf))
        buf += encode_varint(0) + encode_varint(len(key)) + encode_varint(len(value)) + key + value
    contents = bytes(buf) + struct.pack(f"<{len(restarts)}I", *restarts) + struct.pack("<I", len(restarts))
    out = bytearray()
    data_handle = BlockHandle(0, len(contents))
    out += contents + encode_trailer(contents)
    meta = struct.pack("<II", 0, 1)
    meta_handle = BlockHandle(len(out), len(meta))
    out += meta + encode_trailer(meta)
    last = max((k for k, _ in items), default=b"")
    index_contents = (
        encode_varint(0)
        + encode_varint(len(last) + 1)
        + encode_varint(len(data_handle.encode()))
        + last
        + b"\xff"
        + data_handle.encode()
        + struct.pack("<II", 0, 1)
    )
    index_handle = BlockHandle(len(out), len(index_contents))
    out += index_contents + encode_trailer(index_contents)
    out += Footer(meta_handle, index_handle).encode()
    return bytes(out)


def write_bundle(
    prefix: str,
    items,
    shards: dict[int, bytes],
    *,
    num_shards: int | None = None,
    header: bytes | None = None,
    sort: bool = True,
) -> str:
    """An index of (key, value) pairs (header added unless given) plus data files, unvalidated."""
    os.makedirs(os.path.dirname(prefix), exist_ok=True)
    n = num_shards if num_shards is not None else max(len(shards), 1)
    head = header if header is not None else Header(num_shards=n).encode()
    all_items = [(b"", head)] + [(k if isinstance(k, bytes) else k.encode(), v) for k, v in items]
    if sort:
        out = bytearray()
        tb = TableBuilder(out.extend)
        for k, v in sorted(all_items):
            tb.add(k, v)
        tb.finish()
        data = bytes(out)
    else:
        data = raw_table(all_items)
    Path(naming.index_path(prefix)).write_bytes(data)
    for i, blob in shards.items():
        Path(naming.data_path(prefix, i, n)).write_bytes(blob)
    return prefix


# -- reading -------------------------------------------------------------------------------------


def read_all(prefix: str) -> dict:
    with ckptio.open(prefix) as ck:
        return {name: ck[name].read() for name in ck}


def same(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype == object:
        return all(bytes(x) == bytes(y) for x, y in zip(a.reshape(-1), b.reshape(-1)))
    return np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()


def table_regions(data: bytes) -> dict[str, list[tuple[int, int]]]:
    """[start, end) ranges of a well-formed table file, named by how a reader checks them.

    checked:  data blocks and their trailers, the index block and its trailer, the magic number, and
              the metaindex block and its trailer (TF never reads it, but verify and doctor check it)
    maybe:    the footer's block handles (an overlong varint can decode to the same value)
    harmless: the footer's zero padding
    """
    footer_at = len(data) - FOOTER_SIZE
    footer = Footer.decode(data[footer_at:])
    table = Table(MemorySource(data))
    checked = [(h.offset, h.offset + h.size + 5) for _, h in table.index]
    checked.append((footer.index.offset, footer.index.offset + footer.index.size + 5))
    checked.append((len(data) - 8, len(data)))
    checked.append((footer.metaindex.offset, footer.metaindex.offset + footer.metaindex.size + 5))
    handles_len = len(footer.metaindex.encode() + footer.index.encode())
    return {
        "checked": checked,
        "maybe": [(footer_at, footer_at + handles_len)],
        "harmless": [(footer_at + handles_len, footer_at + 40)],
    }


def region_of(regions, offset: int) -> str:
    for name, ranges in regions.items():
        if any(a <= offset < b for a, b in ranges):
            return name
    raise AssertionError(f"offset {offset} is in no region")


def cli(argv) -> tuple[int, str, str]:
    from ckptio.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()
