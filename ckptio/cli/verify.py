"""ckptio verify PATH: check every block, tensor checksum and shard size; list every problem."""

from __future__ import annotations

import json
import sys
import time

from .common import Progress, human


def add_arguments(name, p) -> None:
    p.add_argument("path", help="checkpoint")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar, no summary when clean")


def run(args) -> int:
    import ckptio

    from ..verify import verify

    started = time.perf_counter()
    with ckptio.open(args.path) as ckpt:
        total = sum(e.size for e in ckpt.entries().values())
        bar = Progress(total, "verify", enabled=None if not args.quiet and not args.json else False)
        try:
            report = verify(ckpt, progress=bar)
        finally:
            bar.close()
        seconds = time.perf_counter() - started
        # Counted as ls and the rewrite report count: the object graph apart from the tensors.
        from ..bundle.naming import OBJECT_GRAPH_KEY

        graph = OBJECT_GRAPH_KEY in ckpt.entries()
        tensors = report.tensors - (1 if graph else 0)
        if args.json:
            json.dump(
                {
                    "path": ckpt.path,
                    "ok": report.ok,
                    "tensors": tensors,
                    "object_graph": graph,
                    "bytes_checked": report.bytes_checked,
                    "seconds": round(seconds, 3),
                    **({"checked": report.checked} if report.checked else {}),
                    "problems": [
                        {"message": p.message, "path": p.path, "entry": p.key, "offset": p.offset}
                        for p in report.problems
                    ],
                },
                sys.stdout,
            )
            sys.stdout.write("\n")
        else:
            for p in report.problems:
                print(f"ckptio: {p}", file=sys.stderr)
            if report.problems:
                from ..errors import show_name

                print(f"CORRUPT: {len(report.problems)} problem(s) in {show_name(ckpt.prefix)}", file=sys.stderr)
            elif not args.quiet and report.checked:  # another format: say what could be checked
                print(f"OK: {report.tensors} tensors; checked {report.checked}")
            elif not args.quiet:
                rate = report.bytes_checked / max(seconds, 1e-9)
                print(
                    f"OK: {tensors} tensors{' and the object graph' if graph else ''}, "
                    f"{human(report.bytes_checked)} verified in "
                    f"{seconds:.2f} s ({human(rate)}/s)"
                )
    return 0 if report.ok else 1
