"""What RQ has registered about a queue's workers (read by ``stats`` and the dashboard)."""

from __future__ import annotations

import redis
from rq import Queue, Worker

from batcher.keys import QueueKeys
from batcher.monitoring.queue_stats import WorkerInfo


def live_workers(client: redis.Redis, keys: QueueKeys) -> list[WorkerInfo]:
    """The RQ workers registered on any of the queue's three RQ queues (alive: key not expired)."""
    found: dict[str, WorkerInfo] = {}
    for name in keys.rq_queues_by_urgency():
        for worker in Worker.all(queue=Queue(name, connection=client)):
            found.setdefault(worker.name, WorkerInfo(worker.name, str(worker.get_state()),
                                                     worker.queue_names()))
    return sorted(found.values(), key=lambda w: w.name)
