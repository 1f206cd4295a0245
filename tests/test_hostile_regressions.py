"""Issue 12, hostile inputs: each one a typed one-line refusal, never a traceback, hang, MemoryError or
wrong answer. One test per point; each failed on the code before the fix.

Memory cases run the CLI in a subprocess whose address space is capped (RLIMIT_AS), so a
regression fails fast with MemoryError instead of eating the machine; FIFO cases run there too,
under a timeout, so a regression that blocks fails instead of hanging the suite.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import zstandard

import ckptio
from ckptio.bundle.entry import Entry
from ckptio.errors import CorruptCheckpointError, TensorNotFoundError, UnsupportedError
from ckptio.io import MemorySource
from ckptio.sstable import Table, TableBuilder

try:
    from corrupt_support import cli, make_fixture, read_all, same, write_bundle
except ImportError:  # tests/ imported as a package
    from .corrupt_support import cli, make_fixture, read_all, same, write_bundle

REPO = Path(__file__).resolve().parents[1]
LIMIT = 1536 << 20  # address space of the capped child: far below the 2-3 GiB the hostile files claim

CHILD = r"""
import json, resource, sys
import numpy, ml_dtypes, zstandard, cramjam   # loaded before the cap, as a long-running process would have
import ckptio, ckptio.cli.main, ckptio.cli.ls, ckptio.cli.verify, ckptio.cli.doctor, ckptio.doctor, ckptio.archive
import contextlib, io

limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
try:
    bytearray(2 * limit)
    control = "no limit"
except MemoryError:
    control = "MemoryError"
results = []
for argv in json.loads(sys.argv[2]):
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = ckptio.cli.main.main(argv)
    except BaseException as exc:
        rc, err = -1, io.StringIO(f"BAD {type(exc).__name__}: {exc}")
    results.append([argv, rc, out.getvalue(), err.getvalue()])
