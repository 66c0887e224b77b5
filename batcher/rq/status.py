"""What RQ has registered about a queue's workers (read by ``stats`` and the dashboard)."""

from __future__ import annotations

from typing import Any

import redis
from rq import Queue, Worker

from batcher.keys import QueueKeys


def live_workers(client: redis.Redis, keys: QueueKeys) -> list[dict[str, Any]]:
    """The RQ workers registered on any of the queue's three RQ queues (alive: key not expired)."""
    found: dict[str, dict[str, Any]] = {}
    for name in keys.rq_queues_by_urgency():
        for worker in Worker.all(queue=Queue(name, connection=client)):
            found.setdefault(worker.name, {"name": worker.name, "state": str(worker.get_state()),
                                           "queues": worker.queue_names()})
    return sorted(found.values(), key=lambda w: str(w["name"]))
