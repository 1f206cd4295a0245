"""fit(src, template, out): the template's structure (keys, dtypes, shapes, object graph) with src's values.

Every template tensor is written once: copied from the source tensor that matches it (views.match),
copied from the template when none does, or built when it must be sliced, remapped to a new vocabulary
or re-partitioned. Copies go through rewrite's piece writer, so unchanged bytes are streamed with their
checksums carried over. Built tensors are made a chunk of output rows at a time from ranged row reads
(Tensor.read_rows), so memory stays bounded by the chunk size (strings, V1 and archive inputs excepted:
those pieces are read whole).
"""

from __future__ import annotations

import math
import os
import time

from .bundle import naming
from .checkpoint import Checkpoint
from .errors import MismatchError, PlanError, UnsupportedError
from .fit_decide import (  # noqa: F401 - their old home
    FLOATING,
    ON_MISMATCH,
    FitReport,
    Op,
    _decide,
    _without,
    mismatch_error,
    refuse_if_nothing_matched,
)
from .fit_write import CHUNK_BYTES, _write_built, layout, write  # defined here before the split (plan_fit uses them)
from .store import is_archive, is_url, local_path
from .views import match, view


def fit(
    src,
    template,
    out,
    *,
    rules=None,
    regex: bool = False,
    on_mismatch: str = "error",
    vocab=None,
    vocab_axis: int = 0,
    dry_run: bool = False,
    force: bool = False,
    num_shards: int | None = 1,
    max_shard_size: int | None = None,
    verify: bool = True,
    state_file: bool = True,
    fsync: bool = False,
) -> FitReport:
    """Write at `out` a checkpoint with template's structure and src's values where a source tensor matches.

    out: a local prefix, a URL (one ending in '/' names a directory: the template's file name there)
    or a .tar.zst (the template's file name inside it); a .weights.h5 template writes a local file.

    rules: a transform.Rename or (old, new) pairs renaming src's names first; on_mismatch: error, template or
    slice; vocab: {name: (old vocabulary, new vocabulary)}, each a file (one token per line) or a token list;
    num_shards / max_shard_size: output data shards, as for rewrite().
    """
    started = time.perf_counter()
    from .sources import open as open_checkpoint

    if on_mismatch not in ON_MISMATCH:
        raise PlanError(f"on_mismatch must be one of {', '.join(ON_MISMATCH)}, not {on_mismatch!r}")
    if vocab_axis not in (0, 1):
        raise PlanError(f"vocab_axis must be 0 or 1, not {vocab_axis!r}")
    if num_shards is not None and num_shards < 1 or max_shard_size is not None and max_shard_size < 1:
        raise PlanError("num_shards and max_shard_size must be at least 1")
    if out is None and not dry_run:
        raise PlanError("fit needs an output prefix (or dry_run=True)")
    from .formats.keras_fit import fit_weights_h5, is_keras_template

    if is_keras_template(template):  # a Keras 3 .weights.h5 template: written as one, through h5py
        if out is not None and is_url(os.fspath(out)):  # h5py writes local files: a URL must not become a local path
            raise UnsupportedError(
                "fit onto a .weights.h5 template writes a local .weights.h5; write it locally, then upload it",
                path=os.fspath(out),
            )
        return fit_weights_h5(
            src,
            template,
            None if out is None else local_path(os.fspath(out)),  # file:// is a local path written as a URL
            rules=_rules(rules, regex),
            on_mismatch=on_mismatch,
            dry_run=dry_run,
            force=force,
            fsync=fsync,
            vocab=vocab,
            shards=num_shards not in (None, 1) or max_shard_size is not None,
        )
    if out is not None:
        from .formats import kind_of

        out = local_path(os.fspath(out))  # file:// is a local path written as a URL
        if kind_of(out):
            raise PlanError(
                "fit writes a TensorFlow checkpoint (a prefix, a URL or a .tar.zst); convert it afterwards "
                "with `ckptio rewrite OUT FILE`",
                path=out,
            )
    rules = _rules(rules, regex)
    vocabularies = {name: (_tokens(old), _tokens(new)) for name, (old, new) in (vocab or {}).items()}
    cs = src if isinstance(src, Checkpoint) else open_checkpoint(src)
    try:
        ct = template if isinstance(template, Checkpoint) else open_checkpoint(template)
        try:
            store, prefix = None, out
            if out is not None:  # refuse an existing output or an input before any planning
                from .bundle.writer import check_output, output_store

                # A URL or a .tar.zst is written through its store (the template's name in a URL
                # directory or the archive); a local prefix as before.
                store, prefix = output_store(out, name=_name(ct), force=force)
                check_output(prefix, force=force, inputs=[cs.located, ct.located], store=store)
            report, ops = plan(cs, ct, rules, on_mismatch, vocabularies, vocab_axis)
            report.dst = None if out is None else out if is_archive(out) else prefix
            report.dry_run = dry_run
            if report.errors and not dry_run:
                raise mismatch_error(report, "tensor")
            if not dry_run:
                refuse_if_nothing_matched(report)
                write(
                    cs,
                    ct,
                    ops,
                    prefix,
                    store=store,
                    num_shards=num_shards,
                    max_shard_size=max_shard_size,
                    force=force,
                    verify=verify,
                    state_file=state_file,
                    fsync=fsync,
                    axis=vocab_axis,
                )
            report.seconds = time.perf_counter() - started
            return report
        finally:
            if ct is not template:
                ct.close()
    finally:
        if cs is not src:
            cs.close()


