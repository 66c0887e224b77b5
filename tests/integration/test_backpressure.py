"""Backpressure and outages as a producer sees them: block for room, give up cleanly."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import redis

from batcher import (
    BatcherUnavailableError,
    BatchProcessingConfig,
    BatchStateManager,
    BufferFullError,
    EnqueueResult,
    producer,
)
from batcher.connection import connect
from batcher.coordinator import Coordinator
from tests.support.redis_server import RedisServer
from tests.support.spies import count_enqueue_calls
from tests.support.waiting import HANG_GUARD_SECONDS, wait_blocked


def _entries(prefix: str, n: int) -> list[dict[str, Any]]:
    return [{"id": f"{prefix}{i}", "source": "t", "priority": 0, "payload": {"i": i}}
            for i in range(n)]


def _config(redis_url: str, **kw: Any) -> BatchProcessingConfig:
    small = {"max_buffer_size": 5, "size_threshold": 5, "min_batch_size": 1,
             "max_batch_size": 5}
    return BatchProcessingConfig(redis_url=redis_url, queue="bp", **{**small, **kw})


def test_block_policy_waits_for_a_flush_then_accepts(
    redis_url: str, real_redis: redis.Redis
) -> None:
    config = _config(redis_url, overflow_policy="block", block_timeout_seconds=60)
    manager = BatchStateManager(connect(redis_url), config)
    manager.queue_many(_entries("a", 5))
    calls = count_enqueue_calls(manager)
    results: list[EnqueueResult] = []
    producer = threading.Thread(target=lambda: results.append(
        manager.queue_many(_entries("b", 3))))
    producer.start()
    wait_blocked(real_redis, "blpop")  # the producer waits on the room list
    assert results == [] and real_redis.zcard(config.keys.pending) == 5
    Coordinator(real_redis, config).drain()
    producer.join(HANG_GUARD_SECONDS)
    assert results == [EnqueueResult(3, [], [])]
    assert real_redis.zcard(config.keys.pending) == 3
    assert len(calls) <= 3, "the producer polled instead of waiting on the room list"


def test_block_policy_gives_up_after_its_timeout_with_the_rejected_ids(
    redis_url: str, real_redis: redis.Redis
) -> None:
    config = _config(redis_url, overflow_policy="block", block_timeout_seconds=0.2)
    manager = BatchStateManager(connect(redis_url), config)
    manager.queue_many(_entries("a", 4))
    with pytest.raises(BufferFullError) as info:
        manager.queue_many(_entries("b", 3))
    assert info.value.result.accepted == 1
    assert info.value.result.rejected_ids == ["b1", "b2"]
    assert real_redis.zcard(config.keys.pending) == 5


def test_an_unreachable_redis_names_the_unconfirmed_ids_and_a_resend_is_safe(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    slept: list[float] = []
    with RedisServer(extra_args=["--appendonly", "yes"]) as server:  # survives the restart
        config = _config(server.url, max_buffer_size=100, size_threshold=25,
                         max_batch_size=50)
        manager = BatchStateManager(connect(server.url), config)
        manager.queue_many(_entries("x", 2))
        server.stop()
        with monkeypatch.context() as patch, pytest.raises(BatcherUnavailableError) as info:
            patch.setattr(producer.time, "sleep", slept.append)
            manager.queue_many(_entries("x", 4))
        # a bounded back-off: each documented delay once, then a clear error
        assert slept == list(producer.RETRY_DELAYS_SECONDS)
        assert info.value.unconfirmed_ids == ["x0", "x1", "x2", "x3"]
        server.start()
        again = manager.queue_many(_entries("x", 4))  # the producer re-sends the chunk
        assert again.accepted == 2 and again.duplicate_ids == ["x0", "x1"]


def test_block_policy_keeps_the_duplicates_of_the_first_try(
    redis_url: str, real_redis: redis.Redis
) -> None:
    # a mutation survivor: the wait for room overwrote the duplicates the first call found
    config = _config(redis_url, overflow_policy="block", block_timeout_seconds=60)
    manager = BatchStateManager(connect(redis_url), config)
    manager.queue_many(_entries("a", 5))
    results: list[EnqueueResult] = []
    producer = threading.Thread(target=lambda: results.append(
        manager.queue_many([*_entries("a", 1), *_entries("b", 2)])))
    producer.start()
    wait_blocked(real_redis, "blpop")
    Coordinator(real_redis, config).drain()
    producer.join(HANG_GUARD_SECONDS)
    assert results == [EnqueueResult(2, ["a0"], [])]
