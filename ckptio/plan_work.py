"""What a plan's task does with each piece: copy or cast (any plan), build (fit), combine (merge).

worker(plan, ckpts) is a context manager giving an object whose write(writer, steps, progress)
writes one output shard's pieces into shard 0 of a BundleWriter. Each kind reuses the
single-process command's own code: rewrite's _write_piece, fit's _write_built, and merge's Job
with merge_stream's Pipeline, so a planned output has the same bytes as the command's.
"""

from __future__ import annotations

import base64
from contextlib import contextmanager

from .bundle.entry import Entry
from .errors import PlanError


def piece_of(step: dict):
    """The rewrite Piece a copy, cast or build step describes (its slice from the recorded extents)."""
    from .bundle.slices import Slice
    from .rewrite_plan import Piece

    entry = Entry.parse(base64.b64decode(step["src_entry"]), key=step["src_name"])
    extents = step.get("extents")
    slice_ = None if extents is None else Slice(tuple((a, b) for a, b in extents))
    return Piece(bytes.fromhex(step["key"]), step["name"], step["src_name"], entry, step["out_dtype"], slice_)


@contextmanager
def worker(plan: dict, ckpts: list):
    """The writer of this plan's pieces, for the whole of one task."""
    command = plan["command"]
    if command == "merge":
        with _MergeWork(plan, ckpts) as work:
            yield work
    elif command == "fit":
        yield _FitWork(plan, ckpts)
    else:
        yield _CopyWork(plan, ckpts)


class _CopyWork:
    """strip, rename, rewrite: every piece copied or cast from its input."""

    def __init__(self, plan: dict, ckpts: list):
        self.ckpts, self.verify = ckpts, plan["options"]["verify"]

    def write(self, writer, steps, progress) -> None:
        for step in steps:
            self.write_step(writer, step)
            if progress:
                progress(_size(step))

    def write_step(self, writer, step: dict) -> None:
        from .rewrite_exec import _write_piece  # looked up per call: tests replace it to kill a task midway

        if step["op"] not in ("copy", "cast"):
            raise PlanError(f"step {step['op']!r} has no place in a {self.__class__.__name__} plan")
        _write_piece(self.ckpts[step["input"]], writer, piece_of(step), 0, self.verify)


class _FitWork(_CopyWork):
    """fit: copies from the source (input 0) or the template (input 1); built tensors made as fit makes them."""

    def __init__(self, plan: dict, ckpts: list):
        super().__init__(plan, ckpts)
        self.axis = plan["fit"]["axis"]
        self.vocab = {name: (tuple(old), tuple(new), name) for name, (old, new) in plan["fit"]["vocab"].items()}

    def write_step(self, writer, step: dict) -> None:
        if step["op"] != "build":
            return super().write_step(writer, step)
        from .fit import Op, _write_built

        cs, ct = self.ckpts
        vocab = None if step["vocab"] is None else self.vocab[step["vocab"]]
        op = Op(step["kind"], step["name"], step["source"], step["out_dtype"], vocab)
        _write_built(writer, cs[op.src], ct[op.dst], op, piece_of(step), self.axis, 0)


class _MergeWork:
    """merge: the inputs' Job rebuilt (it checks they still agree), each shard's combined pieces through a Pipeline."""

    def __init__(self, plan: dict, ckpts: list):
        from concurrent.futures import ThreadPoolExecutor

        from .merge import Job

        m = plan["merge"]
        n = m["n_inputs"]
        base = ckpts[n] if m["base"] else None
        self.job = Job(
            m["method"], ckpts[:n], base, m["weights"], m["decay"], m["include"], m["exclude"], m["keep_optimizer"]
        )
        self.pieces = {p.key: p for p in self.job.plan.pieces}
        self.combined = set(self.job.combined)
        self.coefficients: dict = {}  # slerp: each tensor's, computed by the first shard that needs them
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="ckptio-merge-read")
        self.job._pool = self._pool  # the Job's read-ahead thread (slerp's first pass)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._pool.shutdown(wait=True)

    def write(self, writer, steps, progress) -> None:
        from . import merge_stream as ms

        pieces = []
        for step in steps:
            piece = self.pieces.get(bytes.fromhex(step["key"]))
            if piece is None or piece.size != _size(step) or (step["op"] == "combine") != (piece.name in self.combined):
                raise PlanError("the inputs no longer lay out this plan's pieces; make a new plan", key=step["name"])
            pieces.append(piece)
        job = self.job
        if job.method == "slerp":
            names = {p.name for p in pieces if p.name in self.combined} - set(self.coefficients)
            if names:
                # Over all of each tensor's pieces, in plan order: the same sums as merge's own first pass.
                self.coefficients.update(job._slerp_pass([], names))
        combined = [p for p in pieces if p.name in self.combined]
        if not ms.streamable(job.operands):
            job.write_pieces(writer, pieces, 0, job._chunks_serial(self.coefficients), progress)
            return
        make = job._combiner_for(self.coefficients)
        with ms.Pipeline(combined, job._piece_sources, make, len(job.operands), ms.default_threads()) as pipeline:
            job.write_pieces(writer, pieces, 0, pipeline.chunks, progress)


def _size(step: dict) -> int:
    return step["size"]
