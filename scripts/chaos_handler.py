"""The chaos run's handler: count every call per entry id in Redis, then run the simulated one.

``chaos:handled`` (HASH id -> calls) counts every handler call, including calls that then
fail; ``chaos:failed`` counts the calls that raised. An id whose calls minus failures exceed
one was handled successfully more than once: a duplicate delivery, which the at-least-once
guarantee allows only after a redelivery (DESIGN §3). ``scripts/chaos.py`` reads both.

Set ``BATCH_HANDLER=chaos_handler:handle`` with ``scripts/`` on ``PYTHONPATH``.
"""

from __future__ import annotations

import os
import time
from typing import Any

import redis

from batcher.backoff import waitable
from batcher.connection import connect
from batcher.models import Batch
from workers.handlers import simulated

HANDLED_KEY = "chaos:handled"
FAILED_KEY = "chaos:failed"
_clients: dict[str, redis.Redis] = {}


def _client() -> redis.Redis:
    url = os.environ["BATCH_REDIS_URL"]
    if url not in _clients:
        # a worker-side client: its counts pass a full Redis (batcher.oom)
        _clients[url] = connect(url, oom_tolerant=True)
    return _clients[url]


def _count(key: str, ids: list[str]) -> None:
    # one MULTI: a batch's ids are counted all together or not at all; a fault the run
    # injects (READONLY, MASTERDOWN, a restart) is waited out, as the worker itself does
    for delay in (0.2, 0.4, 0.8, 1.6, 3.2, 5.0, None):
        try:
            pipe = _client().pipeline(transaction=True)
            for entry_id in ids:
                pipe.hincrby(key, entry_id, 1)
            pipe.execute()
            return
        except redis.RedisError as exc:
            if delay is None or not waitable(exc):
                raise
            time.sleep(delay)


def handle(batch: Batch) -> dict[str, Any]:
    """Count the call, then delegate to ``workers.handlers.simulated.handle``.

    Raises what the simulated handler raises, or a Redis error when the call could not be
    counted (then the simulated handler did not run: the batch fails and is retried).
    """
    ids = [entry.id for entry in batch.entries]
    _count(HANDLED_KEY, ids)
    try:
        return simulated.handle(batch)
    except Exception:
        try:
            _count(FAILED_KEY, ids)
        except redis.RedisError:
            # an uncounted failure later reads as a duplicate: the report errs on the safe side
            pass
        raise
