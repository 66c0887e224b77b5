"""Deadline flushes with the real coordinator loop: never early, well within a second late."""

from __future__ import annotations

import threading
import time

import redis

from batcher import BatchProcessingConfig, BatchStateManager
from batcher.connection import connect
from batcher.coordinator import Coordinator


def test_urgent_deadline_flush_is_never_early_and_lands_within_a_second(
    redis_url: str, real_redis: redis.Redis
) -> None:
    config = BatchProcessingConfig(
        redis_url=redis_url, queue="deadline", urgent_time_threshold_seconds=1,
        high_time_threshold_seconds=2, time_threshold_seconds=3, max_buffer_age_seconds=60,
        reap_interval_seconds=5,
    )
    manager = BatchStateManager(real_redis, config)
    coordinator = Coordinator(real_redis, config,
                              blocking_client=connect(redis_url, blocking_seconds=1.0))
    stop = threading.Event()
    thread = threading.Thread(target=coordinator.run, args=(stop,), daemon=True)
    thread.start()
    try:
        lateness = []
        for i in range(3):
            manager.queue_entry({"n": i}, "s", f"urgent-{i}", priority=2)
            enqueued_ms = int(float(real_redis.zscore(config.keys.pending, f"urgent-{i}")
                                    or 0)) % 10**13
            deadline = time.monotonic() + 5
            flush = None
            while time.monotonic() < deadline and flush is None:
                events = real_redis.xrevrange(config.keys.events, count=5)
                flush = next((e for _, e in events if e[b"type"] == b"flush"
                              and int(e[b"ms"]) > enqueued_ms), None)
                time.sleep(0.01)
            assert flush is not None, "no deadline flush within 5 s"
            assert flush[b"reason"] == b"deadline"
            lateness.append(int(flush[b"ms"]) - (enqueued_ms + 1000))
            time.sleep(0.3)
        print(f"deadline lateness ms: {lateness}")
        assert all(0 <= ms < 1000 for ms in lateness), lateness
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive()


def _coordinator_due_to_reap_in(redis_url: str, real_redis: redis.Redis,
                                seconds: float) -> Coordinator:
    config = BatchProcessingConfig(redis_url=redis_url, queue="wake")
    coordinator = Coordinator(real_redis, config,
                              blocking_client=connect(redis_url, blocking_seconds=1.0))
    coordinator._next_reap = time.monotonic() + seconds
    return coordinator


def test_a_wait_for_a_wake_hears_it_even_just_before_the_reap(
    redis_url: str, real_redis: redis.Redis
) -> None:
    # At the in-flight cap the coordinator waits for ack's wake (-1). Within 0.1 s of the
    # reap it used to sleep without listening, so a wake there waited for the reap while the
    # workers drained their queue.
    coordinator = _coordinator_due_to_reap_in(redis_url, real_redis, 0.08)
    real_redis.rpush(coordinator.keys.wakeup, "1")
    coordinator.wait(-1, threading.Event())
    assert real_redis.llen(coordinator.keys.wakeup) == 0  # taken, not slept through


def test_the_last_moments_before_a_deadline_still_hear_a_wake(
    redis_url: str, real_redis: redis.Redis
) -> None:
    # the final 0.1 s before a flush deadline are waited out locally (BLPOP can overshoot by
    # 1/hz), polling the wakeup list: a full batch arriving then is flushed at once
    coordinator = _coordinator_due_to_reap_in(redis_url, real_redis, 10.0)
    real_redis.rpush(coordinator.keys.wakeup, "1")
    coordinator.wait(60, threading.Event())
    assert real_redis.llen(coordinator.keys.wakeup) == 0
