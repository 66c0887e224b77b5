"""The RQ edge: the only package that imports ``rq`` (pinned to one tested range in pyproject).

- ``dispatch.py``: the coordinator's hand-off, one RQ job per batch attempt.
- ``task.py``: ``process_batch``, the function those jobs name; it runs ``batcher.processing``.
- ``worker.py``, ``job.py``: RQ's worker and job classes with its per-job bookkeeping trimmed,
  the batch's claim sent in the job's start transaction.
- ``guard.py``: a worker runs batch jobs only.
- ``run.py``: ``batcher worker``'s loop (restarts after a Redis fault, early signals).
- ``status.py``: the workers RQ has registered on a queue (for ``stats`` and the dashboard).

When RQ changes, this folder changes. This module imports nothing, so the names below cost a
process nothing to read.
"""

from __future__ import annotations

# the dotted name every batch job carries (RQ imports it in the worker): moving
# ``process_batch`` means changing this, and jobs already queued under the old name are refused
TASK = "batcher.rq.task.process_batch"
# the name jobs carried before issue 16 (workers/tasks.py is now a re-export of the same
# function): a job an older coordinator queued during a rolling upgrade still runs
LEGACY_TASK = "workers.tasks.process_batch"
TASK_NAMES = frozenset({TASK, LEGACY_TASK})
FAILURE_TTL_SECONDS = 3600


def job_id(batch_id: str, attempt: int) -> str:
    """The RQ job id of one attempt of one batch (unique: a retried hand-off is a duplicate)."""
    return f"{batch_id}-{attempt}"
