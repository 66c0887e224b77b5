"""The RQ job class ``batcher worker`` runs batch jobs with.

A batch job is enqueued with ``result_ttl=0``: its outcome lives in our own keys, so RQ deletes
the job as soon as it succeeds. RQ's generic ``Job.delete`` first reads back the job's status
and, twice, its executions (about seven round trips per job) to find registries that a plain
job without dependents, group or rate limit is not in: the worker's own ``cleanup_execution``
removes the one execution in the same pipeline. ``BatchJob`` deletes the same keys in that
pipeline without the reads; anything else goes through RQ's code unchanged.

A ``BatchJob`` also carries its batch's claim from the worker's start transaction to
``process_batch`` (``claimed``), so the task need not claim again.
"""

from __future__ import annotations

from typing import Any

from rq.job import Job
from rq.results import Result

from batcher.records import BatchRecord, ClaimRefused
from batcher.rq import TASK_NAMES


class BatchJob(Job):
    # what claim.lua answered in this job's start transaction (a record, or why it refused);
    # None: not claimed there (another worker class, or the claim's reply was an error)
    claimed: BatchRecord | ClaimRefused | None = None
    # the claimant token of that claim: the task's own claim, if it must make one, reuses it
    claimant: str | None = None

    def cleanup(self, ttl: int | None = None, pipeline: Any = None,
                remove_from_queue: bool = True) -> None:
        if ttl == 0 and pipeline is not None and not remove_from_queue and self._plain():
            pipeline.delete(self.key, self.dependents_key, self.dependencies_key,
                            Result.get_key(self.id),  # type: ignore[no-untyped-call]
                            self.execution_registry.key)
            return
        super().cleanup(ttl, pipeline=pipeline, remove_from_queue=remove_from_queue)

    def _plain(self) -> bool:
        # a rate-limited job keeps RQ's slot accounting
        return not self.group_id and not self.has_rate_limit


def batch_args(job: Any) -> tuple[str, str, int] | None:
    """``(queue, batch_id, attempt)`` of a job calling the batcher's task as the dispatcher
    sends it (positional, nothing else); None for any other job."""
    if job.func_name not in TASK_NAMES or job.kwargs:
        return None
    args = job.args
    if not (isinstance(args, list | tuple) and len(args) == 3 and isinstance(args[0], str)
            and isinstance(args[1], str) and type(args[2]) is int):
        return None
    return args[0], args[1], args[2]
