"""Batch keys (issue 17 item 2): a batch never mixes keys; size and deadline hold per key."""

from __future__ import annotations

import collections
from typing import Any

import orjson
import pytest
import redis as redis_py
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batcher.errors import InvalidEntryError
from batcher.producer import BatchStateManager, build_envelope
from batcher.records import BatchRecord
from batcher.scripts import Scripts
from tests.support.builders import T0, batch_entries, make_config, make_scripts, read_batch
from tests.support.invariants import assert_consistent

BATCH = 10


def _scripts(redis: redis_py.Redis, **overrides: Any) -> Scripts:
    return make_scripts(redis, size_threshold=BATCH, min_batch_size=BATCH, max_batch_size=BATCH,
                        max_buffer_size=10_000, **overrides)


def _enqueue(s: Scripts, prefix: str, n: int, key: str | None, at_ms: int = T0,
             source: str = "feed", priority: int = 0) -> None:
    items = [build_envelope(f"{prefix}{i}", source, priority, {"n": i}, index=i,
                            max_entry_bytes=10_000, batch_key=key) for i in range(n)]
    s.enqueue(items, now_ms=at_ms)


def _keys_in(redis: redis_py.Redis, s: Scripts, batch_id: str) -> set[str | None]:
    entries = batch_entries(read_batch(redis, s, batch_id))
    return {orjson.loads(env).get("k") for _, _, env in entries.values()}


def test_size_holds_per_key_and_a_batch_never_mixes_keys(redis: redis_py.Redis) -> None:
    s = _scripts(redis)
    _enqueue(s, "a", 6, "summarize")
    _enqueue(s, "b", 6, "classify")
    _enqueue(s, "n", 6, None)
    # 18 pending but no key (nor the keyless entries) holds 10: no size flush
    assert s.flush("b0", now_ms=T0 + 1).batch is None
    _enqueue(s, "a", 10, "summarize", at_ms=T0 + 2)  # ids a6..a9 are new
    decision = s.flush("b1", now_ms=T0 + 3)
    assert decision.batch is not None and decision.batch.key == "summarize"
    assert _keys_in(redis, s, "b1") == {"summarize"} and decision.batch.size == BATCH
    assert_consistent(redis, s.keys)


def test_batches_of_one_key_go_out_back_to_back(redis: redis_py.Redis) -> None:
    s = _scripts(redis)
    _enqueue(s, "a", 30, "a")
    _enqueue(s, "b", 28, "b")
    _enqueue(s, "n", 25, None)
    order = []
    for i in range(7):
        decision = s.flush(f"b{i}", now_ms=T0 + 1)
        assert decision.batch is not None
        order.append(decision.batch.key)
        assert _keys_in(redis, s, f"b{i}") == {decision.batch.key}
    # each group goes out until it is below the size threshold, then the next one
    runs = [k for i, k in enumerate(order) if i == 0 or order[i - 1] != k]
    assert len(runs) == len(set(runs)) == 3
    assert collections.Counter(order) == {"a": 3, "b": 2, None: 2}
    assert s.flush("b7", now_ms=T0 + 1).batch is None  # 8 + 5 left: no group holds 10
    assert_consistent(redis, s.keys)


def test_a_due_deadline_flushes_its_own_key_only(redis: redis_py.Redis) -> None:
    s = _scripts(redis, time_threshold_seconds=60, high_time_threshold_seconds=60,
                 urgent_time_threshold_seconds=60)
    _enqueue(s, "old", 3, "k1", at_ms=T0)
    _enqueue(s, "new", 4, None, at_ms=T0 + 30_000)
    _enqueue(s, "other", 4, "k2", at_ms=T0 + 30_000)
    decision = s.flush("b1", now_ms=T0 + 60_000)
    assert decision.batch is not None and decision.batch.reason == "deadline"
    assert decision.batch.key == "k1" and decision.batch.size == 3
    assert s.flush("b2", now_ms=T0 + 60_001).batch is None  # the others are not due yet
    assert_consistent(redis, s.keys)


def test_the_handler_sees_the_batch_key(redis: redis_py.Redis) -> None:
    s = _scripts(redis)
    _enqueue(s, "a", BATCH, "tenant-7")
    s.flush("b1", now_ms=T0 + 1)
    record = s.claim("b1", 1, now_ms=T0 + 2)
    assert isinstance(record, BatchRecord)
    batch = record.to_batch(s.config.queue)
    assert batch.key == "tenant-7" and len(batch) == BATCH
    _enqueue(s, "n", BATCH, None, at_ms=T0 + 3)
    s.flush("b2", now_ms=T0 + 4)
    record = s.claim("b2", 1, now_ms=T0 + 5)
    assert isinstance(record, BatchRecord) and record.to_batch(s.config.queue).key is None


def test_keyed_entries_keep_their_key_through_expire_and_requeue(redis: redis_py.Redis) -> None:
    s = _scripts(redis, max_buffer_age_seconds=3600)
    _enqueue(s, "a", 3, "k1", at_ms=T0)
    assert s.expire(now_ms=T0 + 3_600_001) == 3
    assert_consistent(redis, s.keys)
    assert s.requeue(["a0", "a1"]) == (2, 0, 0)
    assert_consistent(redis, s.keys)
    decision = s.flush("b1", manual=True, now_ms=T0 + 3_600_002)
    assert decision.batch is not None and decision.batch.key == "k1"
    assert decision.batch.size == 2
    assert_consistent(redis, s.keys)


def test_a_bad_batch_key_is_refused_before_anything_is_sent(redis: redis_py.Redis) -> None:
    manager = BatchStateManager(redis, make_config())
    with pytest.raises(InvalidEntryError, match="batch_key"):
        manager.queue_many([{"id": "x", "source": "s", "payload": {}, "batch_key": "a b"}])
    assert redis.zcard(manager.keys.pending) == 0


streams = st.lists(
    st.tuples(st.sampled_from([None, "a", "b", "c"]), st.sampled_from(["s1", "s2", "s3"]),
              st.integers(0, 2), st.integers(0, 3)),
    min_size=1, max_size=60)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stream=streams)
def test_mixed_keys_never_share_a_batch(fake_redis: redis_py.Redis,
                                        stream: list[tuple[str | None, str, int, int]]) -> None:
    fake_redis.flushdb()
    s = make_scripts(fake_redis, size_threshold=4, min_batch_size=4, max_batch_size=4,
                     max_buffer_size=10_000, time_threshold_seconds=5,
                     high_time_threshold_seconds=5, urgent_time_threshold_seconds=5)
    now, flushed, sent = T0, 0, 0
    for i, (key, source, priority, flushes) in enumerate(stream):
        now += 1_000
        s.enqueue([build_envelope(f"e{i}", source, priority, {}, index=0,
                                  max_entry_bytes=10_000, batch_key=key)], now_ms=now)
        sent += 1
        for _ in range(flushes):
            decision = s.flush(f"b{flushed}", now_ms=now)
            if decision.batch is None:
                break
            assert len(_keys_in(fake_redis, s, f"b{flushed}")) == 1
            assert _keys_in(fake_redis, s, f"b{flushed}") == {decision.batch.key}
            flushed += 1
    while (decision := s.flush(f"b{flushed}", manual=True, now_ms=now)).batch is not None:
        assert _keys_in(fake_redis, s, f"b{flushed}") == {decision.batch.key}
        flushed += 1
    assert fake_redis.zcard(s.keys.pending) == 0
    assert_consistent(fake_redis, s.keys)
