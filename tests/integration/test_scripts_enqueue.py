"""enqueue.lua through ``Scripts.enqueue``, on fakeredis and on a real redis-server."""

from __future__ import annotations

import redis as redis_py

from batcher.records import BatchRecord
from batcher.scripts import Scripts
from tests.support.builders import (
    AWKWARD_PAYLOADS,
    T0,
    entry,
    envelope,
    make_scripts,
    members,
    score,
    stat,
    state_int,
)
from tests.support.invariants import assert_consistent


def _to_delayed(client: redis_py.Redis, s: Scripts, entry_id: str, now_ms: int) -> None:
    """Flush, claim and partially fail ``entry_id`` so that it backs off in delayed."""
    decision = s.flush("b-delay", manual=True, now_ms=now_ms)
    assert decision.batch is not None
    assert isinstance(s.claim("b-delay", 1, now_ms=now_ms), BatchRecord)
    s.ack("b-delay", 1, processing_ms=1, started_ms=now_ms, results={},
          failed={entry_id: ("boom", 60_000)}, now_ms=now_ms)


def test_enqueue_accepts_entries_with_priority_scores(redis: redis_py.Redis) -> None:
    s = make_scripts(redis)
    items = [entry("n", 0), entry("h", 1), entry("u", 2)]
    result = s.enqueue(items, now_ms=T0)
    assert (result.accepted, result.duplicate_ids, result.rejected_ids) == (3, [], [])
    assert redis.zscore(s.keys.pending, "n") == score(0, T0)
    assert redis.zscore(s.keys.pending, "h") == score(1, T0)
    assert redis.zscore(s.keys.pending, "u") == score(2, T0)
    assert members(redis, s.keys.pending) == ["u", "h", "n"]
    assert redis.hget(s.keys.payloads, "h") == envelope("h", 1)
    assert state_int(redis, s, "bytes") == sum(len(env) for _, _, env in items)
    assert stat(redis, s, "accepted") == 3
    assert redis.zscore(s.keys.seen, "u") == float(T0)
    assert_consistent(redis, s.keys)


def test_enqueue_stores_awkward_envelopes_byte_identical(redis: redis_py.Redis) -> None:
    s = make_scripts(redis)
    items = [entry(name, 0, payload) for name, payload in AWKWARD_PAYLOADS.items()]
    assert s.enqueue(items, now_ms=T0).accepted == len(items)
    for entry_id, _prio, env in items:
        assert redis.hget(s.keys.payloads, entry_id) == env
    assert_consistent(redis, s.keys)


def test_enqueue_accepts_url_ids_with_spaces(redis: redis_py.Redis) -> None:
    s = make_scripts(redis)
    entry_id = "https://example.com/feed?item=1 2&x=ü"
    assert s.enqueue([entry(entry_id)], now_ms=T0).accepted == 1
    assert redis.hget(s.keys.payloads, entry_id) == envelope(entry_id)
    assert_consistent(redis, s.keys)


def test_enqueue_pending_id_is_a_duplicate(redis: redis_py.Redis) -> None:
    s = make_scripts(redis)
    first = s.enqueue([entry("a"), entry("a")], now_ms=T0)
    second = s.enqueue([entry("a", 2), entry("b")], now_ms=T0 + 5)
    assert (first.accepted, first.duplicate_ids) == (1, ["a"])
    assert (second.accepted, second.duplicate_ids) == (1, ["a"])
    # the duplicate changed nothing: first score and envelope kept
    assert redis.zscore(s.keys.pending, "a") == score(0, T0)
    assert redis.hget(s.keys.payloads, "a") == envelope("a", 0)
    assert stat(redis, s, "duplicates") == 2
    assert_consistent(redis, s.keys)


def test_enqueue_seen_window_dedupes_an_in_flight_id(redis: redis_py.Redis) -> None:
    s = make_scripts(redis, dedupe_window_seconds=10)
    s.enqueue([entry("a")], now_ms=T0)
    assert s.flush("b1", manual=True, now_ms=T0).batch is not None
    assert s.enqueue([entry("a")], now_ms=T0 + 10_000).duplicate_ids == ["a"]
    # once the window has passed, the same id is new again
    assert s.enqueue([entry("a")], now_ms=T0 + 10_001).accepted == 1
    assert stat(redis, s, "accepted") == 2
    assert_consistent(redis, s.keys)


