"""Deprecated alias: the RQ task moved to ``batcher.rq.task`` (issue 16).

Jobs queued by a coordinator older than that name ``workers.tasks.process_batch``; a worker
still runs them (``batcher.rq.LEGACY_TASK``), through this re-export of the same function.
"""

from batcher.rq.task import process_batch as process_batch

__all__ = ["process_batch"]
