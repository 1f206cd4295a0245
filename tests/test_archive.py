"""Archives (.tar.zst): the tar header codec, pack/unpack byte for byte on the whole corpus, reading
straight out of an archive in one forward pass (ls stops at the end of the index), corruption,
atomic output, the pack/unpack commands, and bounded memory on a ~300 MB archive."""

from __future__ import annotations

import filecmp
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import zstandard
from support import same

import ckptio
from ckptio import archive
from ckptio.archive import BLOCK, ArchiveStream, decode_header, encode_header, pack, parse_pax, unpack
from ckptio.bundle import dtypes
from ckptio.bundle.writer import BundleWriter
from ckptio.cli.main import main
from ckptio.errors import (
    CheckpointNotFoundError,
    CorruptCheckpointError,
    MissingShardError,
    OutputExistsError,
    TruncatedError,
    WrongFileError,
)
from ckptio.io import MemorySource

REPO = Path(__file__).resolve().parent.parent
UINT8 = dtypes.BY_NAME["uint8"].enum


def corpus_prefixes(corpus_root: Path) -> list[tuple[str, str]]:
    manifest = json.loads((corpus_root / "MANIFEST.json").read_text())
    return [(c["short_name"], str(corpus_root / c["prefix"])) for c in manifest["checkpoints"]]


def checkpoint_files(prefix: str) -> list[str]:
    """The checkpoint's own files: .index first, then data shards (V1: the table files)."""
    with ckptio.open(prefix) as ckpt:
        return [p for p, _ in archive.checkpoint_files(ckpt)]


def make_checkpoint(prefix, sizes_by_shard, *, seed=0, chunk=8 << 20) -> dict[str, bytes | None]:
    """A uint8 checkpoint with tensors of the given byte sizes per shard; returns name -> bytes
    (None for tensors bigger than 16 MiB, which are streamed from a generator instead of kept)."""
    rng = np.random.default_rng(seed)
    kept = {}
    with BundleWriter(str(prefix), len(sizes_by_shard)) as w:
        for shard, sizes in enumerate(sizes_by_shard):
            for i, size in enumerate(sizes):
                name = f"s{shard}/t{i:03d}"
                if size <= 16 << 20:
                    data = rng.bytes(size)
                    kept[name] = data
                    w.add_bytes(name, UINT8, (size,), [data], shard)
                else:
                    kept[name] = None
                    chunks = (rng.bytes(min(chunk, size - o)) for o in range(0, size, chunk))
                    w.add_bytes(name, UINT8, (size,), chunks, shard)
        w.finish(state_file=False)
    return kept


def same_tensors(a, b) -> None:
    """Every tensor of a equals b's, read in data order (so an archive streams once)."""
    assert list(a) == list(b)
    entries = a.entries()
    order = sorted(entries, key=lambda n: (entries[n].shard_id, entries[n].offset))
    for name in order:
        try:
            want = a[name].read()
        except ckptio.UnsupportedError:
            with pytest.raises(ckptio.UnsupportedError):
                b[name].read()
            continue
        assert same(b[name].read(), want), name


# -- tar header codec ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, size",
    [
        ("model.ckpt.index", 0),
        ("model.ckpt.data-00000-of-00001", 12345),
        ("d/" * 60 + "long.index", 7),
        ("modèle.index", 1),
        ("big.data-00000-of-00001", 9 << 30),
    ],
)
def test_header_round_trip_and_tarfile_agrees(name, size):
    raw = encode_header(name, size, mtime=1_700_000_000)
    assert len(raw) % BLOCK == 0
    needs_pax = len(name.encode()) > 100 or not name.isascii() or size >= 8**11
    assert len(raw) == (BLOCK * 3 if needs_pax else BLOCK)  # pax header block + records block + header
    last = decode_header(raw[-BLOCK:])
    assert last.typeflag == b"0" and last.mtime == 1_700_000_000 and last.mode == 0o644
    if needs_pax:
        pax = parse_pax(raw[BLOCK : 2 * BLOCK])
        assert pax.get("path", last.name) == name
        assert int(pax.get("size", last.size)) == size
    else:
        assert (last.name, last.size) == (name, size)
    # Python's tarfile reads the same member (headers only: stream mode does not look at the data).
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r|") as t:
        member = t.next()
        assert (member.name, member.size, member.mtime, member.isreg()) == (name, size, 1_700_000_000, True)


