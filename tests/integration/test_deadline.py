"""Deadline flushes with the real coordinator loop, and waits that hear a wake.

Redis's clock decides when a deadline is due (flush.lua reads TIME); the coordinator's own
clock, injected here, times the reap and its local waits, so no test depends on how fast the
machine is.
"""

from __future__ import annotations

import threading

import redis

from batcher import BatchProcessingConfig, BatchStateManager
from batcher.connection import connect
from batcher.coordinator import Coordinator
from tests.support.waiting import wait_stream


def _redis_ms(client: redis.Redis) -> int:
    sec, usec = client.time()
    return int(sec) * 1000 + int(usec) // 1000


def test_urgent_deadline_flush_is_never_early(
    redis_url: str, real_redis: redis.Redis
) -> None:
    config = BatchProcessingConfig(
        redis_url=redis_url, queue="deadline", urgent_time_threshold_seconds=3,
        high_time_threshold_seconds=4, time_threshold_seconds=5, max_buffer_age_seconds=60,
        reap_interval_seconds=5,
    )
    manager = BatchStateManager(real_redis, config)
    coordinator = Coordinator(real_redis, config,
                              blocking_client=connect(redis_url, blocking_seconds=1.0))
    coordinator.start()
    manager.queue_entry({"n": 0}, "s", "urgent-0", priority=2)
    enqueued_ms = int(float(real_redis.zscore(config.keys.pending, "urgent-0") or 0)) % 10**13
    before = _redis_ms(real_redis)
    planned_ms = coordinator.step()
    # not due yet (3 s is far beyond one round trip, even on a loaded machine): nothing
    # flushed, and the planned wait ends at the entry's deadline
    assert real_redis.zcard(config.keys.pending) == 1
    assert 0 < planned_ms <= enqueued_ms + 3000 - before

    stop = threading.Event()
    thread = threading.Thread(target=coordinator.run, args=(stop,), daemon=True)
    thread.start()
    try:
        (flush,) = wait_stream(real_redis, config.keys.events, type="flush")
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
    assert flush[b"reason"] == b"deadline"
    assert int(flush[b"ms"]) >= enqueued_ms + 3000


class FrozenClock:
    """A monotonic clock that moves only when the test says so."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _coordinator_due_to_reap_in(redis_url: str, real_redis: redis.Redis,
                                seconds: float) -> Coordinator:
    config = BatchProcessingConfig(redis_url=redis_url, queue="wake")
    clock = FrozenClock()
    coordinator = Coordinator(real_redis, config, clock=clock,
                              blocking_client=connect(redis_url, blocking_seconds=1.0))
    coordinator._next_reap = clock.now + seconds
    return coordinator


def test_a_wait_for_a_wake_hears_it_even_just_before_the_reap(
    redis_url: str, real_redis: redis.Redis
) -> None:
    # At the in-flight cap the coordinator waits for ack's wake (-1). Within 0.1 s of the
    # reap it used to sleep without listening, so a wake there waited for the reap while the
    # workers drained their queue. The frozen clock keeps it 80 ms before the reap.
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


def test_a_wait_returns_at_its_deadline_without_a_wake(
    redis_url: str, real_redis: redis.Redis
) -> None:
    # the clock passes the deadline during the wait: it returns instead of blocking on
    coordinator = _coordinator_due_to_reap_in(redis_url, real_redis, 10.0)
    clock = coordinator.clock
    assert isinstance(clock, FrozenClock)
    stop = threading.Event()
    coordinator.blocking = _AdvancingClient(coordinator.blocking, clock, by=20.0)
    coordinator.wait(-1, stop)
    assert clock.now == 1020.0  # one BLPOP, then the reap was due


class _AdvancingClient:
    """A client whose BLPOP finds nothing and moves the clock on, as a real timeout would."""

    def __init__(self, inner: redis.Redis, clock: FrozenClock, by: float) -> None:
        self.inner, self.clock, self.by = inner, clock, by

    def blpop(self, keys: list[str], timeout: float) -> None:
        self.clock.now += self.by
        return None
