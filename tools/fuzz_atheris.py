#!/usr/bin/env python3
"""Coverage-guided fuzzing of ckptio's parsers with atheris (libFuzzer for Python).

Every target feeds attacker-controlled bytes to one parser; the only acceptable failure is a
ckptio error (CkptioError). Anything else (IndexError, struct.error, MemoryError, a hang caught
by -timeout, a wrong array) is a crash that libFuzzer saves as crash-<sha1> for replay.

    pip install atheris                     # not a ckptio dependency; needs Linux or macOS
    python tools/fuzz_atheris.py -atheris_runs=200000            # all targets, chosen per input
    python tools/fuzz_atheris.py -max_len=4096 -timeout=10 -rss_limit_mb=1536 corpus_dir/
    python tools/fuzz_atheris.py --target table -runs=50000      # one target only
    python tools/fuzz_atheris.py crash-1234abcd                  # replay one saved input
    python tools/fuzz_atheris.py --selftest 2000                 # no atheris: random inputs, no guidance

Targets: table (SSTable + blocks), entry (BundleEntryProto/BundleHeaderProto), strings (string
and variant tensor bytes), slicekey (OrderedCode slice keys), v1 (a whole V1 file), bundle (a
whole V2 checkpoint: index + data shard, opened, listed, read and verified), objgraph (the TF2
object graph, when ckptio.objgraph exists). Seed inputs are built in, so an empty corpus works;
the bytes of real .index and V1 files make good extra seeds.
"""

from __future__ import annotations

import os
import random
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

TARGETS = ("table", "entry", "strings", "slicekey", "v1", "bundle", "objgraph")


def _imports():
    global ckptio, CkptioError, MemorySource, Located, Table, Entry, Header, strings, slices, v1, verify
    import ckptio  # noqa: F811
    from ckptio.bundle import slices, strings, v1  # noqa: F401
    from ckptio.bundle.entry import Entry, Header  # noqa: F401
    from ckptio.bundle.paths import Located  # noqa: F401
    from ckptio.errors import CkptioError  # noqa: F401
    from ckptio.io import MemorySource  # noqa: F401
    from ckptio.sstable import Table  # noqa: F401
    from ckptio.verify import verify  # noqa: F401


# -- targets: each takes bytes and may raise only CkptioError -----------------------------------


def fuzz_table(data: bytes) -> None:
    table = Table(MemorySource(data, "<fuzz>"))
    for _ in table:
        pass
    table.get(b"")
    table.get(b"a")
    for i in range(len(table.index)):
        list(table.block(i).seek(b"m"))


def fuzz_entry(data: bytes) -> None:
    try:
        entry = Entry.parse(data)
    except CkptioError:
        entry = None
    if entry is not None:
        entry.problem()
        entry.data_problem()
        if Entry.parse(entry.encode()) != entry:
            raise AssertionError("entry does not round-trip")
    Header.parse(data)


def fuzz_strings(data: bytes) -> None:
    count = data[0] if data else 0
    body = data[1:]
    for big in (False, True):
        try:
            strings.decode(body, count, big_endian=big)
        except CkptioError:
            pass
    strings.variant_crc(body, count)


def fuzz_slicekey(data: bytes) -> None:
    try:
        name, s = slices.decode_key(data)
    except CkptioError:
        return
    canonical = all(start == 0 for start, length in s.extents if length is None)
    if canonical and slices.decode_key(slices.encode_key(name, s)) != (name, s):
        raise AssertionError("slice key does not round-trip")
    shape = tuple(max(0, (start or 0)) + (length or 0) for start, length in s.extents)
    if all(d < (1 << 20) for d in shape) and s.check(shape) is None:
        slices.tiling_problem(shape, [s])


def fuzz_v1(data: bytes) -> None:
    ck = ckptio.Checkpoint("m", located=Located("v1", "m", ("m",)), open_source=lambda p: MemorySource(data, p))
    with ck:
        for name in ck:
            try:
                ck[name].read()
            except CkptioError:
                pass
        verify(ck)


