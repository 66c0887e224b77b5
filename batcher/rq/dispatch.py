"""The hand-off to RQ: one job per batch attempt, on the RQ queue of the batch's best priority.

The coordinator side of the RQ edge (``batcher.rq``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis
import structlog
from rq import Queue
from rq.exceptions import DuplicateJobError, NoSuchJobError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from batcher.config import BatchProcessingConfig
from batcher.keys import QueueKeys
from batcher.rq import FAILURE_TTL_SECONDS, TASK, job_id

log = structlog.stdlib.get_logger(__name__)

# jobs that wait for their time without being in a queue list
_WAITING = {JobStatus.DEFERRED, JobStatus.SCHEDULED}


class Dispatcher:
    """Enqueues ``batcher.rq.task.process_batch(queue, batch_id, attempt)``, JSON-serialised."""

    def __init__(self, client: redis.Redis, config: BatchProcessingConfig):
        self.client = client
        self.config = config
        self.keys = QueueKeys(config.queue)
        self._queues = {
            p: Queue(self.keys.rq_queue(p), connection=client, serializer=JSONSerializer)
            for p in (0, 1, 2)
        }

    def dispatch(self, batch_id: str, attempt: int, priority: int) -> bool:
        """Enqueue the attempt's job; False when that job already exists (a retried hand-off)."""
        try:
            self._queues[priority].enqueue(
                TASK,
                args=(self.config.queue, batch_id, attempt),
                job_id=job_id(batch_id, attempt),
                unique=True,
                result_ttl=0,
                failure_ttl=FAILURE_TTL_SECONDS,
                job_timeout=self.config.job_timeout_seconds,
                description=f"batch {batch_id} attempt {attempt}",
            )
        except DuplicateJobError:
            log.info("batch.dispatch_duplicate", queue=self.config.queue, batch_id=batch_id,
                     attempt=attempt)
            return False
        return True

    def dispatch_new(self, batches: Sequence[tuple[str, int, int]]) -> None:
        """Enqueue fresh batches (id, attempt, priority) in one pipelined round trip.

        Only for batches just popped by flush.lua: their ids are new uuids, so no job can
        exist yet and RQ's per-job ``unique`` script (one more round trip and Lua call per
        job) buys nothing, for one batch as for many. A retried hand-off goes through
        ``dispatch`` with ``unique=True``.
        """
        pipe = self.client.pipeline()
        by_priority: dict[int, list[Any]] = {}
        for batch_id, attempt, priority in batches:
            by_priority.setdefault(priority, []).append(Queue.prepare_data(
                TASK, args=(self.config.queue, batch_id, attempt),
                job_id=job_id(batch_id, attempt), result_ttl=0,
                failure_ttl=FAILURE_TTL_SECONDS, timeout=self.config.job_timeout_seconds,
                description=f"batch {batch_id} attempt {attempt}"))
        for priority, datas in by_priority.items():
            self._queues[priority].enqueue_many(datas, pipeline=pipe)
        pipe.execute()

    def job_alive(self, batch_id: str, attempt: int) -> bool:
        """True while the attempt's RQ job can still reach a worker.

        Asked only about a batch still ``dispatched`` (never claimed) after its dispatch lease,
        so a job RQ calls ``started`` is one whose worker died between dequeue and claim (a
        live worker claims within milliseconds); and a ``queued`` job that is in no queue list
        was popped by a worker that died before marking it started. Both would otherwise look
        alive until RQ's own clean-up, holding the batch for minutes. Judging a live job dead
        costs one spare job: ``claim.lua`` refuses the superseded attempt.
        """
        try:
            job = Job.fetch(job_id(batch_id, attempt), connection=self.client,
                            serializer=JSONSerializer)
        except NoSuchJobError:
            return False
        status = job.get_status(refresh=False)
        if status == JobStatus.QUEUED:
            return self.client.lpos(Queue(job.origin, connection=self.client).key,
                                    job.id) is not None
        return status in _WAITING

    def rq_queue_lengths(self) -> dict[str, int]:
        return {q.name: q.count for q in self._queues.values()}