def test_header_checksum_and_fields_are_checked():
    raw = bytearray(encode_header("x.index", 10))
    raw[0] ^= 1
    with pytest.raises(CorruptCheckpointError, match="bad header checksum"):
        decode_header(bytes(raw))
    with pytest.raises(TruncatedError):
        decode_header(b"\0" * 100)
    with pytest.raises(CorruptCheckpointError, match="bad pax"):
        parse_pax(b"99 path=x\n")


def _zstd_tar(members, *, fmt=tarfile.PAX_FORMAT) -> bytes:
    """A .tar.zst made by Python's tarfile (a foreign writer) from (name, bytes) pairs."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                t.addfile(info)
            else:
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
    return zstandard.ZstdCompressor().compress(buf.getvalue())


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
def test_scan_reads_archives_written_by_tarfile(fmt):
    long = "sub/" + "n" * 120 if fmt != tarfile.USTAR_FORMAT else "sub/" + "n" * 90
    members = [("sub", None), (long, b"abc" * 1000), ("sub/empty", b""), ("sub/x.bin", bytes(range(256)))]
    stream = ArchiveStream(MemorySource(_zstd_tar(members, fmt=fmt), "a.tar.zst"))
    found = [(m.name, m.size, m.kind) for m in stream]
    assert found == [("sub", 0, "dir"), (long, 3000, "file"), ("sub/empty", 0, "file"), ("sub/x.bin", 256, "file")]
    m = stream.find("sub/x.bin")
    assert stream.read_at(m.data_offset + 10, 5) == bytes(range(10, 15))
    assert stream.find("nope") is None


# -- pack and unpack -----------------------------------------------------------------------------


def test_pack_unpack_byte_identical_on_the_whole_corpus(corpus, tmp_path):
    for short, prefix in corpus_prefixes(corpus):
        files = checkpoint_files(prefix)
        out = tmp_path / f"{short}.tar.zst"
        stats = pack(prefix, out)
        assert stats.files == tuple(os.path.basename(f) for f in files), short
        assert stats.bytes_in == sum(os.path.getsize(f) for f in files)
        assert stats.bytes_out == out.stat().st_size
        # Standard tar: the .index first, then the shards in order, and nothing else.
        with (
            open(out, "rb") as fh,
            zstandard.ZstdDecompressor().stream_reader(fh) as zr,
            tarfile.open(fileobj=zr, mode="r|") as t,
        ):
            assert [(m.name, m.size) for m in t] == [(os.path.basename(f), os.path.getsize(f)) for f in files]
        got = unpack(out, tmp_path / short)
        assert got.files == stats.files and got.bytes_out == stats.bytes_in
        for f in files:
            assert filecmp.cmp(f, tmp_path / short / os.path.basename(f), shallow=False), (short, f)
        assert sorted(os.listdir(tmp_path / short)) == sorted(stats.files)  # no temp files left


@pytest.mark.skipif(shutil.which("zstd") is None or shutil.which("tar") is None, reason="needs tar and zstd")
def test_gnu_tar_extracts_a_packed_archive(corpus, tmp_path):
    prefix = str(corpus / "tf2_keras_weights_2shard" / "model.ckpt")
    pack(prefix, tmp_path / "a.tar.zst")
    (tmp_path / "x").mkdir()
    r = subprocess.run(
        ["tar", "--zstd", "-xf", str(tmp_path / "a.tar.zst"), "-C", str(tmp_path / "x")], capture_output=True, text=True
    )
    assert r.returncode == 0 and r.stderr == ""
    for f in checkpoint_files(prefix):
        assert filecmp.cmp(f, tmp_path / "x" / os.path.basename(f), shallow=False)


def test_pack_stats_for_the_benchmark(tmp_path):
    make_checkpoint(tmp_path / "m", [[1000, 2000]])
    with open(tmp_path / "m.data-00000-of-00001", "r+b") as f:  # make it compressible
        f.write(bytes(3000))
    stats = pack(tmp_path / "m", tmp_path / "m.tar.zst", level=1, threads=0)
    assert stats.ratio > 5 and stats.throughput > 0 and stats.seconds > 0
    doc = stats.to_json()
    assert set(doc) >= {"bytes_in", "bytes_out", "ratio", "seconds", "throughput", "files"}
    assert doc["bytes_out"] == os.path.getsize(tmp_path / "m.tar.zst")


def test_pack_is_atomic_and_refuses_to_overwrite(tmp_path):
    make_checkpoint(tmp_path / "m", [[100], [200]])
    out = tmp_path / "out" / "m.tar.zst"
    pack(tmp_path / "m", out)
    before = out.read_bytes()
    with pytest.raises(OutputExistsError, match="already exists"):
        pack(tmp_path / "m", out)
    # A failure halfway (the second shard vanished) leaves the old archive and no temp file.
    os.unlink(tmp_path / "m.data-00001-of-00002")
    with pytest.raises(MissingShardError):
        pack(tmp_path / "m", out, force=True)
    assert out.read_bytes() == before
    assert os.listdir(tmp_path / "out") == ["m.tar.zst"]
    with pytest.raises(OutputExistsError, match="output is the input"):
        pack(out, out, force=True)


def test_unpack_refuses_existing_files_and_unsafe_names(tmp_path):
    make_checkpoint(tmp_path / "m", [[100]])
    pack(tmp_path / "m", tmp_path / "m.tar.zst")
    with pytest.raises(OutputExistsError):
        unpack(tmp_path / "m.tar.zst", tmp_path)
    assert unpack(tmp_path / "m.tar.zst", tmp_path, force=True).files
    evil = tmp_path / "evil.tar.zst"
    evil.write_bytes(_zstd_tar([("ok.index", b"x" * 10), ("../escape", b"boom")]))
    with pytest.raises(CorruptCheckpointError, match="unsafe name"):
        unpack(evil, tmp_path / "dest")
    assert not (tmp_path / "escape").exists()
    assert not (tmp_path / "dest").exists()  # the member before it was not written either


def test_unpack_makes_the_directories_a_foreign_archive_names(tmp_path):
    # A SavedModel packed by GNU tar: members in subdirectories, the .index after its data file.
    members = [
        ("sm", None),
        ("sm/variables/variables.data-00000-of-00001", b"d" * 3000),
        ("sm/variables/variables.index", b"i" * 70),
        ("sm/saved_model.pb", b"p" * 10),
    ]
    (tmp_path / "sm.tar.zst").write_bytes(_zstd_tar(members))
    got = unpack(tmp_path / "sm.tar.zst", tmp_path / "out")
    assert set(got.files) == {name for name, data in members if data is not None}
    for name, data in members:
        if data is not None:
            assert (tmp_path / "out" / name).read_bytes() == data
    assert sorted(os.listdir(tmp_path / "out" / "sm" / "variables")) == [
        "variables.data-00000-of-00001",
        "variables.index",
    ]


# -- reading straight out of an archive ----------------------------------------------------------


def test_archive_reads_like_the_directory(corpus, tmp_path):
    for short in (
        "tf2_keras_weights_2shard",
        "sm_a2c_2shard",
        "tf1_t2t_transformer",
        "v1_vocal_adam",
        "v1_sessionbundle_sharded",
        "sm_alina_vocab",
    ):
        prefix = dict(corpus_prefixes(corpus))[short]
        out = tmp_path / f"{short}.tar.zst"
        pack(prefix, out)
        with ckptio.open(prefix) as local, ckptio.open(out) as packed:
            assert isinstance(packed, archive.ArchiveCheckpoint)
            assert packed.format == local.format and packed.num_shards == local.num_shards
            assert packed.prefix == f"{out}/{os.path.basename(local.prefix)}"
            same_tensors(local, packed)
            if packed.format == "v2":
                assert packed.archive.passes == 1, short  # data order: one forward pass


def test_opening_decompresses_only_up_to_the_end_of_the_index(tmp_path):
    make_checkpoint(tmp_path / "m", [[8 << 20, 8 << 20], [4 << 20]])  # random bytes: incompressible
    out = tmp_path / "m.tar.zst"
    pack(tmp_path / "m", out)
    size = out.stat().st_size
    assert size > 20 << 20
    with ckptio.open(out) as ckpt:
        assert len(ckpt.entries()) == 3 and ckpt.num_shards == 2
        index = ckpt.archive.members[0]
        assert index.name == "m.index"
        assert ckpt.archive.decompressed == index.end  # header block + index bytes, not one byte more
        assert ckpt.archive.compressed_bytes_read < 512 << 10  # one zstd block and some read-ahead
    assert main(["ls", str(out)]) == 0


def test_ls_of_a_tf2_archive_reads_only_the_index(corpus, tmp_path, capsys):
    """TF2 writes the object graph last in the data; ls on an archive must not decompress up to it."""
    from ckptio.cli.ls import roles_of

    pack(corpus / "tf2_eager_vae_adam", tmp_path / "vae.tar.zst")
    with ckptio.open(tmp_path / "vae.tar.zst") as ckpt:
        roles = roles_of(ckpt)
        assert roles["_CHECKPOINTABLE_OBJECT_GRAPH"] == "graph"
        assert any(r == "optimizer" for r in roles.values()) and any(r == "weight" for r in roles.values())
        assert ckpt.archive.decompressed == ckpt.archive.members[0].end
    assert main(["ls", str(tmp_path / "vae.tar.zst")]) == 0
    assert "[optimizer]" in capsys.readouterr().out
    # Going by key patterns gives the roles the graph gives, on every TF2 checkpoint of the corpus.
    for short, prefix in corpus_prefixes(corpus):
        with ckptio.open(prefix) as local:
            if "_CHECKPOINTABLE_OBJECT_GRAPH" not in local:
                continue
            pack(local, tmp_path / f"{short}.tar.zst")
            with ckptio.open(tmp_path / f"{short}.tar.zst") as packed:
                assert roles_of(packed) == roles_of(local), short


def test_forward_reads_stream_once_and_backward_reads_start_over(tmp_path):
    kept = make_checkpoint(tmp_path / "m", [[3000, 5000, 7000], [11000]])
    pack(tmp_path / "m", tmp_path / "m.tar.zst")
    with ckptio.open(tmp_path / "m.tar.zst") as ckpt:
        for name in ("s0/t000", "s0/t001", "s0/t002", "s1/t000"):
            assert ckpt[name].read().tobytes() == kept[name]
        assert ckpt.archive.passes == 1
        assert ckpt["s0/t001"].read().tobytes() == kept["s0/t001"]  # backward: correct, but a new pass
        assert ckpt.archive.passes == 2
        chunks = list(ckpt["s0/t002"].iter_chunks(max_bytes=1000))
        assert b"".join(c.tobytes() for c in chunks) == kept["s0/t002"]
        assert ckpt.archive.passes == 2


def test_archives_from_other_writers(tmp_path):
    """tar of a directory in name order: data members before the index, a state file, a subdirectory."""
    kept = make_checkpoint(tmp_path / "run" / "m", [[500, 600]])
    (tmp_path / "run" / "checkpoint").write_text('model_checkpoint_path: "m"\n')
    members = [("run", None)] + [
        (f"run/{n}", (tmp_path / "run" / n).read_bytes()) for n in sorted(os.listdir(tmp_path / "run"))
    ]
    (tmp_path / "other.tzst").write_bytes(_zstd_tar(members, fmt=tarfile.GNU_FORMAT))
    with ckptio.open(tmp_path / "other.tzst") as ckpt:
        assert ckpt.prefix == f"{tmp_path / 'other.tzst'}/run/m"
        assert {n: ckpt[n].read().tobytes() for n in ckpt} == kept
        assert ckpt.archive.passes == 2  # the data came before the index


def test_missing_and_damaged_archives(tmp_path):
    kept = make_checkpoint(tmp_path / "m", [[300000], [300000]])  # several zstd blocks
    pack(tmp_path / "m", tmp_path / "m.tar.zst", level=1)
    data = (tmp_path / "m.tar.zst").read_bytes()

    (tmp_path / "plain.tar.zst").write_bytes(b"not zstd at all")
    with pytest.raises(WrongFileError, match="not a zstandard-compressed archive"):
        ckptio.open(tmp_path / "plain.tar.zst")
    with pytest.raises(CheckpointNotFoundError):
        ckptio.open(tmp_path / "nope.tar.zst")
    (tmp_path / "empty.tar.zst").write_bytes(_zstd_tar([("readme.txt", b"hello")]))
    with pytest.raises(CheckpointNotFoundError, match="no checkpoint"):
        ckptio.open(tmp_path / "empty.tar.zst")
    # A tar stream that stops after the index (no more members, no end-of-archive marker).
    raw = zstandard.ZstdDecompressor().decompressobj().decompress(data)
    index_end = BLOCK + (tmp_path / "m.index").stat().st_size
    index_end += -index_end % BLOCK
    (tmp_path / "stops.tar.zst").write_bytes(zstandard.ZstdCompressor().compress(raw[:index_end]))
    with ckptio.open(tmp_path / "stops.tar.zst") as ckpt:
        with pytest.raises(TruncatedError, match="end-of-archive marker"):
            ckpt["s0/t000"].read()
    (tmp_path / "stub.tar.zst").write_bytes(zstandard.ZstdCompressor().compress(raw[:300]))
    with pytest.raises(TruncatedError, match="inside a tar header"):
        ckptio.open(tmp_path / "stub.tar.zst")

    # Cut inside the second shard: the first shard still reads, the second is truncated.
    (tmp_path / "cut.tar.zst").write_bytes(data[: len(data) - 100000])
    with ckptio.open(tmp_path / "cut.tar.zst") as ckpt:
        assert ckpt["s0/t000"].read().tobytes() == kept["s0/t000"]
        with pytest.raises(TruncatedError):
            ckpt["s1/t000"].read()

    # Without its last member the second shard is missing.
    only_first = _zstd_tar(
        [
            ("m.index", (tmp_path / "m.index").read_bytes()),
            ("m.data-00000-of-00002", (tmp_path / "m.data-00000-of-00002").read_bytes()),
        ]
    )
    (tmp_path / "short.tar.zst").write_bytes(only_first)
    with ckptio.open(tmp_path / "short.tar.zst") as ckpt:
        with pytest.raises(MissingShardError):
            ckpt["s1/t000"].read()

    # A flipped byte in the compressed data: zstd's checksum or the tensor's crc32c catches it.
    bad = bytearray(data)
    bad[len(bad) // 2] ^= 0x40
    (tmp_path / "bad.tar.zst").write_bytes(bytes(bad))
    with pytest.raises(CorruptCheckpointError):
        with ckptio.open(tmp_path / "bad.tar.zst") as ckpt:
            for name in ckpt:
                ckpt[name].read()


# -- commands ------------------------------------------------------------------------------------


def test_pack_unpack_and_reading_commands(corpus, tmp_path, capsys):
    src = str(corpus / "est_tfx_taxi_2019")
    out = tmp_path / "m.tar.zst"
    assert main(["pack", src, str(out), "--threads", "2", "--level", "5"]) == 0
    assert "packed 3 files into" in capsys.readouterr().out
    assert main(["pack", src, str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["pack", src, str(out), "--force", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["bytes_out"] == out.stat().st_size

    assert main(["ls", str(out), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["num_tensors"] == 51 and listed["num_shards"] == 2
    assert main(["show", str(out), "dnn/logits/kernel", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["dtype"] == "float32"
    assert main(["verify", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True
    assert main(["strip", str(out), str(tmp_path / "stripped" / "m"), "-q"]) == 0
    capsys.readouterr()
    with ckptio.open(tmp_path / "stripped" / "m") as ckpt:
        assert "dnn/logits/kernel" in ckpt and not any(n.endswith(("/Adagrad", "/Ftrl", "/Ftrl_1")) for n in ckpt)

    assert main(["unpack", str(out), str(tmp_path / "un"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["files"][0] == "model.ckpt-10000.index"
    assert main(["unpack", str(out), str(tmp_path / "un")]) == 2
    assert main(["unpack", str(tmp_path / "missing.tar.zst"), str(tmp_path / "un2")]) == 1


def test_verify_reports_a_damaged_tensor_in_an_archive(tmp_path, capsys):
    make_checkpoint(tmp_path / "m", [[1000, 2000], [3000]])
    with open(tmp_path / "m.data-00000-of-00002", "r+b") as f:
        f.seek(1500)
        f.write(b"\xff\xfe")
    pack(tmp_path / "m", tmp_path / "m.tar.zst")
    assert main(["verify", str(tmp_path / "m.tar.zst"), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert [p["entry"] for p in report["problems"]] == ["s0/t001"]
    assert report["tensors"] == 3
    from ckptio.verify import verify

    with ckptio.open(tmp_path / "m.tar.zst") as ckpt:
        assert len(verify(ckpt).problems) == 1
        assert ckpt.archive.passes == 1  # shard sizes are checked after the data, not before


def test_rewrite_from_an_archive_streams_once_into_many_shards(tmp_path):
    from ckptio.rewrite import rewrite

    kept = make_checkpoint(tmp_path / "m", [[1000, 2000, 3000], [4000, 5000]])
    pack(tmp_path / "m", tmp_path / "m.tar.zst")
    with ckptio.open(tmp_path / "m.tar.zst") as src:
        report = rewrite(src, tmp_path / "out" / "m", num_shards=3)
        assert src.archive.passes == 1
    assert len(report.kept) == 5
    with ckptio.open(tmp_path / "out" / "m") as out:
        assert out.num_shards == 3
        assert {n: out[n].read().tobytes() for n in out} == kept


def test_rewrite_into_an_archive(corpus, tmp_path, capsys):
    src = str(corpus / "tf1_t2t_transformer")
    assert main(["strip", src, str(tmp_path / "s.tar.zst"), "--shards", "2", "-q"]) == 0
    assert "s.tar.zst" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path)) == ["s.tar.zst"]  # the temp directory is gone
    with ckptio.open(tmp_path / "s.tar.zst") as packed:
        assert packed.num_shards == 2
        assert not any("Adam" in n for n in packed)
        assert main(["verify", str(tmp_path / "s.tar.zst"), "-q"]) == 0


# -- bounded memory ------------------------------------------------------------------------------

_PEAK = """
import sys
from ckptio.cli.main import main
if sys.argv[1] == "--read":  # control: decode one whole tensor into memory
    import ckptio
    with ckptio.open(sys.argv[2]) as ckpt:
        rc = int(ckpt[sys.argv[3]].read().nbytes > 0) - 1