def _name(ckpt: Checkpoint) -> str:
    """The file name prefix of a checkpoint, kept by an output in a URL directory or an archive."""
    return ckpt.prefix.rstrip("/").rsplit("/", 1)[-1] or "model.ckpt"


def _rules(rules, regex: bool):
    from .transform import Rename, parse_map

    if rules is None or isinstance(rules, Rename):
        return rules
    pairs = tuple(parse_map(r) if isinstance(r, str) else tuple(r) for r in rules)
    return Rename(pairs, regex=regex) if pairs else None


def _tokens(value) -> tuple[str, ...]:
    """A vocabulary: a file of one token per line, or a sequence of tokens; duplicates are refused."""
    if isinstance(value, (str, os.PathLike)):
        try:
            with open(value, encoding="utf-8") as f:
                tokens = tuple(line.rstrip("\r\n") for line in f)
        except (OSError, UnicodeDecodeError) as exc:
            raise PlanError(f"cannot read vocabulary file {os.fspath(value)}: {exc}") from None
    else:
        tokens = tuple(value)
    seen = set()
    for t in tokens:
        if t in seen:
            raise PlanError(f"vocabulary lists token {t!r} twice")
        seen.add(t)
    return tokens


# -- planning ---------------------------------------------------------------------------------------


def plan(cs, ct, rules, on_mismatch: str, vocabularies: dict, axis: int) -> tuple[FitReport, list[Op]]:
    """Match, then decide how each template tensor is written; reads no tensor bytes."""
    vs, vt = view(cs), view(ct)
    m = match(vs, vt, rules, a_label="source", b_label="template")
    if m.shadowed:  # two sources for one template tensor: the rule's, and one matching it by name
        other, dst, how = m.shadowed[0]
        mapped = next(s for s, d, _ in m.pairs if d == dst)
        raise MismatchError(
            f"template tensor {dst!r} is matched by two source tensors: {mapped!r} (--map) and "
            f"{other!r} ({how}); send {other!r} elsewhere with a --map rule of its own"
        )
    source_of = {dst: (s, how) for s, dst, how in m.pairs}
    remap = _vocab_targets(vs, vt, source_of, vocabularies)
    report = FitReport(cs.prefix, ct.prefix, None)
    report.template_only, report.source_only = list(m.only_b), list(m.only_a)
    ops = []
    for dst in sorted(vt.tensors):
        if dst not in source_of:
            ops.append(Op("keep", dst))
            continue
        name, how = source_of[dst]
        es, et = vs.tensors[name].entry, vt.tensors[dst].entry
        ops.append(_decide(report, name, dst, how, es, et, on_mismatch, remap.get(dst), axis))
    return report, ops


def _vocab_targets(vs, vt, source_of: dict, vocabularies: dict) -> dict[str, tuple]:
    """template key -> (old tokens, new tokens, vocabulary name) for each remapped tensor and its slots."""
    out: dict[str, tuple] = {}
    for name, tokens in vocabularies.items():
        keys = vt.find(name)
        if not keys:  # a source name: the template tensor it matched
            keys = sorted({dst for dst, (s, _) in source_of.items() if s in vs.find(name)})
        if len(keys) != 1:
            raise PlanError(
                f"--vocab {name}: names {'no' if not keys else len(keys)} template tensors"
                + (f" ({', '.join(keys[:3])})" if keys else ""),
                key=name,
            )
        if keys[0] not in source_of:
            raise PlanError(f"--vocab {name}: no source tensor matches template tensor {keys[0]!r}", key=name)
        if keys[0] in out:  # two vocabularies for one tensor: neither may silently win
            raise PlanError(
                f"--vocab {name} and --vocab {out[keys[0]][2]} name one template tensor {keys[0]!r}", key=name
            )
        out[keys[0]] = tokens + (name,)
    named = set(out)
    for dst, t in vt.tensors.items():  # optimizer slots of a remapped variable move with it
        var = t.slot_of[0] if t.slot_of is not None else None
        if var in named and dst in named:
            raise PlanError(
                f"--vocab {out[dst][2]} names optimizer slot {dst!r}, which moves with its variable "
                f"(--vocab {out[var][2]}); drop one of them",
                key=dst,
            )
        if var in named and dst in source_of:
            src_var, src_slot = source_of[var][0], source_of[dst][0]
            if (
                t.entry.shape != vt.tensors[var].entry.shape
                or vs.tensors[src_slot].entry.shape != vs.tensors[src_var].entry.shape
            ):
                # A factored or scalar slot (Adafactor's row/column statistics, a step count) is not one
                # row per token: moving its entries as rows would be wrong without a word.
                raise PlanError(
                    f"--vocab {out[var][2]}: optimizer slot {dst!r} is not shaped like its variable "
                    f"{var!r}, so its rows cannot be remapped; fit with a template without the "
                    "optimizer, or strip the source's optimizer state first",
                    key=dst,
                )
            out[dst] = out[var]
    return out
