"""A V2 checkpoint's data shards: every stored piece's bytes checked as TensorFlow checks them."""

from __future__ import annotations

from ..bundle import dtypes, naming, strings
from ..bundle.entry import Entry, Header
from ..bundle.reader import crc_problem, is_lfs_pointer, stored_crc
from ..errors import CkptioError
from ..io import MemorySource
from ..sstable.coding import crc32c
from ..store.base import Source
from .inputs import Files, data_files, not_regular
from .report import Diagnosis, Piece

CHUNK = 8 << 20
LFS_MAX = 1024  # a Git LFS pointer is smaller than this (bundle.reader.is_lfs_pointer)
FOREIGN_FRACTION = 0.5  # a shard failing at least this share of its checksums is "from elsewhere"


def check_data(d: Diagnosis, store: Files, prefix: str, header: Header, pieces) -> None:
    """Check every shard and every piece's bytes, shard by shard in offset order (forward reads
    only); classify shard-level damage once per shard."""
    n = header.num_shards
    mismatch_at = len(d.problems)  # reported first, but listed last: an archive lists by reading to its end
    by_shard: dict[int, list[tuple[str, Piece]]] = {}
    for name, parts in pieces.items():
        for _, piece in parts:
            by_shard.setdefault(piece.shard, []).append((name, piece))
    results: dict[str, str | None] = {}  # piece label -> failure reason
    for shard in sorted(by_shard):
        items = sorted(by_shard[shard], key=lambda it: it[1].entry.offset)
        if not 0 <= shard < n:
            for _name, piece in items:
                results[piece.label] = f"its entry names shard {shard} but the header says {n} shard(s)"
            d.problem(
                "bad-shard-id",
                f"{len(items)} entries name shard {shard}, but the header says {n} shard(s)",
                path=naming.index_path(prefix),
            )
            continue
        path = naming.data_path(prefix, shard, n)
        d._shard_paths[shard] = path
        try:
            results.update(_check_shard(d, store, path, header, items))
        except CkptioError as exc:  # the medium failed (an archive cut short, a server gone): once per cause
            _medium_failed(d, exc, path)
            base = store.basename(path)
            for _, piece in items:
                results.setdefault(piece.label, f"its data shard {base} cannot be read ({exc.message})")
    try:
        for shard in range(n):
            if shard not in by_shard:
                path = naming.data_path(prefix, shard, n)
                d._shard_paths[shard] = path
                if not store.exists(path):
                    d.note("missing-empty-shard", "data shard is missing, but no tensor is stored in it", path=path)
        present = data_files(store, prefix)
    except CkptioError as exc:
        _medium_failed(d, exc, prefix)
        present = []
    counts = {p: split[2] for p in present if (split := naming.split_data_path(p))}
    other_counts = sorted(set(counts.values()) - {n})
    if other_counts:
        other = next(p for p, count in counts.items() if count == other_counts[0])
        d.problem(
            "shard-count-mismatch",
            f"data files for a {other_counts[0]}-shard save are present ({store.basename(other)}) "
            f"but the index says {n} shard(s): the index and data files come from different saves",
            path=naming.index_path(prefix),
        )
        d.problems.insert(mismatch_at, d.problems.pop())
    for name, parts in pieces.items():
        for _, piece in parts:
            why = results.get(piece.label)
            if why:
                d.damage(name, why if piece.label == name else f"slice {piece.label[len(name) :]}: {why}")
                break


def _medium_failed(d: Diagnosis, exc: CkptioError, path: str) -> None:
    finding = ("unreadable", exc.message, exc.path or path, exc.offset)
    if not any((p.kind, p.message, p.path, p.offset) == finding for p in d.problems):
        d.problem("unreadable", exc.message, path=exc.path or path, offset=exc.offset)


