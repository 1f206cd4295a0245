"""Run plans (strip/rename/rewrite, fit, merge) and batches on Ray: one task per output shard (or batch input).

Imported only for `--engine ray`: ckptio itself never imports ray. Tasks are retried (a worker
that dies, an OSError) and shown on a progress bar; a plan's shards are idempotent, so running
the same command again after a failure redoes only the shards not yet done.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (type checkers honour the name)
if TYPE_CHECKING:
    from typing import Any

RETRIES = 3
LOCAL_OBJECT_STORE = 100 << 20  # a local instance only moves plans and outcomes, not tensor bytes


class Cluster:
    """A connection to Ray: an existing one, ADDRESS, or a small local instance shut down on exit."""

    def __init__(self, address: str | None = None, *, num_cpus: int | None = None):
        try:
            import ray
        except ImportError:
            from .errors import UnsupportedError

            raise UnsupportedError("--engine ray needs Ray: pip install 'ckptio[ray]'") from None
        self.ray, self.started = ray, False
        if not ray.is_initialized():
            kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
            if address:
                ray.init(address=address, **kwargs)
            else:
                ray.init(
                    num_cpus=num_cpus or min(os.cpu_count() or 2, 8), object_store_memory=LOCAL_OBJECT_STORE, **kwargs
                )
            self.started = True

    def map(self, fn, calls, *, sizes=None, progress=None) -> list:
        """fn(*args) for every args tuple as Ray tasks, retried; results in order; progress(size) per finished one."""
        ray = self.ray
        remote = ray.remote(num_cpus=1, max_retries=RETRIES, retry_exceptions=[OSError])(fn)
        refs = [remote.remote(*args) for args in calls]  # top-level ObjectRef arguments arrive resolved
        where = {ref: i for i, ref in enumerate(refs)}
        results, pending = [None] * len(refs), list(refs)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                i = where[done[0]]
                results[i] = _get(ray, done[0])
                if progress:
                    progress(sizes[i] if sizes else 1)
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
        return results

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()
            self.started = False

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _get(ray, ref):
    """ray.get, raising a task's own exception (a CkptioError keeps its exit code) rather than Ray's wrapper."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, BaseException):
            raise cause from None
        raise


def _run_one_shard(plan: dict, shard: int) -> list[int]:
    """A Ray task: write one shard of a plan (a no-op when it is already done)."""
    from .plan_exec import run_shards

    return run_shards(plan, [shard])


def run_plan_on_ray(plan: dict, address: str | None = None, *, progress=None) -> str:
    """Run every shard of plan as a Ray task, then commit; return OUT."""
    from .plan import commit_plan

    with Cluster(address) as cluster:
        plan_ref = cluster.ray.put(plan)
        shards = plan["shards"]
        cluster.map(
            _run_one_shard,
            [(plan_ref, s["shard"]) for s in shards],
            sizes=[s["size"] for s in shards],
            progress=progress,
        )
    return commit_plan(plan)


def map_on_ray(address: str | None = None, *, progress=None):
    """A map_jobs for batch.run_batch: each job one Ray task; yields outcomes in job order."""

    def map_jobs(fn, jobs):
        with Cluster(address) as cluster:
            return cluster.map(fn, [(job,) for job in jobs], progress=progress)

    return map_jobs
