"""What a handler receives and what its outcome schedules, through a real RQ worker
(``BatchSimpleWorker`` running ``process_batch``) on the real server.

The handler (``tests.support.seen_batches``) keeps every ``Batch`` it is called with, so the
tests compare the whole ``Batch`` with what the producer sent and what Redis recorded: ids,
sources, priorities, payloads, ``enqueued_ms``, the per-entry ``attempts`` after a rate-limit
pause and a failure, and the back-off a partial failure writes into the delayed set.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
import redis as redis_py
from rq.serializers import JSONSerializer

from batcher import processing as tasks
from batcher.config import BatchProcessingConfig, env_name
from batcher.coordinator import Coordinator
from batcher.errors import RateLimited
from batcher.models import Batch, BatchOutcome, Entry, FlushReason
from batcher.producer import BatchStateManager
from batcher.rq.job import BatchJob
from batcher.rq.worker import BatchSimpleWorker
from batcher.scripts import Scripts
from tests.support import seen_batches
from tests.support.invariants import assert_consistent
from tests.support.waiting import wait_until

QUEUE = "seen"
HANDLER = "tests.support.seen_batches:handle"
BACKOFF_S = 0.05  # short, so a test waits out a real back-off on Redis's clock


@pytest.fixture
def config(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[BatchProcessingConfig]:
    # the worker builds its settings from the environment, as in a worker process
    env = {"BATCH_REDIS_URL": redis_url, "BATCH_QUEUE": QUEUE, "BATCH_HANDLER": HANDLER,
           env_name("retry_backoff_seconds"): str(BACKOFF_S)}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    tasks._CONTEXTS.clear()
    seen_batches.reset()
    yield BatchProcessingConfig(queue=QUEUE, redis_url=redis_url, log_format="json",
                                handler=HANDLER, retry_backoff_seconds=BACKOFF_S)
    tasks._CONTEXTS.clear()
    seen_batches.reset()


def _redis_ms(client: redis_py.Redis) -> int:
    sec, usec = client.time()
    return int(sec) * 1000 + int(usec) // 1000


def _work(client: redis_py.Redis, config: BatchProcessingConfig) -> None:
    """Run every queued batch job through a real RQ worker, in this process."""
    worker = BatchSimpleWorker(config.keys.rq_queues_by_urgency(), connection=client,
                               serializer=JSONSerializer, job_class=BatchJob)
    assert worker.work(burst=True, logging_level="WARNING")


def _flush(client: redis_py.Redis, config: BatchProcessingConfig) -> str:
    coordinator = Coordinator(client, config)
    coordinator.start()
    coordinator.drain(manual=True)
    (key,) = client.scan_iter(match=f"{config.keys.base}:batch:*")
    return bytes(key).decode().rsplit(":", 1)[1]


def _reap_when_due(client: redis_py.Redis, config: BatchProcessingConfig, batch_id: str) -> None:
    """Wait on Redis's clock for the batch's lease (or back-off) to end; reap it once."""
    lease_ms = client.zscore(config.keys.inflight, batch_id)
    assert lease_ms is not None
    wait_until(lambda: _redis_ms(client) > lease_ms, "the lease to end")
    assert Coordinator(client, config).reap() == 1


def _stat(client: redis_py.Redis, config: BatchProcessingConfig, name: str) -> int:
    return int(client.hget(config.keys.stats, name) or 0)


PAYLOADS: dict[str, Any] = {
    # a big integer, non-ASCII text, an empty list and nested values survive as sent
    "low": {"n": 2**60, "text": "é ✓ 日本", "empty": [], "nested": {"x": [1, 2.5, None]}},
    "mid": {},
    "high": {"title": "breaking", "tags": ["a", "b"]},
}


def test_the_handler_gets_each_entry_as_the_producer_sent_it(
    real_redis: redis_py.Redis, config: BatchProcessingConfig
) -> None:
    producer = BatchStateManager(real_redis, config)
    k = config.keys
    before_low = _redis_ms(real_redis)
    producer.queue_many([{"id": "low", "source": "feed-a", "priority": 0,
                          "payload": PAYLOADS["low"], "batch_key": "tenant-7"}])
    after_low = _redis_ms(real_redis)
    producer.queue_many([
        {"id": "mid", "source": "feed-a", "priority": 1, "payload": PAYLOADS["mid"],
         "batch_key": "tenant-7"},
        {"id": "high", "source": "feed-b", "priority": 2, "payload": PAYLOADS["high"],
         "batch_key": "tenant-7"},
    ])
    after_rest = _redis_ms(real_redis)
    # enqueued_ms is the producer's enqueue time on Redis's clock, not the priority score
    scores = {i: int(real_redis.zscore(k.pending, i) or 0) for i in PAYLOADS}
    enqueued = {i: s % 10**13 for i, s in scores.items()}
    assert before_low <= enqueued["low"] <= after_low <= enqueued["mid"] <= after_rest
    assert enqueued["mid"] == enqueued["high"]  # one call, one clock
    batch_id = _flush(real_redis, config)
    created_ms = int(real_redis.hget(k.batch(batch_id), "created_ms") or 0)

    _work(real_redis, config)

    def entry(eid: str, source: str, priority: int) -> Entry:
        return Entry(id=eid, source=source, priority=priority, enqueued_ms=enqueued[eid],
                     attempts=0, payload=PAYLOADS[eid])

    assert seen_batches.SEEN == [Batch(
        queue=QUEUE, id=batch_id, attempt=1, reason=FlushReason.MANUAL,
        created_ms=created_ms, key="tenant-7",
        # best priority first
        entries=[entry("high", "feed-b", 2), entry("mid", "feed-a", 1),
                 entry("low", "feed-a", 0)])]
    assert created_ms >= after_rest
    assert real_redis.get(k.result("low")) == (
        b'{"n":1152921504606846976,"text":"\xc3\xa9 \xe2\x9c\x93 \xe6\x97\xa5\xe6\x9c\xac",'
        b'"empty":[],"nested":{"x":[1,2.5,null]}}')
    assert _stat(real_redis, config, "acked") == 3
    assert_consistent(real_redis, k)


def _fail_on_a_known_clock(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Give every ``Scripts.fail`` call Redis's time read just before (fail.lua's ``now_ms``
    argument), so a lease it sets can be compared with its clock exactly; the times, in order."""
    times: list[int] = []
    fail = Scripts.fail

    def fail_now(self: Scripts, *args: Any, **kw: Any) -> Any:
        kw["now_ms"] = _redis_ms(self.client)
        times.append(kw["now_ms"])
        return fail(self, *args, **kw)

    monkeypatch.setattr(Scripts, "fail", fail_now)
    return times


