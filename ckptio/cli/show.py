"""ckptio show PATH NAME: one tensor's metadata, statistics and a preview (or all of it)."""

from __future__ import annotations

import difflib
import json
import sys


def add_arguments(name, p) -> None:
    p.add_argument("path", help="checkpoint")
    p.add_argument("name", help="tensor name (as `ckptio ls` prints it)")
    p.add_argument("--all", action="store_true", help="print every value, not a preview")
    p.add_argument("--json", action="store_true", help="print metadata and statistics as JSON")


def run(args) -> int:
    import numpy as np

    import ckptio

    from ..bundle.naming import OBJECT_GRAPH_KEY
    from ..errors import TensorNotFoundError, UnsupportedError, show_name

    with ckptio.open(args.path) as ckpt:
        try:
            tensor = ckpt[args.name]
        except TensorNotFoundError as exc:
            # A scope name (`mlp`) is not close to its tensors by edit distance: offer those under it.
            close = (
                difflib.get_close_matches(args.name, list(ckpt), n=3)
                or sorted(n for n in ckpt if n.startswith(args.name.rstrip("/") + "/"))[:3]
            )
            if close:
                exc.message += "; did you mean " + ", ".join(map(show_name, close)) + "?"
            raise
        e = tensor.entry
        # V1 tables, .safetensors, .npz and Keras files store no CRC32C per tensor: say so rather than print 0.
        crc = f"{e.crc32c:#010x}" if ckpt.reader.checksums else "none"
        info = {
            "name": tensor.name,
            "dtype": tensor.dtype_name,
            "shape": list(tensor.shape),
            "nbytes": tensor.nbytes,
            "shard": e.shard_id,
            "offset": e.offset,
            "size": e.size,
            "crc32c": crc,
            "slices": [s.spec() for s in e.slices],
        }
        if tensor.name == OBJECT_GRAPH_KEY and not args.all:
            return _show_graph(ckpt, args, info)
        try:
            value = tensor.read()
        except UnsupportedError as exc:  # e.g. a variant: the metadata is still worth showing
            if args.json:
                json.dump(dict(info, stats=None, note=exc.message), sys.stdout)
                sys.stdout.write("\n")
            else:
                sys.stdout.write(
                    f"{show_name(tensor.name)}: {tensor.dtype_name}{list(tensor.shape)}, {tensor.nbytes} bytes\n"
                    f"  stored: shard {e.shard_id}, offset {e.offset}, size {e.size}, "
                    f"crc32c {crc}\n  values not shown: {exc.message}\n"
                )
            return 0
        stats = _stats(value)
        if args.json:
            doc = dict(info, stats=stats)
            if args.all:
                doc["values"] = _jsonable(value)
            json.dump(doc, sys.stdout)
            sys.stdout.write("\n")
            return 0
        lines = [
            f"{show_name(tensor.name)}: {tensor.dtype_name}{list(tensor.shape)}, {tensor.nbytes} bytes",
            f"  stored: shard {e.shard_id}, offset {e.offset}, size {e.size}, crc32c {crc}"
            + (f", {len(e.slices)} slices: " + " ".join(s.spec() for s in e.slices) if e.slices else ""),
        ]
        if stats:
            lines.append(
                "  " + ", ".join(f"{k} {v:.6g}" if isinstance(v, float) else f"{k} {v}" for k, v in stats.items())
            )
        if args.all and value.ndim > 1 and value.size > 10_000:
            # numpy's whole-array str() is very slow on millions of values: print one row
            # (the last axis) per line instead, each preceded by its index.
            sys.stdout.write("\n".join(lines) + "\n")
            rows = value.reshape(-1, value.shape[-1])
            for i, row in enumerate(rows):
                index = list(map(int, np.unravel_index(i, value.shape[:-1])))
                sys.stdout.write(f"{index}: {' '.join(_as_text(row))}\n")
            return 0
        threshold, edgeitems = (sys.maxsize, None) if args.all else (40, 3)  # None: numpy's setting
        with np.printoptions(threshold=threshold, edgeitems=edgeitems, linewidth=100):
            lines.append(str(value))
        sys.stdout.write("\n".join(lines) + "\n")
    return 0


def _show_graph(ckpt, args, info: dict) -> int:
    """The object graph in a few counts (its bytes are a protobuf, no use as a preview); --all prints them."""
    from ..errors import CkptioError
    from .objects import summarize_objects, summary_line

    try:
        summary, note = summarize_objects(ckpt), None
    except CkptioError as exc:  # a graph that does not parse: say so; `verify` gives the details
        summary, note = None, exc.message
    hint = f"`ckptio ls --objects {args.path}` prints the tree; `show --all` the raw bytes"
    if args.json:
        json.dump(dict(info, object_graph=summary, note=note or hint), sys.stdout)
        sys.stdout.write("\n")
        return 0
    sys.stdout.write(
        f"{info['name']}: the TF2 object graph (a serialized TrackableObjectGraph), {info['nbytes']} "
        f"bytes\n  stored: shard {info['shard']}, offset {info['offset']}, size {info['size']}, "
        f"crc32c {info['crc32c']}\n  "
        + (summary_line(summary) if summary else f"does not parse: {note}")
        + f"\n  {hint}\n"
    )
    return 0


def _as_text(row):
    """Each value as text, fast (ml_dtypes' bfloat16/float8/int4 have no direct str cast)."""
    import numpy as np

    try:
        return row.astype(str)
    except TypeError:
        try:
            wide = np.int64 if row.dtype.name.startswith(("int", "uint")) else np.float32
            return row.astype(wide).astype(str)
        except (TypeError, ValueError):
            return [str(v) for v in row.tolist()]


def _stats(value) -> dict:
    import numpy as np

    if value.dtype == object or value.size == 0:
        return {"count": int(value.size)}
    if value.dtype.kind == "c":
        value = np.abs(value)
    try:
        x = value.astype(np.float64)
    except (TypeError, ValueError):
        return {"count": int(value.size)}
    finite = x[np.isfinite(x)]
    out: dict[str, int | float] = {"count": int(value.size)}
    if finite.size:
        out.update(min=float(finite.min()), max=float(finite.max()), mean=float(finite.mean()), std=float(finite.std()))
    nonfinite = int(x.size - finite.size)
    if nonfinite:
        out["nonfinite"] = nonfinite
    return out


def _jsonable(value):
    import numpy as np

    if value.dtype == object:
        return [
            v.decode("utf-8", "backslashreplace") if isinstance(v, bytes) else v for v in value.reshape(-1).tolist()
        ]
    if value.dtype.kind in "fc" or value.dtype.name.startswith(("bfloat", "float")):
        return np.asarray(value, dtype=np.float64 if value.dtype.kind != "c" else np.complex128).real.tolist()
    return value.tolist()