print(json.dumps({"control": control, "results": results}))
"""


def run_capped(argvs: list[list[str]], timeout: int = 240) -> list[tuple[list[str], int, str, str]]:
    """Run each CLI argv in one child process capped at LIMIT bytes of address space."""
    env = dict(
        os.environ,
        OPENBLAS_NUM_THREADS="1",
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    )
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(LIMIT), json.dumps([[str(a) for a in v] for v in argvs])],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    assert doc["control"] == "MemoryError"  # the cap is real
    return [tuple(r) for r in doc["results"]]


def one_line_refusal(rc: int, out: str, err: str, code: int = 1) -> str:
    """Assert a clean refusal: the exit code, and one line on stderr that is not a bug report."""
    assert rc == code, (rc, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "internal error" not in err and "Traceback" not in err and "MemoryError" not in err, err
    return lines[0]


def _index_items(prefix: str) -> list[tuple[bytes, bytes]]:
    data = Path(prefix + ".index").read_bytes()
    return [(k, v) for k, v in Table(MemorySource(data)) if k]


def _rebuilt(prefix: str, out_prefix: str, edit) -> str:
    """A copy of prefix whose index entries went through edit(key, Entry) -> Entry."""
    items = [(k, edit(k, Entry.parse(v)).encode()) for k, v in _index_items(prefix)]
    data = Path(prefix + ".data-00000-of-00001").read_bytes()
    return write_bundle(out_prefix, items, {0: data})


# -- 1. a partitioned tensor whose slices disagree with its metadata -------------------------------


def test_sliced_tensor_whose_slices_disagree_with_its_metadata_is_refused(tmp_path):
    """The full entry says int32 (or the slice entry a flat shape): verify passed and strip copied it on."""
    prefix = make_fixture("sliced", tmp_path)
    int32 = _rebuilt(
        prefix,
        str(tmp_path / "dtype" / "ckpt"),
        lambda k, e: dataclasses.replace(e, dtype=3) if k == b"part_emb" else e,
    )
    flat = _rebuilt(
        prefix,
        str(tmp_path / "shape" / "ckpt"),
        lambda k, e: dataclasses.replace(e, shape=(16,)) if k[:1] == b"\x00" and e.shape == (4, 4) else e,
    )
    for bad in (int32, flat):
        rc, out, err = cli(["verify", bad])
        assert rc == 1 and "part_emb" in err and "is stored as" in err, (out, err)
        assert not ckptio.verify(bad).ok
        out_prefix = tmp_path / "out" / os.path.basename(os.path.dirname(bad))
        line = one_line_refusal(*cli(["strip", bad, out_prefix]))
        assert "part_emb" in line and "is stored as" in line
        assert not os.path.exists(f"{out_prefix}.index")
        with pytest.raises(CorruptCheckpointError, match="is stored as"):
            ckptio.rewrite(bad, tmp_path / "api" / "x")
        with ckptio.open(bad) as ck:  # the one unaffected tensor still reads
            assert same(ck["plain"].read(), np.arange(6, dtype=np.int32))


# -- 2. the metaindex block's checksum ----------------------------------------------------------------


def test_damaged_metaindex_block_is_reported_by_verify_and_doctor(tmp_path):
    prefix = make_fixture("numeric", tmp_path)
    originals = read_all(prefix)
    data = bytearray(Path(prefix + ".index").read_bytes())
    meta = Table(MemorySource(bytes(data))).footer.metaindex
    data[meta.offset + meta.size + 2] ^= 0x10  # its trailer's crc
    Path(prefix + ".index").write_bytes(bytes(data))

    rc, out, err = cli(["verify", prefix])
    assert rc == 1 and "metaindex block checksum mismatch" in err, (out, err)
    assert not ckptio.verify(prefix).ok
    from ckptio.doctor import diagnose

    d = diagnose(prefix)
    assert not d.healthy and "bad-metaindex" in {p.kind for p in d.problems}
    assert sorted(d.intact) == sorted(originals)  # TF never reads the block: no tensor is lost
    got = read_all(prefix)  # and opening does not check it either, as TF does not
    assert all(same(got[n], originals[n]) for n in originals)


# -- 3. a small archive whose .index member inflates to 2 GiB ---------------------------------------


def _zeros_archive(path: Path, name: str, size: int, data_bytes: int | None = None) -> None:
    """A .tar.zst whose first member `name` declares size bytes, followed by data_bytes zeros
    (default: all of them) and nothing else."""
    from ckptio.archive import encode_header

    zero = bytes(8 << 20)
    left = size if data_bytes is None else data_bytes
    with open(path, "wb") as f, zstandard.ZstdCompressor(level=1).stream_writer(f) as w:
        w.write(encode_header(name, size))
        while left:
            n = min(left, len(zero))
            w.write(zero[:n])
            left -= n


def test_archive_index_member_inflating_to_2_gib_is_refused_under_a_memory_cap(tmp_path):
    bomb = tmp_path / "bomb.tar.zst"
    _zeros_archive(bomb, "model.ckpt.index", 2 << 30)
    assert bomb.stat().st_size < 128 << 10
    cut = tmp_path / "cut.tar.zst"  # declares 300 MiB and holds 1 KiB: memory must follow what is there
    _zeros_archive(cut, "model.ckpt.index", 300 << 20, data_bytes=1024)
    results = run_capped([["ls", bomb], ["verify", bomb], ["ls", cut]])
    for _argv, rc, out, err in results[:2]:
        line = one_line_refusal(rc, out, err)
        assert "index member" in line and "unpack" in line, line
    argv, rc, out, err = results[2]
    assert "archive ends" in one_line_refusal(rc, out, err)
    with pytest.raises(UnsupportedError, match="index member"):
        ckptio.open(bomb)


# -- 4. doctor on a sparse index, /dev/zero and FIFOs ---------------------------------------------------


def test_doctor_is_bounded_on_sparse_index_device_and_fifos(tmp_path):
    """doctor read the whole .index: a 3 GB sparse file or /dev/zero exhausted memory, a FIFO blocked it."""
    sparse = tmp_path / "sparse" / "model.ckpt"
    sparse.parent.mkdir()
    with open(f"{sparse}.index", "wb") as f:
        f.truncate(3 << 30)
    zero = tmp_path / "zero" / "model.ckpt"
    zero.parent.mkdir()
    os.symlink("/dev/zero", f"{zero}.index")
    fifo_data = Path(make_fixture("numeric", tmp_path / "fifo_data"))
    os.unlink(f"{fifo_data}.data-00000-of-00001")
    os.mkfifo(f"{fifo_data}.data-00000-of-00001")
    fifo_index = tmp_path / "fifo_index" / "model.ckpt"
    fifo_index.parent.mkdir()
    os.mkfifo(f"{fifo_index}.index")
    results = run_capped(
        [["doctor", p] for p in (sparse, zero, fifo_data, fifo_index)] + [["doctor", "--json", fifo_data]], timeout=120
    )
    for (argv, rc, out, err), kind in zip(results, ("bad-magic", "not-a-file", "not-a-file", "not-a-file")):
        assert rc == 1, (argv, rc, out, err)
        assert err == "" and "internal error" not in out, (argv, out, err)
        assert f"problem: {kind}: " in out, (argv, out)
        if kind == "not-a-file":
            assert "not a regular file" in out
    doc = json.loads(results[-1][2])
    assert {p["kind"] for p in doc["problems"]} == {"not-a-file"}
    assert doc["damaged"] and not doc["intact"] and not doc["healthy"]


# -- 5. a V1 tensor with a shape and no slices ----------------------------------------------------------


def _v1_without_slices(path: Path) -> str:
    """A V1 file with 'ok' (one full slice, values 1, 2) and 'w' of shape [2, 3] listing no slice at all."""
    from ckptio._proto import saved_tensor_slice_pb2 as pb
    from ckptio.bundle.slices import Slice, encode_key

    meta = pb.SavedTensorSlices()
    ok = meta.meta.tensor.add()
    ok.name, ok.type = "ok", 1
    ok.shape.dim.add().size = 2
    ok.slice.add().extent.add()
    w = meta.meta.tensor.add()
    w.name, w.type = "w", 1
    for d in (2, 3):
        w.shape.dim.add().size = d
    data = pb.SavedTensorSlices()
    data.data.name = "ok"
    data.data.slice.extent.add()
    data.data.data.float_val.extend([1.0, 2.0])
    out = bytearray()
    tb = TableBuilder(out.extend)
    tb.add(b"", meta.SerializeToString())
    tb.add(encode_key("ok", Slice(((0, None),))), data.SerializeToString())
    tb.finish()
    path.parent.mkdir(parents=True)
    path.write_bytes(bytes(out))
    return str(path)


def test_v1_tensor_with_a_shape_and_no_slices_is_a_typed_error(tmp_path):
    path = _v1_without_slices(tmp_path / "v1" / "model.ckpt")
    for argv in (["show", path, "w"], ["strip", path, tmp_path / "out" / "x"]):
        line = one_line_refusal(*cli(argv))
        assert "entry w" in line and "no stored slice" in line, line
    rc, out, err = cli(["verify", path])
    assert rc == 1 and "entry w: " in err and "internal error" not in err, err
    with ckptio.open(path) as ck:
        assert same(ck["ok"].read(), np.array([1, 2], np.float32))
        with pytest.raises(CorruptCheckpointError, match="no stored slice"):
            ck["w"].read()
    from ckptio.doctor import diagnose

    d = diagnose(path)
    assert "w" in d.damaged and d.intact == ["ok"]


# -- 6. a sliced tensor with an unknown dtype enum ------------------------------------------------------


def test_sliced_tensor_with_an_unknown_dtype_enum_is_refused_by_strip_and_cast(tmp_path):
    prefix = make_fixture("sliced", tmp_path)
    bad = _rebuilt(
        prefix,
        str(tmp_path / "dt999" / "ckpt"),
        lambda k, e: dataclasses.replace(e, dtype=999) if k == b"part_emb" else e,
    )
    for i, extra in enumerate(([], ["--cast", "float16"])):
        command = "strip" if not extra else "rewrite"
        line = one_line_refusal(*cli([command, bad, tmp_path / f"out{i}" / "x", *extra]))
        assert "part_emb" in line and "DT_999" in line, line
    with pytest.raises(CorruptCheckpointError, match="DT_999"):
        ckptio.rewrite(bad, tmp_path / "api" / "x", [ckptio.Cast("float16")])


# -- 7. malformed --map-file --------------------------------------------------------------------------


def test_malformed_map_files_are_one_line_usage_errors(tmp_path):
    prefix = make_fixture("numeric", tmp_path)
    maps = {
        "deep_list": "[" * 100_000 + "]" * 100_000,
        "deep_object": '{"a": ' * 100_000 + "1" + "}" * 100_000,
        "list": '["dense/=d/"]',
        "number": '{"dense/": 1}',
        "nested": '{"dense/": {"x": "y"}}',
        "broken": '{"dense/": ',
        "not_utf8": b'{"\xff": "x"}',
    }
    for name, text in maps.items():
        f = tmp_path / f"{name}.json"
        f.write_bytes(text if isinstance(text, bytes) else text.encode())
        line = one_line_refusal(*cli(["rename", prefix, tmp_path / name / "x", "--map-file", f]), code=2)
        assert "map file" in line, (name, line)
    line = one_line_refusal(*cli(["rename", prefix, tmp_path / "m" / "x", "--map-file", tmp_path / "nope"]), code=2)
    assert "map file" in line


# -- 8. an archive holding the same member twice ---------------------------------------------------------


def test_archive_with_a_duplicate_member_is_refused(tmp_path):
    prefix = make_fixture("numeric", tmp_path)
    index = Path(prefix + ".index").read_bytes()
    data = Path(prefix + ".data-00000-of-00001").read_bytes()
    other = bytes(len(data))  # what `tar -x` would leave: the last copy

    def archive(name, members):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
            for member, blob in members:
                info = tarfile.TarInfo(member)
                info.size = len(blob)
                t.addfile(info, io.BytesIO(blob))
        path = tmp_path / name
        path.write_bytes(zstandard.ZstdCompressor().compress(buf.getvalue()))
        return path

    shard = "ckpt.data-00000-of-00001"
    twice_data = archive("data.tar.zst", [("ckpt.index", index), (shard, data), (f"./{shard}", other)])
    twice_index = archive("index.tar.zst", [("ckpt.index", index), ("ckpt.index", index), (shard, data)])
    for path, member in ((twice_data, shard), (twice_index, "ckpt.index")):
        rc, out, err = cli(["verify", path])
        assert rc == 1 and "twice" in err and member in err and "internal error" not in err, (out, err)
        dest = tmp_path / f"unpacked-{path.stem}"
        line = one_line_refusal(*cli(["unpack", path, dest]))
        assert "twice" in line and member in line
        assert not dest.exists() or not os.listdir(dest)
        assert not ckptio.verify(path).ok


# -- 9. control characters in tensor names -----------------------------------------------------------------


def test_names_with_control_characters_are_escaped_in_human_output(tmp_path):
    from ckptio.bundle.writer import BundleWriter

    prefix = str(tmp_path / "ck" / "model.ckpt")
    names = ["ok/w", "evil\n3 tensors, 1 B in v2 checkpoint forged", "title\x1b]0;pwned\x07", "cr\rname"]
    with BundleWriter(prefix) as w:
        for i, n in enumerate(names):
            w.add_array(n, np.arange(i + 1, dtype=np.float32))
        w.finish(state_file=False)
    # A damaged copy: its verify and doctor reports name the tensors too.
    damaged = str(tmp_path / "bad" / "model.ckpt")
    os.makedirs(os.path.dirname(damaged))
    for suffix in (".index", ".data-00000-of-00001"):
        Path(damaged + suffix).write_bytes(Path(prefix + suffix).read_bytes())
    Path(damaged + ".data-00000-of-00001").write_bytes(bytes(40))

    outputs = {
        "ls": cli(["ls", prefix]),
        "doctor": cli(["doctor", prefix]),
        "doctor-bad": cli(["doctor", damaged]),
        "verify-bad": cli(["verify", damaged]),
        "show": cli(["show", prefix, names[2]]),
        "dry-run": cli(["rewrite", prefix, tmp_path / "o" / "x", "--dry-run", "--exclude", "^ok"]),
        "batch": cli(["strip", prefix, "--out-dir", tmp_path / "batch"]),
    }
    for what, (_rc, out, err) in outputs.items():
        text = out + err
        assert not any(c in text for c in "\x1b\x07\r"), (what, text)
        assert "\nforged" not in text and "\n3 tensors, 1 B" not in text, (what, text)
    rc, out, _ = outputs["ls"]
    assert rc == 0 and len(out.splitlines()) == len(names) + 1
    assert repr(names[1]) in out and repr(names[2]) in out
    assert "damaged: 'title\\x1b]0;pwned\\x07'" in outputs["doctor-bad"][1]
    assert "'cr\\rname'" in outputs["verify-bad"][2]
    assert outputs["show"][1].startswith(repr(names[2]) + ": float32[3]")
    assert "keep    'cr\\rname'" in outputs["dry-run"][1]
    objects = _object_graph_checkpoint(str(tmp_path / "tf2" / "model.ckpt"), "layer\x1b]0;pwned\x07\nforged")
    rc, out, err = cli(["ls", "--objects", objects])
    assert rc == 0 and not any(c in out for c in "\x1b\x07\r") and "\nforged" not in out, out
    assert "'layer\\x1b]0;pwned\\x07\\nforged/'  #1" in out
    rc, out, _ = cli(["ls", "--json", prefix])  # JSON stays exact
    assert sorted(e["name"] for e in json.loads(out)["entries"]) == sorted(names)
    with pytest.raises(TensorNotFoundError):
        ckptio.open(prefix)["title"]


def _object_graph_checkpoint(prefix: str, child: str) -> str:
    """A TF2-style checkpoint whose one variable hangs under an object named child."""
    from ckptio._proto.trackable_object_graph_pb2 import TrackableObjectGraph
    from ckptio.bundle.writer import BundleWriter

    key = f"{child}/.ATTRIBUTES/VARIABLE_VALUE"
    graph = TrackableObjectGraph()
    ref = graph.nodes.add().children.add()
    ref.node_id, ref.local_name = 1, child
    attribute = graph.nodes.add().attributes.add()
    attribute.name, attribute.full_name, attribute.checkpoint_key = "VARIABLE_VALUE", "v\rfull", key
    blob = np.empty((), dtype=object)
    blob[()] = graph.SerializeToString()
    with BundleWriter(prefix) as w:
        w.add_array(key, np.arange(3, dtype=np.float32))
        w.add_array("_CHECKPOINTABLE_OBJECT_GRAPH", blob)
        w.finish(state_file=False)
    return prefix