def test_entry_attempts_count_handler_calls_and_not_a_rate_limited_pause(
    real_redis: redis_py.Redis, config: BatchProcessingConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    # call 1 is rate limited (no attempt spent), call 2 raises (one spent), call 3 answers
    seen_batches.reset(RateLimited(0.001), ValueError("flaky"))
    monkeypatch.setattr(tasks.random, "uniform", lambda a, b: b)  # the jitter's top: x 1.5
    failed_at = _fail_on_a_known_clock(monkeypatch)
    BatchStateManager(real_redis, config).queue_many(
        [{"id": f"e{i}", "source": "t", "payload": {"i": i}} for i in range(2)])
    batch_id = _flush(real_redis, config)

    _work(real_redis, config)
    _reap_when_due(real_redis, config, batch_id)  # after the pause: attempt 2
    _work(real_redis, config)
    # attempt 2 is the first counted call: its back-off is 50 ms x 2^0 x 1.5, not doubled
    assert real_redis.zscore(config.keys.inflight, batch_id) == failed_at[-1] + 75
    _reap_when_due(real_redis, config, batch_id)  # after the back-off: attempt 3
    _work(real_redis, config)

    seen = seen_batches.SEEN
    assert [b.attempt for b in seen] == [1, 2, 3]
    assert [[e.attempts for e in b.entries] for b in seen] == [[0, 0], [0, 0], [1, 1]]
    # otherwise the same batch every time
    first = seen[0]
    assert seen[2] == dataclasses.replace(
        first, attempt=3, entries=[dataclasses.replace(e, attempts=1) for e in first.entries])
    assert real_redis.get(config.keys.result("e1")) == b'{"i":1}'
    assert (_stat(real_redis, config, "acked"), _stat(real_redis, config, "rate_limited"),
            _stat(real_redis, config, "batches_failed")) == (2, 1, 1)
    assert_consistent(real_redis, config.keys)


def test_a_partial_failure_delays_the_failed_entry_by_the_back_off_of_its_attempt(
    real_redis: redis_py.Redis, config: BatchProcessingConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tasks.random, "uniform", lambda a, b: b)  # the jitter's top: x 1.5
    seen_batches.reset(BatchOutcome(results={"a": {"ok": 1}}, failed={"b": "flaky"}),
                       BatchOutcome(failed={"b": "flaky again"}))
    k = config.keys
    BatchStateManager(real_redis, config).queue_many(
        [{"id": i, "source": "t", "payload": {}} for i in ("a", "b")])
    _flush(real_redis, config)

    _work(real_redis, config)

    # the ack's own clock (last_ack_ms) + 50 ms x 2^0 x 1.5
    acked_at = _stat(real_redis, config, "last_ack_ms")
    assert real_redis.zscore(k.delayed, "b") == acked_at + 75
    assert real_redis.hget(k.attempts, "b") == b"1"
    assert real_redis.get(k.result("a")) == b'{"ok":1}'

    wait_until(lambda: _redis_ms(real_redis) > acked_at + 75, "b's back-off to end")
    assert Coordinator(real_redis, config).reap() == 0  # promotes b; no lease to reap
    _flush(real_redis, config)
    _work(real_redis, config)

    assert [[(e.id, e.attempts) for e in b.entries] for b in seen_batches.SEEN] == [
        [("a", 0), ("b", 0)], [("b", 1)]]
    # the second call doubles the back-off: 50 ms x 2^1 x 1.5
    assert real_redis.zscore(k.delayed, "b") == _stat(real_redis, config, "last_ack_ms") + 150
    assert real_redis.hget(k.attempts, "b") == b"2"
    assert (_stat(real_redis, config, "acked"), _stat(real_redis, config, "retried_entries")
            ) == (1, 2)
    assert_consistent(real_redis, k)
