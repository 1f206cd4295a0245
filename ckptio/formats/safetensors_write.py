"""Write safetensors: the reference writer's layout, Hugging Face's shard names, one file or a set with its index."""

from __future__ import annotations

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


def stale_outputs(dst: str, store=None) -> list[str]:
    """Files an earlier export to dst may have left in store (local files when None): the single file,
    its index and its shards."""
    import re

    from ..store.local import LocalStore

    store = store or LocalStore()
    base = dst[: -len(INDEX_SUFFIX)] if dst.endswith(INDEX_SUFFIX) else dst
    directory, name = store.dirname(base), store.basename(base)
    stem = re.escape(name[: -len(".safetensors")])
    shard = re.compile(stem + r"-\d{5}-of-\d{5}\.safetensors$")
    found = [store.join(directory, n) for n in store.list(directory) if shard.match(n)]
    return [p for p in (base, base + INDEX_SUFFIX) if store.exists(p)] + sorted(found)


def existing_outputs(dst: str, store=None) -> list[str]:
    return stale_outputs(dst, store)


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
    store=None,
    num_shards=1,
    max_shard_size=None,
    verify=True,
    progress=None,
    fsync=False,
    metadata=None,
) -> list[str]:
    """Write tensors as one safetensors file or a sharded set with its index through store's output
    (local files when None): the shards, then the index, committed in that order; return the paths.

    A local file is filled at its places in source order (copy_file_range where the bytes are
    unchanged); an upload (an object store: final names, the index last) in output order.
    """
    from ..bundle.copy import ShardFile
    from ..errors import CkptioError, CorruptCheckpointError
    from ..store.atomic import interrupts_deferred
    from ..store.local import LocalStore
    from .export import groups_by_size, runs_of, write_runs

    for t in tensors:  # JSON cannot carry names that are not valid Unicode text
        try:
            t.name.encode("utf-8")
        except UnicodeEncodeError:
            from ..errors import PlanError

            raise PlanError("the name is not valid UTF-8, which a safetensors header cannot hold", key=t.name) from None
    store = store or LocalStore()
    groups = groups_by_size(tensors, num_shards, max_shard_size)
    paths, index = shard_names(dst, len(groups))
    old = stale_outputs(dst, store)
    stale = [p for p in old if p not in paths and p != index]
    output = store.output()
    output.claim(dst)  # locally: the directory is made, and a second writer of dst is refused
    weight_map: dict[str, str] = {}
    try:
        # An index being replaced goes first: a crash then leaves no set rather than a stale index.
        output.replace([p for p in old if p.endswith(INDEX_SUFFIX)])
        for path, group in zip(paths, groups):
            order = layout_order(group)
            head, begins = encode_header(metadata or {}, [(t.name, FROM_TF[t.dtype], t.shape, t.nbytes) for t in order])
            total = len(head) + sum(t.nbytes for t in order)
            out = ShardFile(output.create(path))
            out.sink.reserve(total)  # a full disk fails here, before any copying
            out.write(head)
            placed = [(len(head) + begin + run.at, run) for t, begin in zip(order, begins) for run in runs_of(ckpt, t)]
            write_runs(ckpt, out, placed, verify=verify, progress=progress)
            if not out.sink.seekable and out.offset != total:
                raise CorruptCheckpointError(f"wrote {out.offset} bytes, expected {total}", path=path)
            out.sink.truncate(total)  # every byte was written; this only pins the size
            out.sink.close()
            weight_map.update((t.name, store.basename(path)) for t in group)
        if index:
            sink = output.create(index)
            sink.write(encode_index(sum(t.nbytes for t in tensors), weight_map))
            sink.close()
        # From the first rename on, finishing is the only right outcome: Ctrl-C waits until the set is in place.
        with interrupts_deferred():
            output.commit(fsync=fsync)
            for p in stale:  # files of the export this one replaced (--force)
                try:
                    store.remove(p)
                except (CkptioError, OSError):
                    pass
    except BaseException:
        output.abort()
        raise
    output.release()
    return paths + ([index] if index else [])
