"""A handler for end-to-end tests: counts every call per entry id in Redis, returns payloads."""

from __future__ import annotations

import os
from typing import Any

import redis

from batcher.models import Batch

HANDLED_KEY = "test:handled"
_client: redis.Redis | None = None


def handle(batch: Batch) -> dict[str, Any]:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(os.environ["BATCH_REDIS_URL"])
    pipe = _client.pipeline(transaction=False)
    for entry in batch.entries:
        pipe.hincrby(HANDLED_KEY, entry.id, 1)
    pipe.execute()
    return {e.id: e.payload for e in batch.entries}