else:
    rc = main(sys.argv[1:])
# VmHWM, not ru_maxrss: the latter survives exec and so counts the forking parent's pages.
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print("PEAK", rc, hwm * 1024)
"""


def _peak(args, cwd) -> tuple[int, int]:
    """(exit code, peak RSS in bytes) of `ckptio ARGS` in a fresh interpreter."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run(
        [sys.executable, "-c", _PEAK, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=120
    )
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("PEAK")]
    assert line, r.stdout + r.stderr
    _, rc, peak = line[-1].split()
    return int(rc), int(peak)


def test_streaming_a_300_mb_archive_keeps_memory_bounded(tmp_path):
    data_bytes = 300 << 20
    # 2 shards; tensors of 64 MiB, so holding any one of them would show in the peak.
    make_checkpoint(tmp_path / "big", [[64 << 20, 64 << 20, 22 << 20], [64 << 20, 64 << 20, 22 << 20]])
    stats = pack(tmp_path / "big", tmp_path / "big.tar.zst", level=1)
    for f in os.listdir(tmp_path):
        if f.startswith("big.data"):
            os.unlink(tmp_path / f)  # only the archive is left to read
    assert stats.bytes_in > data_bytes
    archive_path = str(tmp_path / "big.tar.zst")
    make_checkpoint(tmp_path / "small", [[1000]])
    pack(tmp_path / "small", tmp_path / "small.tar.zst")
    _, baseline = _peak(["verify", "-q", str(tmp_path / "small.tar.zst")], tmp_path)  # same imports, no data

    rc, peak = _peak(["verify", "-q", archive_path], tmp_path)
    assert rc == 0
    assert peak - baseline < 64 << 20, (baseline, peak)  # well under the 300 MB of data, under one tensor
    rc, peak = _peak(["rewrite", "-q", archive_path, str(tmp_path / "copy" / "big"), "--shards", "2"], tmp_path)
    assert rc == 0
    assert peak - baseline < 64 << 20, (baseline, peak)
    assert sum(
        os.path.getsize(tmp_path / "copy" / f) for f in os.listdir(tmp_path / "copy") if ".data-" in f
    ) == stats.bytes_in - os.path.getsize(tmp_path / "big.index")
    # Control: the measurement does see a whole 64 MiB tensor held in memory.
    rc, peak = _peak(["--read", archive_path, "s0/t000"], tmp_path)
    assert rc == 0 and peak - baseline >= 64 << 20, (baseline, peak)
