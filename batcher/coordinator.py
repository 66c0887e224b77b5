"""The coordinator: flush what is due, hand it to RQ, reap expired leases, wait for the next wake.

Stateless: any number may run against one queue; ``flush.lua`` pops atomically, so two
coordinators never share a batch.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import orjson
import redis
import structlog

from batcher import sizing
from batcher.backoff import Backoff
from batcher.config import BatchProcessingConfig
from batcher.records import (
    META_FIELDS,
    BatchRecord,
    BatchStatus,
    FlushedBatch,
    RedispatchOutcome,
)
from batcher.rq.dispatch import Dispatcher
from batcher.scripts import EVENTS_MAXLEN, Scripts

log = structlog.stdlib.get_logger(__name__)

# Redis times BLPOP at its hz (10/s by default), so a blocking wait can overshoot by ~100 ms:
# block until this long before the planned wake, then sleep locally to the exact ms.
BLPOP_MARGIN_SECONDS = 0.1
MIN_BLPOP_SECONDS = 0.01
# how often the wakeup list is polled in the last BLPOP_MARGIN_SECONDS before a deadline
WAKE_POLL_SECONDS = 0.005
# a blocking call never outlasts this, so SIGTERM is seen within about a second
MAX_BLOCK_SECONDS = 1.0
SIZING_EVERY_SAMPLES = 10
MAX_FLUSH_BURST = 16
REAP_BATCH = 200


def scale_memory_ratio(ratio: float, level: float, early: float) -> float:
    """Redis's used/max memory as a buffer utilisation for flush.lua: ``level`` maps to the
    early-flush pressure and a full Redis to 1 (past the emergency level), linearly between;
    under ``level`` it does not count (a Redis shared with other data may sit at 70 %)."""
    if ratio < level:
        return 0.0
    return min(1.0, early + (ratio - level) / (1 - level) * (1 - early)) if level < 1 else 1.0


def new_batch_id() -> str:
    return uuid.uuid4().hex


@dataclass
class FlushTally:
    """What this coordinator process flushed and redispatched since it started (its own
    counts; the queue's shared counters are in Redis, keys.counters)."""

    flushed_batches: int = 0
    flushed_entries: int = 0
    redispatched: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)


