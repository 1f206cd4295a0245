"""A validated merge (Job: every input's plan checked against the first's, then written) and its MergeReport.

ckptio.merge opens the inputs and checks the options; this module combines and writes.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields, replace

from . import merge_math as mm
from . import merge_stream as ms
from .bundle import dtypes, naming
from .checkpoint import Checkpoint
from .errors import UnsupportedError
from .merge_inputs import check_agree, describe
from .rewrite_exec import _write_piece
from .rewrite_plan import Plan, make_plan
from .transform import Select, Step, StripOptimizer

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (type checkers honour the name)
if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor


@dataclass(slots=True)
class MergeReport:
    """What a merge did (or, for a dry run, would do)."""

    inputs: list[str]
    base: str | None
    dst: str | None
    method: str
    weights: list[float] | None
    decay: float | None
    order: str
    notes: list[str]
    combined: list[str]
    copied: list[str]
    copied_from: str
    dropped: list[str]
    tensors: dict[str, str]
    linear: list[str]
    bytes_read: int
    bytes_written: int
    seconds: float
    dry_run: bool

    def __repr__(self):
        return (
            f"MergeReport(method={self.method!r}, inputs={len(self.inputs)}, dst={self.dst!r}, "
            f"combined={len(self.combined)}, copied={len(self.copied)}, dropped={len(self.dropped)}, "
            f"dry_run={self.dry_run})"
        )

    def to_json(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["seconds"] = round(self.seconds or 0.0, 3)
        return out


# -- planning ----------------------------------------------------------------------------------------


class Job:
    """A validated merge: every input's plan, checked to agree with the first's."""

    def __init__(self, method, ckpts, base, weights, decay, include, exclude, keep_optimizer) -> None:
        self.method, self.ckpts, self.base = method, ckpts, base
        self.all = ckpts + ([base] if base is not None else [])
        self.decay = decay
        self.weights = self._effective_weights(weights)
        steps: list[Step] = []
        if include or exclude:
            steps.append(Select(tuple(include), tuple(exclude)))
        if not keep_optimizer:
            steps.append(StripOptimizer(keep_global_step=True, ema="keep"))
        self.plans = [make_plan(c, steps) for c in self.all]
        self.plan: Plan = self.plans[0]
        for ckpt, plan in zip(self.all[1:], self.plans[1:]):
            check_agree(self.all[0], self.plan, ckpt, plan)
        # Each input's source name of every output name: TF2 inputs agree on the output keys (the
        # objects' paths), while the keys they were saved under may differ (Keras 3 saves weights
        # under the optimizer first).
        self.sources = {id(c): {i.dst: i.src for i in p.items} for c, p in zip(self.all, self.plans)}
        # Combined in this order: the base first for task-arithmetic (its rule reads it first).
        self.operands = ([base] + ckpts) if method == "task-arithmetic" else ckpts
        self.keep_from = base if base is not None else ckpts[-1]
        self._read_buffers = [[bytearray(), bytearray()] for _ in self.operands]
        self._scratch: dict = {}  # the combiners' float64 buffers
        self._pool: ThreadPoolExecutor | None = None  # the read-ahead thread, while executing
        entries = self.plan.source.entries()
        self.combined = [i.dst for i in self.plan.items if mm.is_combined(entries[i.src].dtype)]
        if method == "slerp":
            combined = set(self.combined)
            for item in self.plan.items:
                if item.dst in combined and mm.accumulator(entries[item.src].dtype) is not mm.np.float64:
                    raise UnsupportedError("slerp of complex tensors is not defined here; exclude them", key=item.dst)

    def _effective_weights(self, weights) -> list[float]:
        """The weight each input's value gets in the result (the base's is 1 - sum for task-arithmetic)."""
        n = len(self.ckpts)
        if self.method == "mean":
            return [1.0 / n] * n
        if self.method == "weighted":
            total = math.fsum(weights)
            return [w / total for w in weights]
        if self.method == "ema":
            d = self.decay
            return [d ** (n - 1)] + [(1.0 - d) * d ** (n - k) for k in range(2, n + 1)]
        if self.method == "task-arithmetic":
            return [1.0] * n if weights is None else weights
        return weights  # slerp: [t]

    def report(self, dst, dry_run: bool, order: str) -> MergeReport:
        entries = self.plan.source.entries()
        combined = set(self.combined)
        notes = []
        if self.method == "weighted":
            notes.append("weights normalised to sum 1: " + ", ".join(f"{w:.6g}" for w in self.weights))
        if self.method == "ema":
            notes.append(
                f"ema over the inputs in step order ({order}): m_1 = x_1, m_k = {self.decay:g} m_(k-1) "
                f"+ {1 - self.decay:g} x_k"
            )
        if self.method == "slerp":
            notes.append(
                f"slerp at t={self.weights[0]:g} per tensor; near-parallel tensors "
                f"(|cos| > {mm.PARALLEL}) interpolate linearly"
            )
        return MergeReport(
            inputs=[c.prefix for c in self.ckpts],
            base=None if self.base is None else self.base.prefix,
            dst=None if dst is None else os.fspath(dst),
            method=self.method,
            weights=self.weights,
            decay=self.decay,
            order=order,
            notes=notes,
            dry_run=dry_run,
            combined=list(self.combined),
            copied=[i.dst for i in self.plan.items if i.dst not in combined],
            copied_from=self.keep_from.prefix,
            dropped=list(self.plan.dropped),
            linear=[],
            tensors={i.dst: describe(entries[i.src]) for i in self.plan.items},
            bytes_read=0,
            bytes_written=self.plan.bytes_after,
            seconds=0.0,
        )

    # -- writing --------------------------------------------------------------------------------------

    def execute(
        self, dst: str, report: MergeReport, *, force: bool, progress, fsync: bool, threads: int = 1, store=None
    ) -> None:
        """Write the merged checkpoint atomically at dst in store (None: local files); slerp first reads
        its inputs once for the angles."""
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(1, thread_name_prefix="ckptio-merge-read") as self._pool:
            coefficients = self._slerp_pass(report.linear) if self.method == "slerp" else {}
            if not ms.streamable(self.operands):  # V1 inputs, or shards without positioned reads
                self._write(
                    dst, store, force=force, progress=progress, fsync=fsync, chunks=self._chunks_serial(coefficients)
                )
                return
        combined = set(self.combined)
        pieces = [p for p in self.plan.pieces if p.name in combined]
        with ms.Pipeline(
            pieces, self._piece_sources, self._combiner_for(coefficients), len(self.operands), threads
        ) as pipeline:
            self._write(dst, store, force=force, progress=progress, fsync=fsync, chunks=pipeline.chunks)

    def _write(self, dst: str, store, *, force: bool, progress, fsync: bool, chunks) -> None:
        """Write the output, each combined piece's bytes taken from chunks(piece), in plan order."""
        from .bundle.writer import BundleWriter

        plan = self.plan
        # The output's directory may be a training run's own (an input's): its state file is left alone.
        own_state = all(directory_of(c.prefix) != directory_of(dst) for c in self.all)
        with BundleWriter(store, dst, 1, force=force, inputs=[c.located for c in self.all]) as writer:
            writer.reserve(0, plan.bytes_after)
            self.write_pieces(writer, plan.pieces, 0, chunks, progress)
            for name, meta in plan.metadata.items():
                writer.add_entry(name, meta)
            if plan.graph is not None:
                import numpy as np

                graph = np.empty((), dtype=object)
                graph[()] = plan.graph
                writer.add_array(naming.OBJECT_GRAPH_KEY, graph, shard=0)
            writer.finish(state_file=own_state, fsync=fsync)

    def write_pieces(self, writer, pieces, shard: int, chunks, progress=None) -> None:
        """Write pieces (in order) into one shard: combined ones from chunks(piece), the rest copied (a plan's task too)."""
        combined = set(self.combined)
        for piece in pieces:
            if piece.name in combined:
                writer.add_bytes(piece.key, piece.out_dtype, _shape(self.plan.source, piece), chunks(piece), shard)
            else:
                _write_piece(self.keep_from, writer, self._piece_in(self.keep_from, piece), shard, True)
            if progress:
                progress(piece.size)

    def _piece_in(self, ckpt: Checkpoint, piece):
        """The same output piece as stored in one input (its own name, shard, offset and crc32c)."""
        name = self.sources[id(ckpt)][piece.name]
        entry = ckpt.entries()[name]
        if piece.slice is not None:
            entry = ckpt.reader.slice_entry(name, piece.slice)
        return replace(piece, src_name=name, src_entry=entry)

    def _streams(self, piece):
        """One chunk stream per operand, each reading into its own two buffers (reused throughout)."""
        size = mm.CHUNK_ELEMENTS * dtypes.lookup(piece.out_dtype).itemsize
        out = []
        for i, ckpt in enumerate(self.operands):
            p = self._piece_in(ckpt, piece)
            pair = self._read_buffers[i]
            if len(pair[0]) < size:
                pair[:] = [bytearray(size), bytearray(size)]
            out.append(mm.flat_chunks(ckpt, p.src_name, p.src_entry, p.slice, pair))
        return out

    def _aligned(self, piece):
        """The operands' chunks of one piece, read one chunk ahead on a second thread when it has several."""
        chunks = mm.aligned(self._streams(piece), piece.name)
        if piece.size <= mm.CHUNK_ELEMENTS * dtypes.lookup(piece.out_dtype).itemsize:
            return chunks
        return _read_ahead(chunks, self._pool)

    def _combiner_for(self, coefficients):
        """combiner(piece, scratch): the Combiner of one piece, its float64 buffers kept in scratch."""

        def combiner(piece, scratch):
            return mm.Combiner(
                self.method,
                piece.out_dtype,
                weights=self.weights,
                decay=self.decay,
                coefficients=coefficients.get(piece.name),
                buffers=scratch,
            )

        return combiner

    def _piece_sources(self, piece):
        """Each operand's (reader, stored name, entry) of one piece (a V2 input's entry or slice entry)."""
        out = []
        for ckpt in self.operands:
            p = self._piece_in(ckpt, piece)
            out.append((ckpt.reader, p.src_name, p.src_entry))
        return out

    def _chunks_serial(self, coefficients):
        """chunks(piece) for inputs the pipeline cannot read: combined here, read one chunk ahead."""
        make = self._combiner_for(coefficients)

        def chunks(piece):
            combiner = make(piece, self._scratch)
            for xs in self._aligned(piece):
                yield combiner(xs)

        return chunks

    def _slerp_pass(self, linear: list[str], names=None) -> dict[str, tuple[float, float]]:
        """First pass: each tensor's dot product and norms over all its slices -> its two coefficients (of names only)."""
        stats: dict[str, mm.SlerpStats] = {}
        combined = set(self.combined) if names is None else set(self.combined) & set(names)
        for piece in self.plan.pieces:
            if piece.name in combined:
                s = stats.setdefault(piece.name, mm.SlerpStats())
                for a, b in self._aligned(piece):
                    s.add(a, b)
        out = {}
        for name, s in stats.items():
            c0, c1, near_parallel = s.coefficients(self.weights[0])
            out[name] = (c0, c1)
            if near_parallel:
                linear.append(name)
        return out


def directory_of(prefix: str) -> str:
    """A prefix's directory, comparable between inputs and OUT (local ones resolved through links)."""
    from .store import is_url

    if is_url(prefix):
        return prefix.rpartition("/")[0]
    return os.path.realpath(os.path.dirname(prefix) or ".")


def _read_ahead(chunks, pool):
    """Yield what chunks yields, fetching the next item on the pool's thread meanwhile.

    The operands' buffers alternate (two each), so the chunk being combined is never the one being
    read; reading, checksums and numpy all release the GIL, so this uses the second core.
    """
    future = pool.submit(next, chunks, None)
    try:
        while (item := future.result()) is not None:
            future = pool.submit(next, chunks, None)
            yield item
    finally:
        future.cancel()
        try:
            future.result()  # let a read in flight finish before the buffers are reused
        except BaseException:
            pass


def _shape(ckpt: Checkpoint, piece) -> tuple[int, ...]:
    return piece.src_entry.shape  # a stored slice's entry has the slice's shape (reader.slice_entry)