def test_enqueue_window_zero_dedupes_only_pending_and_delayed_ids(
    redis: redis_py.Redis,
) -> None:
    s = make_scripts(redis, dedupe_window_seconds=0)
    s.enqueue([entry("a"), entry("b")], now_ms=T0)
    _to_delayed(redis, s, "a", T0)  # a backs off in delayed, b is acked
    assert redis.zcard(s.keys.seen) == 0
    result = s.enqueue([entry("a"), entry("b")], now_ms=T0 + 1)
    assert (result.accepted, result.duplicate_ids) == (1, ["a"])
    assert s.enqueue([entry("b")], now_ms=T0 + 2).duplicate_ids == ["b"]
    assert_consistent(redis, s.keys)


def test_enqueue_seen_set_is_capped_oldest_first(redis: redis_py.Redis) -> None:
    s = make_scripts(redis, dedupe_max_ids=2)
    for i, entry_id in enumerate(["a", "b", "c"]):
        s.enqueue([entry(entry_id)], now_ms=T0 + i)
    assert members(redis, s.keys.seen) == ["b", "c"]


def test_full_buffer_rejects_by_count_without_partial_writes(redis: redis_py.Redis) -> None:
    s = make_scripts(redis, max_buffer_size=3, size_threshold=3, max_batch_size=3)
    result = s.enqueue([entry(f"e{i}") for i in range(5)], now_ms=T0)
    assert (result.accepted, result.rejected_ids) == (3, ["e3", "e4"])
    for rejected in ("e3", "e4"):
        assert redis.zscore(s.keys.pending, rejected) is None
        assert redis.hget(s.keys.payloads, rejected) is None
        assert redis.zscore(s.keys.seen, rejected) is None
    assert stat(redis, s, "rejected") == 2
    assert stat(redis, s, "accepted") == 3
    assert_consistent(redis, s.keys)


def test_full_buffer_rejects_by_bytes_and_still_takes_what_fits(redis: redis_py.Redis) -> None:
    s = make_scripts(redis, max_buffer_bytes=1024, max_batch_bytes=1024, max_entry_bytes=1024)
    big = [entry(f"big{i}", 0, {"blob": "x" * 400}) for i in range(3)]
    small = entry("small", 0, {"s": 1})
    result = s.enqueue([*big, small], now_ms=T0)
    assert result.rejected_ids == ["big2"]
    assert result.accepted == 3
    assert redis.hget(s.keys.payloads, "big2") is None
    assert state_int(redis, s, "bytes") == len(big[0][2]) * 2 + len(small[2])
    assert state_int(redis, s, "bytes") <= 1024
    assert_consistent(redis, s.keys)


def test_rejected_call_writes_nothing(redis: redis_py.Redis) -> None:
    s = make_scripts(redis, max_buffer_size=1, size_threshold=1, max_batch_size=1)
    s.enqueue([entry("a")], now_ms=T0)
    before = {k: redis.dump(k) for k in (s.keys.pending, s.keys.payloads, s.keys.state)}
    result = s.enqueue([entry("b"), entry("c")], now_ms=T0 + 1)
    assert (result.accepted, result.rejected_ids) == (0, ["b", "c"])
    assert {k: redis.dump(k) for k in before} == before
    assert_consistent(redis, s.keys)


def _plan_wake(redis: redis_py.Redis, s: Scripts, wake_ms: int) -> None:
    # what the coordinator records after its flush call returned a wait
    redis.hset(s.keys.state, "wake_ms", str(wake_ms))


def test_enqueue_wakes_the_coordinator_when_count_reaches_threshold(
    redis: redis_py.Redis,
) -> None:
    s = make_scripts(redis, size_threshold=3)
    _plan_wake(redis, s, T0 + 300_000)  # the new entries' deadlines are not earlier
    s.enqueue([entry("a"), entry("b")], now_ms=T0)
    assert redis.llen(s.keys.wakeup) == 0
    s.enqueue([entry("c")], now_ms=T0)
    assert redis.llen(s.keys.wakeup) == 1


def test_enqueue_wakes_when_a_deadline_is_earlier_than_the_planned_wake(
    redis: redis_py.Redis,
) -> None:
    s = make_scripts(redis)
    _plan_wake(redis, s, T0 + 300_000)
    s.enqueue([entry("n", 0)], now_ms=T0)
    assert redis.llen(s.keys.wakeup) == 0
    s.enqueue([entry("u", 2)], now_ms=T0)  # urgent: due at T0 + 60 s
    assert redis.llen(s.keys.wakeup) == 1
    s.enqueue([entry("u2", 2)], now_ms=T0)
    assert redis.llen(s.keys.wakeup) == 1, "at most one token"


def test_enqueue_wakes_an_idle_coordinator(redis: redis_py.Redis) -> None:
    s = make_scripts(redis)
    s.enqueue([entry("a")], now_ms=T0)  # no planned wake recorded: the coordinator sleeps
    assert redis.llen(s.keys.wakeup) == 1
