"""Write safetensors: the reference writer's layout, Hugging Face's shard names, one file or a set with its index."""

from __future__ import annotations

import os

from .safetensors_header import FROM_TF, INDEX_SUFFIX, RANK, encode_header, encode_index


def layout_order(tensors):
    """The reference writer's order: dtype descending in enum order (larger items first, all aligned), then name."""
    return sorted(tensors, key=lambda t: (-RANK[FROM_TF[t.dtype]], t.name))


def shard_names(dst: str, count: int) -> tuple[list[str], str | None]:
    """Output file paths for count shards and the index path (None for a single file), named as Hugging Face does."""
    if dst.endswith(INDEX_SUFFIX):
        base, index = dst[: -len(INDEX_SUFFIX)], dst
    elif count == 1:
        return [dst], None
    else:
        base, index = dst, dst + INDEX_SUFFIX
    stem = base[: -len(".safetensors")]
    return [f"{stem}-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)], index


def stale_outputs(dst: str) -> list[str]:
    """Files an earlier export to dst may have left: the single file, its index and its shards."""
    import re

    base = dst[: -len(INDEX_SUFFIX)] if dst.endswith(INDEX_SUFFIX) else dst
    directory, name = os.path.split(base)
    stem = re.escape(name[: -len(".safetensors")])
    shard = re.compile(stem + r"-\d{5}-of-\d{5}\.safetensors$")
    try:
        names = os.listdir(directory or ".")
    except OSError:
        names = []
    found = [os.path.join(directory, n) for n in names if shard.match(n)]
    return [p for p in (base, base + INDEX_SUFFIX) if os.path.exists(p)] + sorted(found)


def existing_outputs(dst: str) -> list[str]:
    return stale_outputs(dst)


FORMAT_NAME = "safetensors"


def can_store(enum: int) -> bool:
    return enum in FROM_TF


def output_paths(dst: str, tensors, *, num_shards=1, max_shard_size=None) -> list[str]:
    """Every file an export to dst writes (shards, then the index if any)."""
    from .export import groups_by_size

    paths, index = shard_names(dst, len(groups_by_size(tensors, num_shards, max_shard_size)))
    return paths + ([index] if index else [])


def write(
    ckpt,
    tensors,
    dst: str,
    *,
    num_shards=1,
    max_shard_size=None,
    verify=True,
    progress=None,
    fsync=False,
    metadata=None,
) -> list[str]:
    """Write tensors as one safetensors file or a sharded set with its index, atomically; return the paths."""
    from ..bundle.copy import ShardFile
    from ..io import AtomicFiles, make_dirs, preallocate
    from .export import groups_by_size, runs_of, write_error, write_runs

    for t in tensors:  # JSON cannot carry names that are not valid Unicode text
        try:
            t.name.encode("utf-8")
        except UnicodeEncodeError:
            from ..errors import PlanError

            raise PlanError("the name is not valid UTF-8, which a safetensors header cannot hold", key=t.name) from None
    groups = groups_by_size(tensors, num_shards, max_shard_size)
    paths, index = shard_names(dst, len(groups))
    directory = os.path.dirname(dst) or "."
    make_dirs(directory)
    stale = [p for p in stale_outputs(dst) if p not in paths and p != index]
    files = AtomicFiles(directory)
    weight_map: dict[str, str] = {}
    try:
        for path, group in zip(paths, groups):
            order = layout_order(group)
            head, begins = encode_header(metadata or {}, [(t.name, FROM_TF[t.dtype], t.shape, t.nbytes) for t in order])
            total = len(head) + sum(t.nbytes for t in order)
            _, fd = files.create(path)
            out = ShardFile(fd, path)
            try:
                try:
                    preallocate(fd, total)  # a full disk fails here, before any copying
                except OSError as exc:
                    raise write_error(exc, path) from None
                out.write(head)
                placed = [
                    (len(head) + begin + run.at, run) for t, begin in zip(order, begins) for run in runs_of(ckpt, t)
                ]
                write_runs(ckpt, out, placed, verify=verify, progress=progress)
                try:
                    os.ftruncate(fd, total)  # every byte was written; this only pins the size
                except OSError as exc:
                    raise write_error(exc, path) from None
            finally:
                os.close(fd)
            weight_map.update((t.name, os.path.basename(path)) for t in group)
        if index:
            _, fd = files.create(index)
            try:
                ShardFile(fd, index).write(encode_index(sum(t.nbytes for t in tensors), weight_map))
            finally:
                os.close(fd)
        # An index being replaced goes first: a crash then leaves no set rather than a stale index.
        files.commit(remove_first=[p for p in stale if p.endswith(INDEX_SUFFIX)], fsync=fsync)
    except BaseException:
        files.abort()
        raise
    for p in stale:  # files of the export this one replaced (--force)
        try:
            os.unlink(p)
        except OSError:
            pass
    return paths + ([index] if index else [])
