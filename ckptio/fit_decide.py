"""What a fit does with each template tensor: the report, the per-tensor decision and its refusals.

Shared by fit() on TensorBundle templates and by the Keras .weights.h5 fit (formats/keras_fit.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .bundle import dtypes
from .errors import MismatchError, PlanError, Remedy

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (type checkers honour the name)
if TYPE_CHECKING:
    from typing import Any

ON_MISMATCH = ("error", "template", "slice")
FLOATING = ("float16", "bfloat16", "float32", "float64")


@dataclass(frozen=True, slots=True)
class Op:
    """How one template tensor is written."""

    kind: str  # "copy" (src bytes), "keep" (template bytes), "slice", "vocab" or "layout" (built in memory)
    dst: str
    src: str | None = None
    dtype: int | None = None
    vocab: tuple | None = None


@dataclass(slots=True)
class FitReport:
    """Where every template tensor of the output comes from."""

    src: str
    template: str
    dst: str | None
    dry_run: bool = False
    seconds: float = field(default=0.0, init=False)
    matched: list[dict[str, Any]] = field(default_factory=list, init=False)  # {src, dst, how}
    template_only: list[str] = field(default_factory=list, init=False)
    source_only: list[str] = field(default_factory=list, init=False)
    mismatched: list[dict[str, Any]] = field(default_factory=list, init=False)  # {src, dst, shapes, dtypes, action}
    cast: list[dict[str, Any]] = field(default_factory=list, init=False)  # {src, dst, src_dtype, dst_dtype}
    remapped: list[dict[str, Any]] = field(default_factory=list, init=False)  # {src, dst, vocab, moved, new}
    # (template key, why) of each mismatch that stops the fit
    errors: list[tuple[str, str]] = field(default_factory=list, init=False)

    def to_json(self) -> dict:
        return {
            "matched": self.matched,
            "template_only": self.template_only,
            "source_only": self.source_only,
            "mismatched": self.mismatched,
            "cast": self.cast,
            "remapped": self.remapped,
        }

    def __repr__(self):
        return (
            f"FitReport(dst={self.dst!r}, matched={len(self.matched)}, template_only={len(self.template_only)}, "
            f"source_only={len(self.source_only)}, mismatched={len(self.mismatched)}, cast={len(self.cast)}, "
            f"remapped={len(self.remapped)}, dry_run={self.dry_run})"
        )


def mismatch_error(report: FitReport, what: str) -> MismatchError:
    """The error for the first mismatch that stops a fit, saying what gets past it."""
    dst, why = report.errors[0]
    more = f" (and {len(report.errors) - 1} more)" if len(report.errors) > 1 else ""
    first = next(m for m in report.mismatched if m["dst"] == dst)
    if first["src_shape"] != first["dst_shape"]:
        return MismatchError(
            f"{why}{more}; nothing written",
            remedy=Remedy("on_mismatch", "keep the template's value ('slice' copies the overlap)", value="template"),
        )
    # No policy converts a non-floating dtype: only pairing it otherwise does.
    return MismatchError(f"{why}{more}; nothing written (a rename rule can pair it with another source {what})")


def refuse_if_nothing_matched(report: FitReport) -> None:
    """A fit that takes no value from the source would write the template back: refuse it."""
    if report.matched or any(m.get("action") == "slice" for m in report.mismatched):
        return
    raise MismatchError(
        "no template tensor matched a source tensor, so the output would be the template "
        "unchanged; nothing written (compare the names with `ckptio diff`, pair them with rules "
        "such as --map OLD=NEW)",
        path=report.template,
    )


def _decide(report, name, dst, how, es, et, on_mismatch, vocab, axis) -> Op:
    """One matched tensor: its Op, with the report updated."""
    s_type, t_type = dtypes.name_of(es.dtype), dtypes.name_of(et.dtype)
    mismatch = {"src": name, "dst": dst, "src_shape": list(es.shape), "dst_shape": list(et.shape)}
    if es.dtype != et.dtype:
        if not (s_type in FLOATING and t_type in FLOATING):
            why = f"{name!r} is {s_type}, template tensor {dst!r} is {t_type}: only floating dtypes are cast"
            report.mismatched.append({**mismatch, "action": "error"})
            report.errors.append((dst, why))
            return Op("keep", dst)
        report.cast.append({"src": name, "dst": dst, "src_dtype": s_type, "dst_dtype": t_type})
    if vocab is not None:
        _check_vocab(name, dst, es.shape, et.shape, vocab, axis)
        old, new, vocab_name = vocab
        moved = len(set(old[: es.shape[axis]]) & set(new))
        report.matched.append({"src": name, "dst": dst, "how": how})
        report.remapped.append({"src": name, "dst": dst, "vocab": vocab_name, "moved": moved, "new": len(new) - moved})
        return Op("vocab", dst, name, et.dtype, vocab)
    if es.shape != et.shape:
        action = on_mismatch
        if action == "slice" and len(es.shape) != len(et.shape):
            action = "error"
        why = f"{name!r} has shape {list(es.shape)}, template tensor {dst!r} has shape {list(et.shape)}" + (
            " (ranks differ: cannot slice)" if on_mismatch == "slice" else ""
        )
        report.mismatched.append({**mismatch, "action": action})
        if action == "error":
            report.errors.append((dst, why))
        return Op("slice", dst, name, et.dtype) if action == "slice" else Op("keep", dst)
    report.matched.append({"src": name, "dst": dst, "how": how})
    if es.slices != et.slices:  # partitioned differently: re-cut in memory
        return Op("layout", dst, name, et.dtype)
    return Op("copy", dst, name, et.dtype)


def _check_vocab(name, dst, src_shape, dst_shape, vocab, axis) -> None:
    """Refuse a remap that cannot be done, before anything is written."""
    old, new, vocab_name = vocab
    if len(src_shape) <= axis or len(dst_shape) <= axis:
        raise PlanError(f"--vocab {vocab_name}: {dst!r} has rank {len(dst_shape)}, no axis {axis}", key=dst)
    if _without(src_shape, axis) != _without(dst_shape, axis):
        raise MismatchError(
            f"--vocab {vocab_name}: {name!r} {list(src_shape)} and {dst!r} {list(dst_shape)} differ beyond axis {axis}",
            key=dst,
        )
    if len(old) > src_shape[axis] or len(new) > dst_shape[axis]:
        raise PlanError(
            f"--vocab {vocab_name}: {len(old)} old and {len(new)} new tokens, but {name!r} has "
            f"{src_shape[axis]} and {dst!r} {dst_shape[axis]} entries along axis {axis}",
            key=dst,
        )


def _without(shape, axis: int) -> tuple:
    return tuple(d for i, d in enumerate(shape) if i != axis)
