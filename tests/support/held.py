"""A handler for the dashboard's browser test: holds every batch while ``HOLD_KEY`` exists
(so a batch stays in flight to be looked at) and fails the entries whose payload is
``{"bad": true}`` (so they reach the dead set)."""

from __future__ import annotations

import os
import time

import redis

from batcher.models import Batch, BatchOutcome

HOLD_KEY = "test:hold"
_client: redis.Redis | None = None


def handle(batch: Batch) -> BatchOutcome:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(os.environ["BATCH_REDIS_URL"])
    while _client.exists(HOLD_KEY):
        time.sleep(0.05)
    failed = {e.id: "ValueError: the test marked this entry bad"
              for e in batch.entries if e.payload.get("bad")}
    return BatchOutcome(results={e.id: {"ok": True} for e in batch.entries
                                 if e.id not in failed}, failed=failed)
