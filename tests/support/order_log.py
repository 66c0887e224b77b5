"""A handler for the sharded e2e test: counts every call per entry id and logs, per queue and
source, the order in which the entries met the handler (``ORDER_PREFIX<queue>:<source>``,
``<payload i>:<enqueued_ms>`` items)."""

from __future__ import annotations

import os
from typing import Any

import redis

from batcher.models import Batch

HANDLED_KEY = "test:handled"
BATCHES_KEY = "test:batches"  # every batch's queue, in the order the handler got them
ORDER_PREFIX = "test:order:"
_client: redis.Redis | None = None


def handle(batch: Batch) -> dict[str, Any]:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(os.environ["BATCH_REDIS_URL"])
    pipe = _client.pipeline(transaction=False)
    pipe.rpush(BATCHES_KEY, batch.queue)
    for entry in batch.entries:
        pipe.hincrby(HANDLED_KEY, entry.id, 1)
        pipe.rpush(f"{ORDER_PREFIX}{batch.queue}:{entry.source}",
                   f"{entry.payload['i']}:{entry.enqueued_ms}")
    pipe.execute()
    return {e.id: True for e in batch.entries}
