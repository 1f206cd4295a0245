"""ckptio fit SRC --template TEMPLATE OUT: the template's structure with SRC's values wherever they match.

  ckptio fit old.ckpt --template new_untrained.ckpt out.ckpt --on-mismatch template
  ckptio fit old.ckpt --template new.ckpt out.ckpt --map model/encoder/=model/backbone/
  ckptio fit old.ckpt --template new.ckpt out.ckpt --vocab emb=old_vocab.txt:new_vocab.txt
  ckptio fit tf_ckpt/ckpt --template new.weights.h5 out.weights.h5 --map encoder/=backbone/   (Keras 3)
Exit 0 written, 1 a mismatch under --on-mismatch error (or unreadable input), 2 usage.
"""

from __future__ import annotations

import json
import sys

from .common import check_output_prefix, check_shard_options, parse_size
from .diff import add_map_arguments, build_rules


def add_arguments(name, p) -> None:
    p.add_argument("src", metavar="SRC", help="the old checkpoint")
    p.add_argument(
        "out",
        metavar="OUT",
        help="output prefix (e.g. fitted/model.ckpt), URL or .tar.zst; a local OUT.weights.h5 with a "
        ".weights.h5 template",
    )
    p.add_argument(
        "--template",
        required=True,
        metavar="TEMPLATE",
        help="a checkpoint the new model wrote, e.g. tf.train.Checkpoint(model=new).write(path), "
        "or Keras 3's new.save_weights('new.weights.h5')",
    )
    add_map_arguments(p, "SRC")
    p.add_argument(
        "--on-mismatch",
        choices=("error", "template", "slice"),
        default="error",
        help="a matched tensor of another shape: stop (default), keep the template's value, or copy "
        "the overlapping leading corner",
    )
    p.add_argument(
        "--vocab",
        action="append",
        default=[],
        metavar="NAME=OLD_VOCAB:NEW_VOCAB",
        help="move NAME's rows from the old vocabulary's order to the new one's (files of one token "
        "per line); new tokens keep the template's rows; its optimizer slots move too",
    )
    p.add_argument("--vocab-axis", type=int, choices=(0, 1), default=0, help="the vocabulary axis (default 0: rows)")
    p.add_argument("--dry-run", action="store_true", help="print the report, write nothing")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--force", action="store_true", help="replace an existing output checkpoint")
    p.add_argument("--shards", type=int, metavar="N", help="number of output data shards (default 1)")
    p.add_argument("--max-shard-size", type=parse_size, metavar="SIZE", help="start a new shard past SIZE (e.g. 2G)")
    if name == "fit":  # not on `ckptio plan fit`
        p.add_argument(
            "--engine",
            metavar="ray[=ADDRESS]",
            help="write each output shard as a task on a Ray cluster (ADDRESS, or a local instance); "
            "needs pip install 'ckptio[ray]'",
        )


def parse_vocab(text: str) -> tuple[str, tuple[str, str]]:
    """'NAME=old.txt:new.txt' -> (NAME, (old.txt, new.txt))."""
    from .main import UsageError

    name, sep, files = text.rpartition("=")
    old, colon, new = files.partition(":")
    if not (sep and name and colon and old and new):
        raise UsageError(f"--vocab {text!r}: expected NAME=OLD_VOCAB_FILE:NEW_VOCAB_FILE")
    return name, (old, new)


def options(args) -> dict:
    """fit()'s keyword arguments from the command line (also `ckptio plan fit` and --engine ray)."""
    from .main import UsageError

    if not args.src or not args.template:
        raise UsageError(f"{'SRC' if not args.src else '--template'}: empty path")
    check_output_prefix(args.out)
    check_shard_options(args)
    vocab = {}
    for name, files in map(parse_vocab, args.vocab):
        if name in vocab:  # a dict would let the last one win without a word
            raise UsageError(f"--vocab {name}: given twice")
        vocab[name] = files
    return dict(
        rules=build_rules(args),
        on_mismatch=args.on_mismatch,
        vocab=vocab,
        vocab_axis=args.vocab_axis,
        force=args.force,
        num_shards=args.shards or 1,
        max_shard_size=args.max_shard_size,
    )


def run(args) -> int:
    from ..fit import fit

    kwargs = options(args)
    if args.engine and not args.dry_run:  # cli/engine.py: the fit's shards as Ray tasks
        from .engine import run_fit_engine

        report = run_fit_engine(args, kwargs)
    else:
        report = fit(args.src, args.template, args.out, dry_run=args.dry_run, **kwargs)
    if args.json:
        json.dump(report.to_json(), sys.stdout)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(table(report))
    for _, why in report.errors:  # only a dry run gets here with errors
        print(f"ckptio: {why}", file=sys.stderr)
    return 1 if report.errors else 0


def table(report) -> str:
    """One line per template tensor (where its value comes from), then source tensors left out, then counts."""
    rows = []
    cast = {c["dst"]: c for c in report.cast}
    remapped = {r["dst"]: r for r in report.remapped}
    for m in report.matched:
        note = f" (cast {cast[m['dst']]['src_dtype']} -> {cast[m['dst']]['dst_dtype']})" if m["dst"] in cast else ""
        if m["dst"] in remapped:
            r = remapped[m["dst"]]
            note += f" (vocabulary {r['vocab']}: {r['moved']} rows moved, {r['new']} new)"
        origin = m["src"] if m["src"] == m["dst"] else f"{m['src']} ({m['how']})"
        rows.append((m["dst"], f"source {origin}{note}"))
    for m in report.mismatched:
        what = {"template": "template (shape differs)", "slice": "source corner over template", "error": "ERROR"}[
            m["action"]
        ]
        rows.append((m["dst"], f"{what}: source {m['src']} {m['src_shape']} vs template {m['dst_shape']}"))
    rows += [(name, "template (no source tensor)") for name in report.template_only]
    rows.sort()
    width = min(max((len(r[0]) for r in rows), default=0), 70)
    out = [f"{dst:<{width}}  <- {origin}" for dst, origin in rows]
    out += [f"unused source tensor: {name}" for name in report.source_only]
    verb = "would write" if report.dry_run else "wrote"
    out.append(
        f"{verb} {report.dst or 'nothing'}: {len(report.matched)} from source, {len(report.mismatched)} "
        f"mismatched, {len(report.template_only)} from template only, {len(report.source_only)} source "
        f"tensors unused, {len(report.cast)} cast, {len(report.remapped)} remapped"
    )
    return "\n".join(out) + "\n"
