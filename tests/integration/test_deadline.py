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
