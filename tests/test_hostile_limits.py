"""Memory stays bounded on hostile input.

Files that claim absurd sizes (dims of 2^40, sizes near 2^63, 2^31 shards, string counts and
lengths past the data, slices of an exabyte tensor, snappy bombs, huge handles and restart
counts) are opened, listed, read, verified and diagnosed in a subprocess whose address space is
capped at 1.5 GB. Every step must end in a CkptioError (or a diagnosis), never MemoryError,
another exception type, or a hang; and nothing may claim the checkpoint is fine.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from ckptio.bundle import strings
from ckptio.bundle.entry import Entry
from ckptio.bundle.slices import Slice, encode_key
from ckptio.sstable import TableBuilder
from ckptio.sstable.coding import crc32c, encode_varint, mask
from ckptio.sstable.format import BlockHandle, Footer, encode_trailer

try:
    from corrupt_support import write_bundle
except ImportError:  # tests/ imported as a package
    from .corrupt_support import write_bundle

LIMIT = 1536 << 20
REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, sys
import numpy, ml_dtypes, cramjam          # imported before the cap, as a long-running process would be
import ckptio
from ckptio.doctor import diagnose
from ckptio.errors import CkptioError
from ckptio.verify import verify

limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
results = {}
try:
    bytearray(2 * limit)
    results["__control__"] = "no limit"
except MemoryError:
    results["__control__"] = "MemoryError"

def step(log, what, fn):
    try:
        return fn()
    except CkptioError as exc:
        log.append(f"{what}: {type(exc).__name__}: {exc}")
    except BaseException as exc:
        log.append(f"{what}: BAD {type(exc).__name__}: {str(exc)[:300]}")
    return None

for name, path in json.loads(sys.argv[2]).items():
    log = []
    ck = step(log, "open", lambda: ckptio.open(path))
    if ck is not None:
        names = step(log, "list", lambda: list(ck)) or []
        for n in names:
            step(log, f"read {n!r}", lambda: ck[n].read())
            step(log, f"chunks {n!r}", lambda: list(ck[n].iter_chunks()))
        report = step(log, "verify", lambda: verify(ck))
        if report is not None:
            log.append("verify: ok" if report.ok else f"verify: {len(report.problems)} problem(s)")
    d = step(log, "doctor", lambda: diagnose(path))
    if d is not None:
        log.append("doctor: healthy" if d.healthy else f"doctor: {d.problems[0].kind if d.problems else 'damaged'}")
    results[name] = log
print(json.dumps(results))
"""


def _entry(dtype, shape, offset=0, size=0, crc=0, slices=()):
    return Entry(dtype, tuple(shape), 0, offset, size, crc, tuple(slices)).encode()


def _raw_table(
    first_block: bytes, kind: int = 0, *, restarts_override: bytes | None = None, index_size: int | None = None
) -> bytes:
    """A table whose single data block has the given contents and compression type."""
    out = bytearray(first_block + encode_trailer(first_block, kind))
    data = BlockHandle(0, len(first_block))
    meta_contents = struct.pack("<II", 0, 1)
    meta = BlockHandle(len(out), len(meta_contents))
    out += meta_contents + encode_trailer(meta_contents)
    key = b"\xff"
    idx = (
        encode_varint(0)
        + encode_varint(len(key))
        + encode_varint(len(data.encode()))
        + key
        + data.encode()
        + struct.pack("<II", 0, 1)
    )
    index = BlockHandle(len(out), len(idx) if index_size is None else index_size)
    out += idx + encode_trailer(idx)
    out += Footer(meta, index).encode()
    return bytes(out)


