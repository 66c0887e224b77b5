"""run_batch's less travelled paths on the real server: a rate-limited handler, a handler
returning the wrong type, the handler-mismatch warning, and the retry back-off values."""

from __future__ import annotations

from typing import Any

import pytest
import redis as redis_py
from structlog.testing import capture_logs

from batcher import processing as tasks
from batcher.config import BatchProcessingConfig
from batcher.coordinator import Coordinator
from batcher.errors import RateLimited
from batcher.models import Batch
from batcher.producer import BatchStateManager
from batcher.scripts import Scripts
from tests.support.invariants import assert_consistent

QUEUE = "paths"


def _config(url: str, **overrides: Any) -> BatchProcessingConfig:
    return BatchProcessingConfig(queue=QUEUE, redis_url=url, log_format="json", **overrides)


def _dispatched(client: redis_py.Redis, config: BatchProcessingConfig, n: int = 2) -> str:
    BatchStateManager(client, config).queue_many(
        [{"id": f"e{i}", "source": "t", "payload": {"i": i}} for i in range(n)])
    coordinator = Coordinator(client, config)
    coordinator.start()
    coordinator.drain(manual=True)
    (key,) = client.scan_iter(match=f"{config.keys.base}:batch:*")
    return bytes(key).decode().rsplit(":", 1)[1]


def _context(client: redis_py.Redis, config: BatchProcessingConfig,
             handler: tasks.Handler) -> tasks.WorkerContext:
    return tasks.WorkerContext(config, client, Scripts(client, config), handler)


def _redis_ms(client: redis_py.Redis) -> int:
    sec, usec = client.time()
    return int(sec) * 1000 + int(usec) // 1000


def test_a_rate_limited_handler_pauses_the_queue_and_costs_no_attempt(
    redis_url: str, real_redis: redis_py.Redis
) -> None:
    config = _config(redis_url, max_attempts=1)
    batch_id = _dispatched(real_redis, config)

    def limited(batch: Batch) -> None:
        raise RateLimited(120)

    before = _redis_ms(real_redis)
    outcome = tasks.run_batch(_context(real_redis, config, limited), batch_id, 1)
    after = _redis_ms(real_redis)

    assert outcome == {"status": "rate_limited"}
    k = config.keys
    paused_until = int(real_redis.hget(k.state, "paused_until_ms") or 0)
    assert before + 120_000 <= paused_until <= after + 120_000
    # the batch waits out the pause in flight, with no attempt spent (max_attempts=1: an
    # attempt counted would have dead-lettered both entries)
    assert real_redis.hget(k.batch(batch_id), "status") == b"retrying"
    assert real_redis.hget(k.batch(batch_id), "free") == b"1"
    assert real_redis.zscore(k.inflight, batch_id) == paused_until
    assert real_redis.zcard(k.dead) == 0
    assert real_redis.hget(k.stats, "rate_limited") == b"1"
    # and nothing is flushed while paused, even what is due now
    BatchStateManager(real_redis, config).queue_many(
        [{"id": f"n{i}", "payload": {}} for i in range(config.size_threshold)])
    assert 0 < Coordinator(real_redis, config).drain() <= 120_000  # waits out the pause
    assert real_redis.zcard(k.pending) == config.size_threshold
    assert_consistent(real_redis, k)


def test_a_handler_returning_an_unsupported_type_fails_the_batch_with_the_reason(
    redis_url: str, real_redis: redis_py.Redis
) -> None:
    config = _config(redis_url)
    batch_id = _dispatched(real_redis, config)
    outcome = tasks.run_batch(_context(real_redis, config, lambda batch: ["e0", "e1"]),
                              batch_id, 1)
    assert outcome == {"status": "failed", "outcome": "retrying"}
    assert real_redis.hget(config.keys.batch(batch_id), "last_error") == (
        b"TypeError: handler returned list; expected a mapping id -> result, a BatchOutcome "
        b"or None")
    assert_consistent(real_redis, config.keys)


def test_a_worker_warns_once_when_its_handler_is_not_the_producers(
    redis_url: str, real_redis: redis_py.Redis
) -> None:
    config = _config(redis_url, handler="workers.handlers.echo:handle")
    real_redis.hset(config.keys.state, "handler", "myapp.handlers:summarize")
    ctx = _context(real_redis, config, lambda batch: {})
    with capture_logs() as logs:
        tasks.run_batch(ctx, _dispatched(real_redis, config, n=1), 1)
        BatchStateManager(real_redis, config).queue_many([{"id": "again", "payload": {}}])
        Coordinator(real_redis, config).drain(manual=True)
        (key,) = real_redis.scan_iter(match=f"{config.keys.base}:batch:*")
        tasks.run_batch(ctx, bytes(key).decode().rsplit(":", 1)[1], 1)
    warnings = [e for e in logs if e["event"] == "worker.handler_mismatch"]
    assert warnings == [{"event": "worker.handler_mismatch", "log_level": "warning",
                         "queue": QUEUE, "expected": "myapp.handlers:summarize",
                         "running": "workers.handlers.echo:handle"}]


def test_a_matching_handler_is_not_warned_about(
    redis_url: str, real_redis: redis_py.Redis
) -> None:
    config = _config(redis_url, handler="workers.handlers.echo:handle")
    real_redis.hset(config.keys.state, "handler", "workers.handlers.echo:handle")
    with capture_logs() as logs:
        tasks.run_batch(_context(real_redis, config, lambda batch: {}),
                        _dispatched(real_redis, config, n=1), 1)
    assert not [e for e in logs if e["event"] == "worker.handler_mismatch"]


@pytest.mark.parametrize(("calls", "low", "high"), [
    (1, 1_000, 3_000),          # base 2 s x U(0.5, 1.5)
    (2, 2_000, 6_000),          # doubled
    (4, 8_000, 24_000),         # 2 s x 2^3
    (12, 1_800_000, 5_400_000),  # 2 s x 2^11 = 68 min: capped at one hour before the jitter
    (40, 1_800_000, 5_400_000),
])
def test_retry_backoff_doubles_per_call_with_jitter_and_a_one_hour_cap(
    calls: int, low: int, high: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = BatchProcessingConfig(retry_backoff_seconds=2)
    monkeypatch.setattr(tasks.random, "uniform", lambda a, b: a)
    assert tasks.backoff_ms(config, calls) == low
    monkeypatch.setattr(tasks.random, "uniform", lambda a, b: b)
    assert tasks.backoff_ms(config, calls) == high


def test_retry_backoff_jitter_spreads_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    config = BatchProcessingConfig(retry_backoff_seconds=2)
    drawn = {tasks.backoff_ms(config, 1) for _ in range(50)}
    assert all(1_000 <= ms <= 3_000 for ms in drawn) and len(drawn) > 10
