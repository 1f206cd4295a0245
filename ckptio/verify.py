"""Check a whole checkpoint: every block, every entry, every tensor's checksum, every shard's size.

Unlike TensorFlow, which stops at the first bad checksum, this collects every problem.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from .bundle import dtypes, naming
from .bundle.slices import encode_key as slice_key
from .bundle.slices import key_label
from .errors import CkptioError


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong, located as precisely as we can."""

    message: str
    path: str | None = None
    key: str | None = None
    offset: int | None = None

    def __str__(self) -> str:
        return str(CkptioError(self.message, path=self.path, key=self.key, offset=self.offset))


@dataclass(slots=True)
class VerifyReport:
    """What verify found: every problem, and how much it checked."""

    problems: list[Problem] = field(default_factory=list)
    tensors: int = 0
    bytes_checked: int = 0
    damaged: set[str] = field(default_factory=set, repr=False)  # tensor names whose bytes are bad
    checked: str | None = field(default=None, repr=False)  # what was checked, when not every checksum (other formats)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, exc_or_msg, *, path=None, key=None, offset=None) -> None:
        if isinstance(exc_or_msg, CkptioError):
            e = exc_or_msg
            self.problems.append(Problem(e.message, e.path, e.key if e.key is not None else key, e.offset))
        else:
            self.problems.append(Problem(str(exc_or_msg), path, key, offset))
        if key is not None:
            self.damaged.add(key)


def verify(ckpt, *, progress: Callable[[int], None] | None = None, check_graph: bool = True) -> VerifyReport:
    """Verify a Checkpoint (or the checkpoint at a path); returns a VerifyReport listing every problem found."""
    if isinstance(ckpt, (str, os.PathLike)):
        from .sources import open as open_checkpoint

        with open_checkpoint(ckpt) as opened:
            return verify(opened, progress=progress, check_graph=check_graph)
    report = VerifyReport()
    check_format = getattr(ckpt, "verify_format", None)
    if check_format is not None:  # .safetensors, .npz, Keras (ckptio/formats): their own checks
        check_format(report, progress)
        return report
    if ckpt.reader.checksums:  # each entry's crc32c covers its stored bytes (V2)
        _verify_v2(ckpt, report, progress)
    else:  # only the tables' block CRCs cover the values (V1): decode every tensor, check every block
        _verify_v1(ckpt, report, progress)
    if check_graph and not report.problems:
        try:
            from .objgraph import check_consistency
        except ImportError:
            pass
        else:
            for message in check_consistency(ckpt):
                report.add(message, path=ckpt.path, key=naming.OBJECT_GRAPH_KEY)
    check_container = getattr(ckpt, "check_container", None)  # an archive: what lies past the tensors
    if check_container is not None:
        try:
            check_container()
        except CkptioError as exc:
            report.add(exc)
    return report


def _verify_v2(ckpt, report: VerifyReport, progress) -> None:
    from .bundle.entry import Entry

    reader = ckpt.reader
    path = reader.path
    entries: dict[str, Entry] = {}
    slices: dict[bytes, Entry] = {}
    # Walk the table ourselves so one bad entry or block does not hide the others.
    table = reader.table
    _check_metaindex(table, report)
    for i in range(len(table.index)):
        try:
            block = table.block(i)
            items = list(block.entries())
        except CkptioError as exc:
            report.add(exc)
            continue
        for key, value in items:
            if key == b"":
                continue
            name = naming.decode_key(key)
            try:
                entry = Entry.parse(value, path=path, key=name)
            except CkptioError as exc:
                report.add(exc, key=name)
                continue
            if key[:1] == b"\x00":
                slices[key] = entry
            else:
                entries[name] = entry
    from .bundle.slices import tiling_problem

    referenced = set()
    for name, entry in entries.items():
        if entry.slices:
            problem = tiling_problem(entry.shape, entry.slices)
            if problem:
                report.add(problem, path=path, key=name)
        for s in entry.slices:
            k = slice_key(name, s)
            referenced.add(k)
            if k not in slices:
                report.add(f"slice {s.spec()} is listed but has no entry", path=path, key=name)
            else:
                mismatch = entry.piece_problem(s, slices[k])
                if mismatch:
                    report.add(mismatch, path=path, key=name)
    for k in slices:
        if k not in referenced:
            report.add("stray slice entry that no tensor lists", path=path, key=key_label(k))
    # An archive's shards are read in one forward pass: check their sizes after the data.
    sequential = ckpt.sequential
    if not sequential:
        _check_shards(reader, entries, slices, report)
    pieces = [(name, e) for name, e in entries.items() if not e.slices]
    pieces += [(key_label(k), e) for k, e in slices.items()]
    pieces.sort(key=lambda p: (p[1].shard_id, p[1].offset))
    for name, entry in pieces:
        report.tensors += 1
        try:
            if entry.dtype == dtypes.STRING:
                reader.read_entry(name, entry)
            else:
                for chunk in reader.iter_raw(name, entry):
                    report.bytes_checked += len(chunk)
                    if progress:
                        progress(len(chunk))
                continue
            report.bytes_checked += entry.size
            if progress:
                progress(entry.size)
        except CkptioError as exc:
            report.add(exc, key=name.split("[", 1)[0] if name.endswith("]") else name)
    if sequential:
        _check_shards(reader, entries, slices, report)


def _check_metaindex(table, report: VerifyReport) -> None:
    """The metaindex block: TF never reads it, but damage there is damage to the file all the same."""
    try:
        table.check_metaindex()
    except CkptioError as exc:
        report.add(exc)


def _check_shards(reader, entries, slices, report: VerifyReport) -> None:
    """Every shard exists and is at least as long as the bytes its entries point at."""
    need: dict[int, int] = {}
    for e in list(entries.values()) + list(slices.values()):
        if not e.slices:
            need[e.shard_id] = max(need.get(e.shard_id, 0), e.offset + e.size)
    for shard in range(reader.header.num_shards):
        try:
            size = reader.shard(shard).size  # through the reader's sources: local, archive or remote
        except CkptioError as exc:
            report.add(exc)
            continue
        if size < need.get(shard, 0):
            report.add(
                f"shard is {size} bytes but entries need {need[shard]} (truncated)", path=reader.shard_path(shard)
            )
    for shard in need:
        if shard >= reader.header.num_shards:
            report.add(
                f"entries use shard {shard} but the header says {reader.header.num_shards} shards", path=reader.path
            )


def _verify_v1(ckpt, report: VerifyReport, progress) -> None:
    for name in ckpt:
        report.tensors += 1
        try:
            arr = ckpt[name].read()
            report.bytes_checked += getattr(arr, "nbytes", 0)
            if progress:
                progress(getattr(arr, "nbytes", 0))
        except CkptioError as exc:
            report.add(exc, key=name)
    for table in ckpt.reader.sstables():
        _check_metaindex(table, report)
        for i in range(len(table.index)):
            try:
                table.block(i)
            except CkptioError as exc:
                report.add(exc)


Report = VerifyReport  # its name before issue 13 (rewrite had a Report too)

__all__ = ["verify", "VerifyReport", "Report", "Problem"]
