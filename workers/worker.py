"""The RQ worker classes ``batcher worker`` runs: RQ's, with its per-job bookkeeping trimmed.

RQ's worker loop sends a plain heartbeat (HSET last_heartbeat, EXPIRE the worker key, EXPIRE
its executions key: three round trips) before each dequeue, after it, and after each job.
For jobs of a few milliseconds that is 9 of a job's ~28 round trips. ``LeanHeartbeats`` sends
the three commands in one round trip, at most once a second; a heartbeat RQ gives its own
TTL or pipeline goes out unchanged.

Why skipping is safe: a plain heartbeat sets the key's TTL to ``worker_ttl + 60`` (480 s),
and RQ blocks in a dequeue for at most ``worker_ttl - 15`` (405 s). The heartbeat after a
job always goes out, because the job's own heartbeats (in a forked horse, invisible here) may
have shortened the TTL. So before every dequeue, the last heartbeat is at most a second old
and has set the full TTL.

The suspension flag (``rq suspend``) is read at most once a second too, as RQ itself polls it
while suspended; ``BatchSimpleWorker`` also skips rewriting the state it last wrote (jobs run
in its own process, so nothing else changes it).
"""

from __future__ import annotations

import time
from typing import Any

from rq import SimpleWorker, Worker

PLAIN_HEARTBEAT_EVERY_SECONDS = 1.0
SUSPENSION_CHECK_EVERY_SECONDS = 1.0


class LeanHeartbeats:
    """Mixin for an RQ worker class; see the module docstring."""

    _plain_heartbeat_due = 0.0
    _suspension_check_due = 0.0
    connection: Any

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        parent: Any = super()
        if timeout is not None or pipeline is not None:
            parent.heartbeat(timeout, pipeline=pipeline)
            return
        now = time.monotonic()
        if now < self._plain_heartbeat_due:
            return
        with self.connection.pipeline(transaction=False) as pipe:
            parent.heartbeat(pipeline=pipe)
            pipe.execute()
        self._plain_heartbeat_due = now + PLAIN_HEARTBEAT_EVERY_SECONDS

    def check_for_suspension(self, burst: bool) -> None:
        now = time.monotonic()
        if now < self._suspension_check_due:
            return
        super().check_for_suspension(burst)  # type: ignore[misc]
        self._suspension_check_due = time.monotonic() + SUSPENSION_CHECK_EVERY_SECONDS

    def execute_job(self, job: Any, queue: Any) -> Any:
        try:
            return super().execute_job(job, queue)  # type: ignore[misc]
        finally:
            self._plain_heartbeat_due = 0.0


class BatchSimpleWorker(LeanHeartbeats, SimpleWorker):
    """RQ's ``SimpleWorker`` (jobs in the worker's own process)."""

    def set_state(self, state: str, pipeline: Any = None) -> None:
        # no horse writes the state behind our back here: a repeated IDLE is a wasted trip
        if pipeline is None and state == self._state:
            return
        super().set_state(state, pipeline=pipeline)


class BatchWorker(LeanHeartbeats, Worker):
    """RQ's forking ``Worker`` (one work horse per job)."""


def worker_class(simple: bool) -> type[BatchSimpleWorker] | type[BatchWorker]:
    return BatchSimpleWorker if simple else BatchWorker