class Coordinator:
    """The flush loop and the reaper of one queue (DESIGN §3)."""

    def __init__(
        self,
        client: redis.Redis,
        config: BatchProcessingConfig,
        *,
        blocking_client: redis.Redis | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        # ``clock`` (seconds, monotonic) times the reap, the report and local waits; tests
        # inject one to step through them without sleeping. Flush deadlines use Redis's TIME.
        self.clock = clock
        self.client = client
        self.blocking = blocking_client or client
        self.config = config
        self.scripts = Scripts(client, config)
        self.keys = self.scripts.keys
        # RQ's Redis: ``client`` itself unless BATCH_RQ_REDIS_URL names another server. The
        # batch record and its lease are written before the dispatch, on the batcher's Redis:
        # a dispatch lost with RQ's Redis is redone by the reaper
        self.dispatcher = Dispatcher(config.rq_client_for(client), config)
        self.tally = FlushTally()
        self._next_reap = 0.0
        self._next_report = clock() + config.report_interval_seconds
        self._last_sizing_sample = b""
        self._memory_hot = False

    def start(self) -> None:
        """Preload the scripts and publish the limits this coordinator runs with."""
        self.scripts.preload()
        limits = {k: str(v) for k, v in self.config.limits().items()}
        pipe = self.client.pipeline()
        pipe.hset(self.keys.state, mapping=limits)  # type: ignore[arg-type]
        pipe.hsetnx(self.keys.state, sizing.FIELD_THRESHOLD, self.config.size_threshold)
        if not self.config.enable_adaptive_sizing:
            pipe.hset(self.keys.state, sizing.FIELD_THRESHOLD, self.config.size_threshold)
        pipe.execute()

    # -- one pass ----------------------------------------------------------------------------

    def drain(self, *, manual: bool = False) -> int:
        """Flush and dispatch until nothing is due; return the wait in ms (-1: until woken).

        While every call pops a batch, the next round sends twice as many flush calls in one
        pipeline (up to MAX_FLUSH_BURST), so a backlog costs one round trip per burst.
        """
        burst = 1
        while True:
            decisions = self.scripts.flush_many([new_batch_id() for _ in range(burst)],
                                                manual=manual)
            wait_ms: int | None = None
            popped: list[FlushedBatch] = []
            for decision in decisions:
                # a pipeline is not a transaction: an enqueue can land between two calls, so
                # a batch may follow a wait; every popped batch is dispatched
                if decision.batch is None:
                    wait_ms = decision.wait_ms
                else:
                    popped.append(decision.batch)
                    if wait_ms is not None:
                        wait_ms = None
                        burst = 1
            if popped:
                self._dispatch(popped)
            if wait_ms is not None:
                return wait_ms
            if decisions[-1].batch is not None:
                burst = min(burst * 2, MAX_FLUSH_BURST)

    def _dispatch(self, batches: list[FlushedBatch]) -> None:
        s = self.tally
        for batch in batches:
            s.flushed_batches += 1
            s.flushed_entries += batch.size
            s.by_reason[batch.reason] = s.by_reason.get(batch.reason, 0) + 1
            log.info("batch.flushed", queue=self.config.queue, batch_id=batch.id,
                     size=batch.size, reason=str(batch.reason), priority=batch.priority)
        try:
            self.dispatcher.dispatch_new([(b.id, b.attempt, b.priority) for b in batches])
        except redis.RedisError as exc:
            # the batches are recorded with a lease: the reaper dispatches them again
            log.warning("batch.dispatch_failed", queue=self.config.queue,
                        batch_ids=[b.id for b in batches], error=str(exc))

    def read_memory(self) -> float:
        """Redis's used_memory / maxmemory (0 without a limit), handed to flush.lua scaled so
        the configured level counts as early pressure. One INFO per reap."""
        level = self.config.redis_memory_flush_pressure
        if level <= 0:
            return 0.0
        try:
            info = self.client.info("memory")
        except redis.ResponseError:  # INFO refused (an ACL): the buffer's own figures rule
            return 0.0
        maxmemory = int(info.get("maxmemory", 0) or 0)
        ratio = int(info.get("used_memory", 0)) / maxmemory if maxmemory > 0 else 0.0
        self.scripts.redis_memory_utilization = scale_memory_ratio(
            ratio, level, self.config.early_flush_pressure)
        hot = ratio >= level
        if hot != self._memory_hot:
            log.info("redis.memory_pressure" if hot else "redis.memory_pressure_over",
                     queue=self.config.queue, used_ratio=round(ratio, 3), flush_level=level)
            self._memory_hot = hot
        return ratio

    def reap(self) -> int:
        """Re-dispatch expired leases, promote delayed entries, expire old ones, trim `seen`."""
        self.read_memory()
        sec, usec = self.client.time()
        now_ms = int(sec) * 1000 + int(usec) // 1000
        expired = self.client.zrange(self.keys.inflight, "-inf", now_ms, byscore=True,
                                     offset=0, num=REAP_BATCH)
        handled = 0
        for raw in cast(list[bytes], expired):
            batch_id = raw.decode()
            record = BatchRecord.from_meta(batch_id, cast(list[bytes | None], self.client.hmget(
                self.keys.batch(batch_id), META_FIELDS)))
            if record is None:
                continue
            attempt = record.attempt
            alive = (record.status == BatchStatus.DISPATCHED
                     and self.dispatcher.job_alive(batch_id, attempt))
            step = self.scripts.redispatch(batch_id, attempt, job_alive=alive)
            if step.outcome.dispatches_again:
                handled += 1
                self.tally.redispatched += 1
                log.info("batch.redelivered" if step.outcome == RedispatchOutcome.REDELIVERED
                         else "batch.redispatched", queue=self.config.queue, batch_id=batch_id,
                         attempt=step.attempt, why=str(step.outcome))
                try:
                    self.dispatcher.dispatch(batch_id, step.attempt, step.priority)
                except redis.RedisError as exc:
                    log.warning("batch.dispatch_failed", queue=self.config.queue,
                                batch_id=batch_id, error=str(exc))
        self.scripts.promote()
        expired_n = self.scripts.expire()
        if expired_n:
            log.warning("entries.expired", queue=self.config.queue, count=expired_n)
        if self.config.dedupe_window_seconds > 0:
            cutoff = now_ms - int(self.config.dedupe_window_seconds * 1000)
            self.client.zremrangebyscore(self.keys.seen, "-inf", f"({cutoff}")
        return handled

    # -- sizing ------------------------------------------------------------------------------

    def adjust_size(self) -> sizing.Decision | None:
        """One controller step when enough new samples arrived (shared through Redis state)."""
        if not self.config.enable_adaptive_sizing:
            return None
        raw = cast(list[bytes], self.client.lrange(self.keys.samples, 0, 99))
        if not raw or raw[0] == self._last_sizing_sample:
            return None
        fresh = raw.index(self._last_sizing_sample) if self._last_sizing_sample in raw else len(raw)
        if fresh < SIZING_EVERY_SAMPLES:
            return None
        self._last_sizing_sample = raw[0]
        samples = []
        for item in raw[:50]:
            _ts, n, ms = item.decode().split(":")
            samples.append((int(n), float(ms)))
        events = cast(list[tuple[bytes, dict[bytes, bytes]]],
                      self.client.xrevrange(self.keys.events, count=200))
        flushes = [e for _id, e in events if e.get(b"type") == b"flush"][:20]
        grew = (b"size", b"pressure", b"emergency")
        ratio = (sum(1 for e in flushes if e.get(b"reason") in grew) / len(flushes)
                 if flushes else 0.0)
        state = sizing.SizingState.from_fields(
            cast(dict[bytes, bytes], self.client.hgetall(self.keys.state)),
            default_threshold=self.config.size_threshold)
        decision = sizing.next_threshold(state, sizing.SizingInput(
            samples=samples, size_triggered_ratio=ratio,
            target_ms=self.config.performance_target_ms,
            min_size=self.config.min_batch_size, max_size=self.config.max_batch_size))
        pipe = self.client.pipeline()
        pipe.hset(self.keys.state, mapping=decision.state.to_fields())  # type: ignore[arg-type]
        if decision.after != decision.before:
            pipe.xadd(self.keys.events, {
                "type": "sizing", "before": decision.before, "after": decision.after,
                "mode": decision.mode, "evidence": orjson.dumps(decision.evidence),
            }, maxlen=EVENTS_MAXLEN, approximate=True)
            pipe.hincrby(self.keys.counters, "sizing_adjustments", 1)
            log.info("sizing.adjusted", queue=self.config.queue, before=decision.before,
                     after=decision.after, mode=decision.mode, **decision.evidence)
        pipe.execute()
        return decision

    # -- the loop ----------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Loop until ``stop`` is set; a Redis outage is logged and waited out, never fatal.

        Start-up (script preload, limits) is retried the same way, so a coordinator restarted
        while Redis is down waits for it instead of exiting.
        """
        started = False

        def one_round() -> int:
            nonlocal started
            if not started:
                self.start()
                started = True
                log.info("coordinator.started", queue=self.config.queue)
            return self.step()

        # OOM, READONLY, LOADING, BUSY, MASTERDOWN, a lost connection: waited out
        Backoff("coordinator", queue=self.config.queue, client=self.client,
                state_key=self.keys.state).until_stopped(
            stop, one_round, lambda wait_ms: self.wait(wait_ms, stop))
        log.info("coordinator.stopped", queue=self.config.queue,
                 batches=self.tally.flushed_batches, entries=self.tally.flushed_entries)

    def step(self) -> int:
        now = self.clock()
        if now >= self._next_reap:
            self.reap()
            self.adjust_size()
            self._next_reap = now + self.config.reap_interval_seconds
        if self.config.enable_performance_monitoring and now >= self._next_report:
            self.report()
            self._next_report = now + self.config.report_interval_seconds
        return self.drain()

    def report(self) -> None:
        """The seed's automated performance report: one ``performance.summary`` log event."""
        from batcher.monitoring.report import log_performance_summary
        from batcher.stats import read_queue_stats

        log_performance_summary(read_queue_stats(self.client, self.config))

    def wait(self, wait_ms: int, stop: threading.Event) -> None:
        """Wait for a wake (the wakeup list), the next flush deadline or the reap, if sooner.

        BLPOP's own timeout can overshoot by up to 1/hz (~100 ms), so the last 100 ms before
        a flush deadline are waited out locally, polling the wakeup list every few ms: a wake
        there (a full batch, a freed in-flight slot) is still seen at once. A wait with no
        deadline (the in-flight cap, an empty buffer) blocks until the reap, whose timing
        needs no such precision.
        """
        until_reap = max(0.0, self._next_reap - self.clock())
        precise = 0 <= wait_ms / 1000 < until_reap
        deadline = self.clock() + (wait_ms / 1000 if precise else until_reap)
        margin = BLPOP_MARGIN_SECONDS if precise else 0.0
        while not stop.is_set():
            left = deadline - self.clock()
            if left <= 0:
                return
            if left > margin + MIN_BLPOP_SECONDS:
                block = min(left - margin, MAX_BLOCK_SECONDS)
                if self.blocking.blpop([self.keys.wakeup], timeout=block) is not None:
                    return
            elif self.client.lpop(self.keys.wakeup) is not None:
                return
            else:
                stop.wait(min(left, WAKE_POLL_SECONDS))
