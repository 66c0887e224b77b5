"""``process_batch``: the function every batch job names (``batcher.rq.TASK``).

It takes the claim the worker made in the job's start transaction (``BatchJob.claimed``) and
hands the batch to ``batcher.processing``; on any other worker it claims there.
"""

from __future__ import annotations

from typing import Any

from rq import get_current_job

from batcher import processing
from batcher.rq.job import BatchJob


def process_batch(queue: str, batch_id: str, attempt: int) -> dict[str, Any]:
    """The RQ job: claim ``batch_id``'s ``attempt``, call the handler once, ack or fail it."""
    job = get_current_job()
    claimed, claimant = None, None
    if isinstance(job, BatchJob):
        claimed, job.claimed, claimant = job.claimed, None, job.claimant
    # the RQ worker's own connection: a forked work horse opens one connection per job, not two
    ctx = processing.context(queue, None if job is None else job.connection)
    return processing.run_batch(ctx, batch_id, attempt, claimed=claimed, claimant=claimant)