def build_cases(root: Path) -> dict[str, str]:
    cases = {}

    def bundle(name, items, data=b"x" * 64, **kw):
        cases[name] = write_bundle(str(root / name / "ckpt"), items, {0: data}, **kw)

    bundle("dims_2_40", [("a", _entry(1, [1 << 40], size=4 << 40))])
    bundle("dims_overflow", [("a", _entry(1, [1 << 40, 1 << 40], size=0))])
    bundle(
        "zero_dim_huge_others",
        [
            ("a", _entry(1, [0, 1 << 40, 1 << 30], size=0, crc=mask(0))),
            ("s", _entry(7, [0, 1 << 40, 1 << 30], size=0, crc=mask(0))),
        ],
    )
    bundle("size_near_2_63", [("a", _entry(1, [2], size=(1 << 63) - 1))])
    bundle("offset_near_2_63", [("a", _entry(1, [2], offset=(1 << 63) - 9, size=8))])
    bundle("num_shards_2_31_minus_1", [("a", _entry(1, [2], size=8))], header=b"\x08\xff\xff\xff\xff\x07")
    bundle(
        "num_shards_negative", [("a", _entry(1, [2], size=8))], header=b"\x08\x80\x80\x80\x80\xf8\xff\xff\xff\xff\x01"
    )
    bundle("shard_id_2_31", [("a", Entry(1, (2,), (1 << 31) - 1, 0, 8, 0).encode())])
    text, crc = strings.encode([b"abc"])
    bundle("string_count_2_40", [("s", _entry(7, [1 << 40], size=len(text), crc=crc))], data=text)
    huge_len = encode_varint(1 << 62) + b"\0\0\0\0" + b"z" * 16
    bundle("string_length_2_62", [("s", _entry(7, [1], size=len(huge_len)))], data=huge_len)
    bundle("variant_count_2_40", [("v", _entry(21, [1 << 40], size=32))])
    piece = struct.pack("<f", 1.0)
    s = Slice(((0, 1),))
    bundle(
        "slices_of_an_exabyte_tensor",
        [("p", _entry(1, [1 << 58], slices=[s])), (encode_key("p", s), _entry(1, [1], 0, 4, mask(crc32c(piece))))],
        data=piece,
    )
    s1, s2 = Slice(((0, 1 << 40),)), Slice(((1 << 39, 1 << 40),))
    bundle(
        "overlapping_huge_slices",
        [
            ("p", _entry(1, [1 << 41], slices=[s1, s2])),
            (encode_key("p", s1), _entry(1, [1 << 40], 0, 4 << 40)),
            (encode_key("p", s2), _entry(1, [1 << 40], 0, 4 << 40)),
        ],
    )
    # Tables whose own structure lies.
    for name, table in {
        "snappy_bomb": _raw_table(encode_varint((1 << 31) - 1) + b"\x00" * 40, kind=1),
        "snappy_ratio": _raw_table(encode_varint(100 << 20) + b"\xfe\xff\x7f" * 30, kind=1),
        "restart_count_2_30": _raw_table(b"\x00\x01\x01a" + b"b" + struct.pack("<II", 0, 1 << 30)),
        "index_handle_2_40": _raw_table(b"\x00\x00\x00" + struct.pack("<II", 0, 1), index_size=1 << 40),
        "unknown_compression": _raw_table(b"\x00\x00\x00" + struct.pack("<II", 0, 1), kind=7),
    }.items():
        prefix = root / name / "ckpt"
        prefix.parent.mkdir(parents=True)
        Path(str(prefix) + ".index").write_bytes(table)
        Path(str(prefix) + ".data-00000-of-00001").write_bytes(b"")
        cases[name] = str(prefix)
    cases["v1_huge_shape"] = _v1(root / "v1a", shape=[1 << 40], values=[1.0])
    cases["v1_values_for_2_40_elements"] = _v1(root / "v1b", shape=[1 << 20, 1 << 20], values=[1.0, 2.0])
    return cases


def _v1(directory: Path, *, shape, values) -> str:
    from ckptio._proto import saved_tensor_slice_pb2 as pb

    meta = pb.SavedTensorSlices()
    t = meta.meta.tensor.add()
    t.name, t.type = "w", 1
    for d in shape:
        t.shape.dim.add().size = d
    sl = t.slice.add()
    for _ in shape:
        sl.extent.add()
    data = pb.SavedTensorSlices()
    data.data.name = "w"
    data.data.slice.CopyFrom(sl)
    data.data.data.float_val.extend(values)
    out = bytearray()
    tb = TableBuilder(out.extend)
    tb.add(b"", meta.SerializeToString())
    tb.add(encode_key("w", Slice(tuple((0, None) for _ in shape))), data.SerializeToString())
    tb.finish()
    directory.mkdir(parents=True)
    path = directory / "model.ckpt"
    path.write_bytes(bytes(out))
    return str(path)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict:
    cases = build_cases(tmp_path_factory.mktemp("hostile"))
    env = dict(
        os.environ,
        OPENBLAS_NUM_THREADS="1",
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    )
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(LIMIT), json.dumps(cases)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_memory_cap_is_real(outcomes):
    assert outcomes.pop("__control__", "MemoryError") == "MemoryError"


CASE_NAMES = [
    "dims_2_40",
    "dims_overflow",
    "zero_dim_huge_others",
    "size_near_2_63",
    "offset_near_2_63",
    "num_shards_2_31_minus_1",
    "num_shards_negative",
    "shard_id_2_31",
    "string_count_2_40",
    "string_length_2_62",
    "variant_count_2_40",
    "slices_of_an_exabyte_tensor",
    "overlapping_huge_slices",
    "snappy_bomb",
    "snappy_ratio",
    "restart_count_2_30",
    "index_handle_2_40",
    "unknown_compression",
    "v1_huge_shape",
    "v1_values_for_2_40_elements",
]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_hostile_file_gives_ckptio_errors_only(outcomes, name):
    log = outcomes[name]
    bad = [line for line in log if ": BAD " in line]
    assert not bad, "\n".join(log)
    assert any("Error: " in line for line in log), "\n".join(log)  # something refused it
    assert "doctor: healthy" not in log, "\n".join(log)
    assert "verify: ok" not in log, "\n".join(log)
