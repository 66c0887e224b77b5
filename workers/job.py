"""The RQ job class ``batcher worker`` runs batch jobs with.

A batch job is enqueued with ``result_ttl=0``: its outcome lives in our own keys, so RQ deletes
the job as soon as it succeeds. RQ's generic ``Job.delete`` first reads back the job's status
and, twice, its executions (about seven round trips per job) to find registries that a plain
job without dependents, group or rate limit is not in: the worker's own ``cleanup_execution``
removes the one execution in the same pipeline. ``BatchJob`` deletes the same keys in that
pipeline without the reads; anything else goes through RQ's code unchanged.
"""

from __future__ import annotations

from typing import Any

from rq.job import Job
from rq.results import Result


class BatchJob(Job):
    def cleanup(self, ttl: int | None = None, pipeline: Any = None,
                remove_from_queue: bool = True) -> None:
        if ttl == 0 and pipeline is not None and not remove_from_queue and self._plain():
            pipeline.delete(self.key, self.dependents_key, self.dependencies_key,
                            Result.get_key(self.id),  # type: ignore[no-untyped-call]
                            self.execution_registry.key)
            return
        super().cleanup(ttl, pipeline=pipeline, remove_from_queue=remove_from_queue)

    def _plain(self) -> bool:
        # has_rate_limit is RQ 3's; a rate-limited job keeps RQ's slot accounting
        return not self.group_id and not getattr(self, "has_rate_limit", False)
