"""ckptio diff A B: what differs between two checkpoints; exit 0 same, 1 different, 2 usage or unreadable.

ckptio diff old.ckpt new.ckpt                    names only in A / only in B, dtype or shape changes
ckptio diff A B --values [--atol X] [--rtol X]  also compare every common tensor's values
ckptio diff A B --map encoder/=backbone/         compare A's names after renaming
"""

from __future__ import annotations

import json
import os
import sys


def add_arguments(name, p) -> None:
    p.add_argument("a", metavar="A", help="first checkpoint")
    p.add_argument("b", metavar="B", help="second checkpoint (e.g. a template the new model wrote)")
    p.add_argument("--values", action="store_true", help="compare values too (max abs and relative L2 difference)")
    p.add_argument("--atol", type=float, default=0.0, metavar="X", help="with --values: absolute tolerance")
    p.add_argument("--rtol", type=float, default=0.0, metavar="X", help="with --values: relative tolerance")
    add_map_arguments(p, "A")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def add_map_arguments(p, side: str) -> None:
    p.add_argument(
        "--map",
        action="append",
        default=[],
        metavar="OLD=NEW",
        help=f"rename {side}'s names first: 'old_scope/=new_scope/', 'exact=name', or a regex with --regex; "
        "object paths are renamed in key form (model/encoder/_kernel/.ATTRIBUTES/VARIABLE_VALUE)",
    )
    p.add_argument("--regex", action="store_true", help="--map rules are regexes; NEW may use \\1 backreferences")


def build_rules(args):
    """The --map rules as a transform.Rename, or None."""
    from ..transform import Rename, parse_map
    from .main import UsageError

    if args.regex and not args.map:
        raise UsageError("--regex needs --map OLD=NEW")
    return Rename(tuple(parse_map(m) for m in args.map), regex=args.regex) if args.map else None


def run(args) -> int:
    from ..diff import diff
    from ..errors import CkptioError, PlanError
    from .main import UsageError

    if (args.atol or args.rtol) and not args.values:
        raise UsageError("--atol and --rtol need --values")
    if args.atol < 0 or args.rtol < 0:
        raise UsageError("--atol and --rtol must be >= 0")
    rules = build_rules(args)
    try:
        result = diff(args.a, args.b, rules=rules, values=args.values, atol=args.atol, rtol=args.rtol)
    except PlanError:
        raise
    except (CkptioError, OSError) as exc:  # like diff(1): trouble is 2, "different" is 1
        print(f"ckptio: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a bug must not read as "different" (main's catch-all would exit 1)
        if os.environ.get("CKPTIO_DEBUG"):
            raise
        print(
            f"ckptio: internal error: {type(exc).__name__}: {exc} (a bug in ckptio; CKPTIO_DEBUG=1 shows the "
            "traceback)",
            file=sys.stderr,
        )
        return 2
    if args.json:
        json.dump(result.to_json(), sys.stdout)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(summary(result))
    return 0 if result.identical else 1


def summary(result) -> str:
    """The readable form: one line per difference, then counts."""
    out = [f"--- A {result.a}", f"+++ B {result.b}"]
    out += [f"only in A   {k}" for k in result.only_a]
    out += [f"only in B   {k}" for k in result.only_b]
    for m in result.mismatched:
        names = m.a if m.a == m.b else f"{m.a} -> {m.b}"
        out.append(f"mismatch    {names}: {m.a_dtype}{list(m.a_shape)} vs {m.b_dtype}{list(m.b_shape)}")
    for c in result.changed:
        names = c.a if c.a == c.b else f"{c.a} -> {c.b}"
        numbers = "" if c.max_abs is None else f": max abs {c.max_abs:.6g}, relative L2 {_num(c.rel_l2)}"
        out.append(f"changed     {names}{numbers}")
    common = len(result.pairs)
    what = "equal values" if result.values else "same dtype and shape"
    out.append(
        f"{len(result.only_a)} only in A, {len(result.only_b)} only in B, {common} in both "
        f"({len(result.mismatched)} dtype/shape mismatches"
        + (f", {len(result.changed)} changed" if result.values else "")
        + f", {result.equal} {what})"
    )
    return "\n".join(out) + "\n"


def _num(x) -> str:
    return "n/a" if x is None else f"{x:.6g}"
