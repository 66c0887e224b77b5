"""Only batch jobs: a batcher worker refuses any RQ job that is not the batcher's own task.

RQ imports and calls whatever ``func_name`` a job names, so anyone who can write to Redis
could otherwise run code on every worker host (``os.system`` with a shell command). The guard
runs in the worker's main process right after the dequeue, before RQ prepares, forks for or
performs the job: it reads only the job's JSON fields (``func_name``, args, callback names,
none of which imports anything) and moves a refused job to RQ's failed registry with the
reason, without running callbacks, webhooks or dependents. See docs/security.md.
"""

from __future__ import annotations

from typing import Any

import structlog
from rq.job import JobStatus

from batcher.rq import FAILURE_TTL_SECONDS, TASK_NAMES
from batcher.rq.job import batch_args

log = structlog.stdlib.get_logger(__name__)

# the functions a batcher worker runs: the batcher's own task (under its current and its
# pre-issue-16 name), nothing else
ALLOWED_FUNCTIONS = TASK_NAMES
_CALLBACKS = ("_success_callback_name", "_failure_callback_name", "_stopped_callback_name")


def refusal(job: Any, allowed: frozenset[str] = ALLOWED_FUNCTIONS) -> str | None:
    """Why ``job`` must not run (one line), or None for a job naming one of ``allowed``.

    Reads the job's decoded JSON only; a job whose data does not decode is refused too.
    """
    try:
        func_name = job.func_name
        _ = job.args, job.kwargs  # decoded here, so undecodable data is refused
    except Exception as exc:  # noqa: BLE001 - undecodable data: refuse, whatever the cause
        return f"refused: undecodable job data ({type(exc).__name__})"
    if func_name not in allowed:
        return f"refused: not a batcher job: {_shown(func_name)}"
    callbacks = [name.strip("_") for name in _CALLBACKS if getattr(job, name, None)]
    if callbacks:
        # RQ would import a callback by name, which is as open as func_name
        return f"refused: a batcher job with callbacks: {', '.join(callbacks)}"
    if func_name in TASK_NAMES and batch_args(job) is None:
        return "refused: a batcher job's arguments must be (queue, batch_id, attempt)"
    return None


def refuse(worker: Any, job: Any, queue: Any, reason: str) -> None:
    """Move ``job`` to its queue's failed registry with ``reason``; log ``worker.job_refused``.

    The registry and status are written directly (not RQ's failure handling), so none of the
    job's callbacks, webhooks, retries or dependents run.
    """
    # our own TTL: the job's failure_ttl is the sender's choice (-1 keeps it for ever)
    job.failure_ttl = FAILURE_TTL_SECONDS
    with worker.connection.pipeline() as pipe:
        job.set_status(JobStatus.FAILED, pipeline=pipe)
        # the failed registry plus a failure Result carrying the reason (rq info, dashboards)
        job._handle_failure(reason, pipeline=pipe, worker_name=worker.name)
        pipe.execute()
    log.warning("worker.job_refused", job_id=job.id, rq_queue=queue.name, reason=reason)


def _shown(func_name: object) -> str:
    text = repr(func_name) if not isinstance(func_name, str) else func_name
    return text if len(text) <= 200 else text[:200] + "..."