def fuzz_bundle(data: bytes) -> None:
    # First 2 bytes: where the index ends and the data shard begins.
    cut = int.from_bytes(data[:2], "little") % (len(data) + 1) if len(data) >= 2 else 0
    files = {"m.index": data[2 : 2 + cut], "m.data-00000-of-00001": data[2 + cut :]}

    def source(path):
        if path not in files:
            raise ckptio.CheckpointNotFoundError("no such file", path=path)
        return MemorySource(files[path], path)

    ck = ckptio.Checkpoint("m", located=Located("v2", "m"), open_source=source)
    with ck:
        try:
            names = list(ck)
        except CkptioError:
            names = []
        for name in names:
            try:
                ck[name].read()
            except CkptioError:
                pass
        verify(ck)


def fuzz_objgraph(data: bytes) -> None:
    try:
        from ckptio.objgraph import ObjectGraph
    except ImportError:
        return
    graph = ObjectGraph.parse(data)
    graph.serialize()


def run_one(target: str, data: bytes) -> None:
    try:
        globals()[f"fuzz_{target}"](data)
    except CkptioError:
        pass  # the expected way to refuse hostile bytes


def seeds() -> list[bytes]:
    """Small valid inputs for every target (libFuzzer mutates from these)."""
    import numpy as np

    from ckptio.bundle.slices import Slice, encode_key
    from ckptio.sstable import TableBuilder
    from ckptio.sstable.coding import crc32c, mask

    out = []
    arr = np.arange(6, dtype=np.float32)
    entry = Entry(1, (2, 3), 0, 0, 24, mask(crc32c(arr.tobytes())))
    buf = bytearray()
    tb = TableBuilder(buf.extend, block_size=64, restart_interval=2)
    tb.add(b"", Header().encode())
    tb.add(b"w", entry.encode())
    tb.finish()
    index = bytes(buf)
    out.append(index)
    out.append(entry.encode())
    text, _ = strings.encode([b"a", b"", b"xyz"])
    out.append(b"\x03" + text)
    out.append(encode_key("part", Slice(((4, 3), (0, None)))))
    out.append(len(index).to_bytes(2, "little") + index + arr.tobytes())
    return out


def main(argv: list[str]) -> int:
    target = None
    if "--target" in argv:
        i = argv.index("--target")
        target = argv[i + 1]
        if target not in TARGETS:
            print(f"unknown target {target!r}; choose from {', '.join(TARGETS)}", file=sys.stderr)
            return 2
        del argv[i : i + 2]
    if "--selftest" in argv:
        _imports()
        n = int(argv[argv.index("--selftest") + 1])
        rng = random.Random(0)
        pool = seeds()
        for _i in range(n):
            base = bytearray(rng.choice(pool))
            for _ in range(rng.randint(0, 6)):
                if base:
                    base[rng.randrange(len(base))] = rng.randrange(256)
            if rng.random() < 0.3:
                base = base[: rng.randrange(len(base) + 1)]
            for t in [target] if target else TARGETS:
                run_one(t, bytes(base))
        print(f"selftest: {n} inputs x {1 if target else len(TARGETS)} target(s), no crash")
        return 0

    import atheris

    with atheris.instrument_imports(include=["ckptio"]):
        _imports()

    def one_input(data: bytes) -> None:
        if target:
            run_one(target, data)
        elif data:
            run_one(TARGETS[data[0] % len(TARGETS)], data[1:])

    args = list(argv)
    if not any(os.path.isdir(a) or os.path.isfile(a) for a in args[1:] if not a.startswith("-")):
        # No corpus given: start from the built-in seeds (one per target, selector byte first).
        import tempfile

        corpus = tempfile.mkdtemp(prefix="ckptio-fuzz-")
        for i, seed in enumerate(seeds()):
            for t, name in enumerate(TARGETS):
                with open(os.path.join(corpus, f"seed-{i}-{name}"), "wb") as f:
                    f.write(seed if target else bytes([t]) + seed)
        args.append(corpus)
        print(f"fuzz_atheris: seeds in {corpus} (new finds are added there)", file=sys.stderr)
    atheris.Setup(args, one_input)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