def _check_shard(d: Diagnosis, store: Files, path: str, header: Header, items) -> dict[str, str | None]:
    results: dict[str, str | None] = {}
    base = store.basename(path)
    if not store.exists(path):
        d.problem("missing-shard", f"data shard {base} is missing; {len(items)} tensor(s) are stored there", path=path)
        return {piece.label: f"its data shard {base} is missing" for _, piece in items}
    why = not_regular(store, path)
    if why:
        d.problem("not-a-file", why, path=path)
        return {piece.label: f"its data shard {base} is not a regular file" for _, piece in items}
    try:
        src = _open_shard(store, path)
    except CkptioError as exc:
        d.problem("unreadable", exc.message, path=path)
        return {piece.label: f"its data shard {base} cannot be read" for _, piece in items}
    if is_lfs_pointer(src):
        src.close()
        d.problem(
            "lfs-pointer",
            "this data shard is a Git LFS pointer, not the file itself; run 'git lfs pull' to fetch it",
            path=path,
        )
        return {piece.label: f"its data shard {base} is a Git LFS pointer" for _, piece in items}
    beyond: set[str] = set()  # labels of pieces whose bytes lie past the end of the file
    try:
        size = src.size
        need = max(piece.entry.offset + piece.entry.size for _, piece in items)
        checked, failed = 0, []
        # Announce the reads, in order: a remote store fetches ahead, coalesced and in parallel.
        src.will_need([(p.entry.offset, p.entry.size) for _, p in items if 0 <= p.entry.offset <= size - p.entry.size])
        for _, piece in items:
            keep = piece.label == naming.OBJECT_GRAPH_KEY
            status, why, graph = check_piece(src, piece.entry, header.big_endian, keep=keep)
            if status == "beyond":
                beyond.add(piece.label)
                why = f"its bytes lie past the end of {base} ({size} bytes, truncated)"
            elif status == "bytes":
                checked += 1
                if why:
                    failed.append(piece.label)
                elif graph is not None:
                    d._graph_bytes = graph
            results[piece.label] = why
    finally:
        src.close()
    foreign = (
        len(failed) >= 2
        and len(failed) >= FOREIGN_FRACTION * checked
        or (len(failed) == 1 and checked == 1 and size != need)
    )
    wild = size > 2 * need + 4096 or size < need // 2
    if foreign or (wild and failed):
        d._graph_bytes = None  # bytes of another checkpoint's graph, if any
        d.problem(
            "foreign-shard",
            f"{len(failed)} of {checked} tensors in {base} do not match their index entries"
            + (f" and the file is {size} bytes where the index expects {need}" if size != need else "")
            + ": this data file probably belongs to a different checkpoint (or a different save)",
            path=path,
        )
        elsewhere = f"{base} does not hold its bytes (the shard seems to come from another checkpoint)"
        for label, why in results.items():
            if why and (label in failed or label in beyond):
                results[label] = elsewhere
        return results
    if size < need:
        d.problem(
            "truncated-shard",
            f"data shard {base} is truncated: it has {size} bytes but the index needs "
            f"{need}; {len(beyond)} tensor(s) lie (partly) beyond its end",
            path=path,
            offset=size,
        )
    elif size > need:
        d.note(
            "trailing-bytes", f"{size - need} bytes at the end of {base} belong to no tensor", path=path, offset=need
        )
    for _, piece in items:
        why = results.get(piece.label)
        if why and piece.label not in beyond:
            d.problem("corrupt-tensor", why, path=path, key=piece.label, offset=piece.entry.offset)
    return results


def _open_shard(store: Files, path: str) -> Source:
    """The shard as a Source; a small one is held in memory, so that the pointer check and the pieces
    share one read (an archive member reads forward only)."""
    src = store.open(path)
    if src.size > LFS_MAX:
        return src
    try:
        return MemorySource(src.read(0, src.size), name=path)
    finally:
        src.close()


def check_piece(
    src: Source, entry: Entry, big_endian: bool, *, keep: bool = False
) -> tuple[str, str | None, bytes | None]:
    """(status, reason, value): status "entry" (the entry itself is unusable), "beyond" (bytes past
    the end of the shard) or "bytes" (they were read; reason None if they check out). With keep, a
    scalar string that checks out comes back as value (the object graph: read once, in order)."""
    problem = entry.data_problem()
    if problem:
        return "entry", problem, None
    if entry.dtype == dtypes.VARIANT and big_endian:
        return "entry", "variant tensors in big-endian bundles cannot be read (TensorFlow: Unimplemented)", None
    if entry.offset + entry.size > src.size:
        if entry.dtype == dtypes.STRING and entry.offset < src.size:
            # The lengths and their checksum come first: what is there tells whether these are
            # the right bytes cut short, or some other file's bytes.
            try:
                why = strings.prefix_problem(
                    src.read(entry.offset, src.size - entry.offset),
                    entry.num_elements,
                    entry.size,
                    big_endian=big_endian,
                )
            except CkptioError as exc:
                return "bytes", exc.message, None
            if why:
                return "bytes", why, None
        return "beyond", None, None
    value = None
    try:
        if entry.dtype in (dtypes.STRING, dtypes.VARIANT):
            raw = src.read(entry.offset, entry.size)
            crc = stored_crc(entry, raw, big_endian=big_endian)
            if keep and entry.dtype == dtypes.STRING and entry.num_elements == 1 and not entry.slices:
                value = strings.decode(raw, 1, big_endian=big_endian)[0][0]
        else:
            crc, pos, end = 0, entry.offset, entry.offset + entry.size
            while pos < end:
                chunk = src.read(pos, min(CHUNK, end - pos))
                crc = crc32c(chunk, crc)
                pos += len(chunk)
    except CkptioError as exc:
        return "bytes", exc.message, None
    why = crc_problem(entry, crc)
    return "bytes", why, None if why else value
