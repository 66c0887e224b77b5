"""The celery-batches baseline: one task, buffered 25 at a time or flushed every second.

Imported by ``celery -A benchlib.celery_app worker`` (broker from ``BENCH_REDIS_URL``) and by
the benchmark's producer. The batch task counts the entries it finished in one INCRBY, the
same one round trip per batch that ours spends on its ack.
"""

from __future__ import annotations

import os
from typing import Any

import redis
from celery import Celery  # type: ignore[import-untyped]
from celery_batches import Batches, SimpleRequest  # type: ignore[import-untyped]

DONE_KEY = "bench:celery:done"
FLUSH_EVERY = 25
FLUSH_INTERVAL_SECONDS = 1

app = Celery("bench", broker=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:1/0"))
app.conf.update(
    task_serializer="json", accept_content=["json"], result_backend=None,
    task_ignore_result=True,
    # celery-batches needs a prefetch of 0 (unlimited) or at least flush_every
    worker_prefetch_multiplier=0,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)
_client: redis.Redis | None = None


@app.task(  # type: ignore[untyped-decorator]
    base=Batches, flush_every=FLUSH_EVERY, flush_interval=FLUSH_INTERVAL_SECONDS)
def echo_batch(requests: list[SimpleRequest]) -> dict[str, Any]:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(os.environ["BENCH_REDIS_URL"])
    results = {r.args[0]["id"]: r.args[0]["payload"] for r in requests}
    _client.incrby(DONE_KEY, len(requests))
    return results
