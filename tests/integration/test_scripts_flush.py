"""flush.lua through ``Scripts.flush``: when a batch is due, why, and what it holds."""

from __future__ import annotations

import math

import pytest
import redis as redis_py

from batcher.errors import BatchExistsError
from batcher.models import FlushReason
from batcher.records import BatchRecord
from batcher.scripts import Scripts
from tests.support.builders import (
    AWKWARD_PAYLOADS,
    T0,
    batch_entries,
    entry,
    events,
    make_scripts,
    pending_ids,
    read_batch,
    score,
    stat,
    state_int,
)
from tests.support.invariants import assert_consistent


def _fill(s: Scripts, ids: list[str], priority: int = 0, start_ms: int = T0) -> None:
    for i, entry_id in enumerate(ids):
        s.enqueue([entry(entry_id, priority)], now_ms=start_ms + i)


def _flushed_ids(redis: redis_py.Redis, s: Scripts, batch_id: str) -> set[str]:
    return set(batch_entries(read_batch(redis, s, batch_id)))


def _assert_reason(redis: redis_py.Redis, s: Scripts, batch_id: str, reason: str) -> None:
    assert stat(redis, s, f"flushes:{reason}") == 1
    assert read_batch(redis, s, batch_id)[b"reason"] == reason.encode()
    flush_events = events(redis, s, "flush")
    assert flush_events[-1]["reason"] == reason
    assert flush_events[-1]["batch"] == batch_id


def test_flush_of_an_empty_queue_waits_until_woken(redis: redis_py.Redis) -> None:
    s = make_scripts(redis)
    decision = s.flush("b1", now_ms=T0)
    assert (decision.batch, decision.wait_ms) == (None, -1)
    assert redis.exists(s.keys.batch("b1")) == 0


def test_flush_waits_for_the_earliest_effective_deadline(redis: redis_py.Redis) -> None:
    s = make_scripts(redis)
    s.enqueue([entry("n", 0)], now_ms=T0)  # due T0 + 300 s
    s.enqueue([entry("h", 1)], now_ms=T0 + 1_000)  # due T0 + 121 s: the earliest
    decision = s.flush("b1", now_ms=T0 + 5_000)
    assert decision.batch is None
    assert decision.wait_ms == 121_000 - 5_000
    assert state_int(redis, s, "wake_ms") == T0 + 121_000
    assert_consistent(redis, s.keys)


def test_flush_without_priority_flushing_gives_every_priority_the_normal_threshold(
    redis: redis_py.Redis,
) -> None:
    s = make_scripts(redis, enable_priority_flushing=False)
    s.enqueue([entry("u", 2)], now_ms=T0)
    assert s.flush("b1", now_ms=T0).wait_ms == 300_000


def test_flush_by_size_takes_the_threshold_best_first(redis: redis_py.Redis) -> None:
    s = make_scripts(redis, size_threshold=5)
    s.enqueue([entry("n1", 0)], now_ms=T0)
    s.enqueue([entry("u1", 2)], now_ms=T0 + 1)
    s.enqueue([entry("h1", 1)], now_ms=T0 + 2)
    s.enqueue([entry("n2", 0)], now_ms=T0 + 3)
    s.enqueue([entry("u2", 2)], now_ms=T0 + 4)
    s.enqueue([entry("n3", 0)], now_ms=T0 + 5)
    decision = s.flush("b1", now_ms=T0 + 10)
    assert decision.batch is not None
    assert decision.batch.reason is FlushReason.SIZE
    assert (decision.batch.size, decision.batch.priority, decision.batch.attempt) == (5, 2, 1)
    record = read_batch(redis, s, "b1")
    entries = batch_entries(record)
    # urgent before high before normal, FIFO within a priority; n3 (newest normal) waits
    assert sorted(entries, key=lambda i: entries[i][0]) == ["u1", "u2", "h1", "n1", "n2"]
    assert entries["h1"][0] == score(1, T0 + 2)
    assert pending_ids(redis, s) == ["n3"]
    assert record[b"status"] == b"dispatched"
    assert record[b"attempt"] == b"1"
    assert redis.zscore(s.keys.inflight, "b1") == float(T0 + 10 + 30_000)
    _assert_reason(redis, s, "b1", "size")
    assert stat(redis, s, "entries_flushed") == 5
    assert redis.llen(s.keys.room) == 1
    assert_consistent(redis, s.keys)


def test_flush_by_deadline_when_the_oldest_entry_is_due(redis: redis_py.Redis) -> None:
    s = make_scripts(redis)
    _fill(s, ["a", "b"])
    assert s.flush("b1", now_ms=T0 + 299_999).wait_ms == 1
    decision = s.flush("b1", now_ms=T0 + 300_000)
    assert decision.batch is not None
    assert decision.batch.reason is FlushReason.DEADLINE
    # the rest of the batch is filled with the best scores, overdue or not
    assert _flushed_ids(redis, s, "b1") == {"a", "b"}
    _assert_reason(redis, s, "b1", "deadline")
    assert_consistent(redis, s.keys)


def test_starving_normal_entry_beats_fresher_urgent_ones(redis: redis_py.Redis) -> None:
    s = make_scripts(redis, size_threshold=2)
    s.enqueue([entry("old-normal", 0)], now_ms=T0)
    _fill(s, ["u1", "u2", "u3"], priority=2, start_ms=T0 + 250_000)
    decision = s.flush("b1", now_ms=T0 + 300_000)
    assert decision.batch is not None and decision.batch.reason is FlushReason.SIZE
    assert _flushed_ids(redis, s, "b1") == {"old-normal", "u1"}
    assert decision.batch.priority == 2
    assert_consistent(redis, s.keys)


def test_overdue_entries_go_by_deadline_then_score(redis: redis_py.Redis) -> None:
    s = make_scripts(redis, size_threshold=2)
    s.enqueue([entry("n", 0)], now_ms=T0)  # due T0 + 300 s
    s.enqueue([entry("h", 1)], now_ms=T0 + 170_000)  # due T0 + 290 s: first
    s.enqueue([entry("u", 2)], now_ms=T0 + 240_000)  # due T0 + 300 s: ties n, better score
    s.enqueue([entry("u-fresh", 2)], now_ms=T0 + 299_000)  # not due
    decision = s.flush("b1", now_ms=T0 + 300_000)
    assert decision.batch is not None
    assert _flushed_ids(redis, s, "b1") == {"h", "u"}
    assert set(pending_ids(redis, s)) == {"n", "u-fresh"}
    assert_consistent(redis, s.keys)


def test_flush_by_pressure_when_the_buffer_passes_the_early_level(
    redis: redis_py.Redis,
) -> None:
    s = make_scripts(redis, max_buffer_size=10, size_threshold=10, max_batch_size=10)
    _fill(s, [f"e{i}" for i in range(8)])
    assert s.flush("b0", now_ms=T0 + 100).batch is None  # 80 %: below the early level
    _fill(s, ["e8"], start_ms=T0 + 50)  # 90 %
    decision = s.flush("b1", now_ms=T0 + 100)
    assert decision.batch is not None
    assert decision.batch.reason is FlushReason.PRESSURE
    assert decision.batch.size == 9
    _assert_reason(redis, s, "b1", "pressure")
    assert_consistent(redis, s.keys)


def test_flush_by_pressure_counts_bytes_too(redis: redis_py.Redis) -> None:
    s = make_scripts(redis, max_buffer_bytes=2048, max_batch_bytes=2048, max_entry_bytes=2048)
    s.enqueue([entry("big", 0, {"blob": "x" * 1800})], now_ms=T0)  # ~88 % of the bytes
    decision = s.flush("b1", now_ms=T0)
    assert decision.batch is not None and decision.batch.reason is FlushReason.PRESSURE
    assert_consistent(redis, s.keys)


def test_emergency_flush_takes_up_to_max_batch_size(redis: redis_py.Redis) -> None:
    s = make_scripts(redis, max_buffer_size=20, size_threshold=5, max_batch_size=15)
    s.enqueue([entry(f"e{i:02}") for i in range(19)], now_ms=T0)  # 95 %
    decision = s.flush("b1", now_ms=T0)
    assert decision.batch is not None
    assert decision.batch.reason is FlushReason.EMERGENCY
    assert decision.batch.size == 15
    assert len(pending_ids(redis, s)) == 4
    _assert_reason(redis, s, "b1", "emergency")
    assert_consistent(redis, s.keys)


def test_inflight_cap_blocks_flush(redis: redis_py.Redis) -> None:
    s = make_scripts(redis, size_threshold=2, max_inflight_batches=1)
    _fill(s, ["a", "b", "c", "d"])
    assert s.flush("b1", now_ms=T0 + 10).batch is not None
    decision = s.flush("b2", now_ms=T0 + 10)
    assert (decision.batch, decision.wait_ms) == (None, -1)
    assert redis.exists(s.keys.batch("b2")) == 0
    assert stat(redis, s, "flushes:size") == 1
    assert_consistent(redis, s.keys)


def test_emergency_flush_ignores_the_inflight_cap_and_a_pause(redis: redis_py.Redis) -> None:
    s = make_scripts(redis, max_buffer_size=20, size_threshold=2, max_batch_size=20,
                     max_inflight_batches=1)
    _fill(s, ["a", "b"])
    assert s.flush("b1", now_ms=T0 + 10).batch is not None
    redis.hset(s.keys.state, "paused_until_ms", str(T0 + 60_000))
    s.enqueue([entry(f"e{i:02}") for i in range(19)], now_ms=T0 + 20)
    decision = s.flush("b2", now_ms=T0 + 30)
    assert decision.batch is not None
    assert decision.batch.reason is FlushReason.EMERGENCY
    assert_consistent(redis, s.keys)


def test_pause_blocks_flush_until_it_ends(redis: redis_py.Redis) -> None:
    s = make_scripts(redis, size_threshold=2)
    redis.hset(s.keys.state, "paused_until_ms", str(T0 + 5_000))
    _fill(s, ["a", "b"])
    decision = s.flush("b1", now_ms=T0 + 1_000)
    assert (decision.batch, decision.wait_ms) == (None, 4_000)
    assert state_int(redis, s, "wake_ms") == T0 + 5_000
    later = s.flush("b1", now_ms=T0 + 5_000)
    assert later.batch is not None and later.batch.reason is FlushReason.SIZE
    assert_consistent(redis, s.keys)


def test_manual_flush_takes_a_threshold_sized_batch_now(redis: redis_py.Redis) -> None:
    s = make_scripts(redis, size_threshold=3, max_inflight_batches=1)
    _fill(s, [f"e{i}" for i in range(5)])
    first = s.flush("b1", manual=True, now_ms=T0 + 10)
    second = s.flush("b2", manual=True, now_ms=T0 + 10)  # manual ignores the cap
    assert first.batch is not None and first.batch.reason is FlushReason.MANUAL
    assert first.batch.size == 3
    assert second.batch is not None and second.batch.size == 2
    assert stat(redis, s, "flushes:manual") == 2
    assert_consistent(redis, s.keys)


def test_flush_respects_max_batch_bytes(redis: redis_py.Redis) -> None:
    s = make_scripts(redis, size_threshold=5, max_batch_bytes=1000, max_entry_bytes=1000)
    items = [entry(f"e{i}", 0, {"blob": "x" * 250}) for i in range(5)]
    for i, item in enumerate(items):
        s.enqueue([item], now_ms=T0 + i)
    size = len(items[0][2])
    assert 3 * size <= 1000 < 4 * size
    decision = s.flush("b1", now_ms=T0 + 10)
    assert decision.batch is not None and decision.batch.size == 3
    record = read_batch(redis, s, "b1")
    assert set(batch_entries(record)) == {"e0", "e1", "e2"}
    assert int(record[b"bytes"]) == 3 * size
    assert state_int(redis, s, "bytes") == 2 * size
    assert_consistent(redis, s.keys)


def test_flush_takes_one_entry_even_when_it_alone_exceeds_the_byte_cap(
    redis: redis_py.Redis,
) -> None:
    s = make_scripts(redis, max_batch_bytes=100, max_entry_bytes=100)
    # Python refuses such an entry; the script must still drain one that got in
    s.enqueue([entry("huge", 0, {"blob": "x" * 500}), entry("next")], now_ms=T0)
    decision = s.flush("b1", manual=True, now_ms=T0)
    assert decision.batch is not None and decision.batch.size == 1
    assert set(batch_entries(read_batch(redis, s, "b1"))) == {"huge"}
    assert_consistent(redis, s.keys)


def _adaptive_factor(util: float, early: float = 0.85) -> float:
    return max(0.25, 1 - 0.75 * (util - 0.5) / (early - 0.5)) if util > 0.5 else 1.0


def test_adaptive_timeout_shrinks_the_wait_as_the_buffer_fills(redis: redis_py.Redis) -> None:
    s = make_scripts(redis, enable_adaptive_timeout=True, max_buffer_size=100,
                     size_threshold=100, max_batch_size=100)
    s.enqueue([entry(f"a{i:02}") for i in range(40)], now_ms=T0)
    assert s.flush("b1", now_ms=T0).wait_ms == 300_000  # 40 %: full threshold
    s.enqueue([entry(f"b{i:02}") for i in range(30)], now_ms=T0)
    seventy = s.flush("b1", now_ms=T0).wait_ms
    assert seventy == math.floor(300_000 * _adaptive_factor(70 / 100))
    s.enqueue([entry(f"c{i:02}") for i in range(10)], now_ms=T0)
    eighty = s.flush("b1", now_ms=T0).wait_ms
    assert eighty == math.floor(300_000 * _adaptive_factor(80 / 100))
    assert 300_000 > seventy > eighty > 300_000 * 0.25
    assert_consistent(redis, s.keys)


def test_awkward_envelopes_come_back_byte_identical_through_flush_and_claim(
    redis: redis_py.Redis,
) -> None:
    s = make_scripts(redis)
    items = [entry(name, 1, payload) for name, payload in AWKWARD_PAYLOADS.items()]
    s.enqueue(items, now_ms=T0)
    assert s.flush("b1", manual=True, now_ms=T0).batch is not None
    record = s.claim("b1", 1, now_ms=T0)
    assert isinstance(record, BatchRecord)
    got = {entry_id: env for entry_id, (_s, _p, env) in batch_entries(record).items()}
    assert got == {entry_id: env for entry_id, _prio, env in items}
    assert_consistent(redis, s.keys)


def test_flush_many_pops_what_is_due_in_one_round_trip_then_waits(
    redis: redis_py.Redis,
) -> None:
    s = make_scripts(redis, size_threshold=5, min_batch_size=1)
    _fill(s, [f"e{i}" for i in range(12)])
    decisions = s.flush_many(["b1", "b2", "b3", "b4"], now_ms=T0 + 100)
    sizes = [d.batch.size if d.batch else None for d in decisions]
    assert sizes == [5, 5, None, None]  # 2 left: under the size threshold, not yet due
    assert decisions[2].wait_ms == 300_000 - 90  # e10 (enqueued at T0 + 10) falls due
    assert _flushed_ids(redis, s, "b1") == {f"e{i}" for i in range(5)}
    assert redis.exists(s.keys.batch("b3")) == 0
    assert_consistent(redis, s.keys)


def test_flush_refuses_a_batch_id_already_in_use_and_pops_nothing(
    redis: redis_py.Redis,
) -> None:
    s = make_scripts(redis, size_threshold=2)
    _fill(s, ["a", "b", "c", "d"])
    assert s.flush("b1", now_ms=T0 + 10).batch is not None
    before = read_batch(redis, s, "b1")
    with pytest.raises(BatchExistsError) as info:
        s.flush("b1", now_ms=T0 + 20)
    assert info.value.batch_id == "b1"
    assert read_batch(redis, s, "b1") == before  # the two batches were not merged
    assert pending_ids(redis, s) == ["c", "d"]
    assert_consistent(redis, s.keys)


def test_non_default_pressure_levels_are_the_ones_applied(redis: redis_py.Redis) -> None:
    # early at 60 %, emergency at 80 %: 50 % waits, 60 % is pressure, 80 % is an emergency
    s = make_scripts(redis, max_buffer_size=10, size_threshold=10, max_batch_size=10,
                     early_flush_pressure=0.6, emergency_flush_pressure=0.8)
    _fill(s, [f"e{i}" for i in range(5)])
    assert s.flush("b0", now_ms=T0 + 100).batch is None
    _fill(s, ["e5"], start_ms=T0 + 50)
    pressure = s.flush("b1", now_ms=T0 + 100).batch
    assert pressure is not None and pressure.reason is FlushReason.PRESSURE
    left = len(pending_ids(redis, s))
    _fill(s, [f"f{i}" for i in range(8 - left)], start_ms=T0 + 60)  # 8 of 10
    emergency = s.flush("b2", now_ms=T0 + 100).batch
    assert emergency is not None and emergency.reason is FlushReason.EMERGENCY
    assert_consistent(redis, s.keys)


def _handler_order(redis: redis_py.Redis, s: Scripts, batch_id: str) -> list[str]:
    record = BatchRecord.from_hash(batch_id, read_batch(redis, s, batch_id))
    assert record is not None
    return [e.id for e in record.to_batch(s.keys.queue).entries]


FEED_A = [f"item-{i}" for i in (9, 10, 2, 1, 30, 3)]  # sent in this order; ids sort otherwise
FEED_B = [f"b-{i}" for i in (5, 4)]


def _send_both_feeds_in_one_call(s: Scripts) -> None:
    # one queue_many call shares a ms: its entries tie on score, and Redis orders ties by id
    s.enqueue([entry(i, source="feed-a") for i in FEED_A[:3]]
              + [entry(i, source="feed-b") for i in FEED_B]
              + [entry(i, source="feed-a") for i in FEED_A[3:]], now_ms=T0)


def _per_source(handed: list[str]) -> tuple[list[str], list[str]]:
    return [i for i in handed if i.startswith("item")], [i for i in handed if i.startswith("b-")]


def test_a_deadline_flush_hands_over_each_sources_entries_in_the_order_sent(
    redis: redis_py.Redis,
) -> None:
    s = make_scripts(redis, size_threshold=10, min_batch_size=1, max_batch_size=10)
    _send_both_feeds_in_one_call(s)
    decision = s.flush("b1", now_ms=T0 + 300_000)
    assert decision.batch is not None and decision.batch.reason is FlushReason.DEADLINE
    assert _per_source(_handler_order(redis, s, "b1")) == (FEED_A, FEED_B)
    assert_consistent(redis, s.keys)


def test_overdue_entries_cut_by_the_batch_size_are_the_first_sent_of_each_source(
    redis: redis_py.Redis,
) -> None:
    """Overdue entries go first in any flush; when the batch cannot take them all, each
    source gives the ones it sent first, not the ids that sort first."""
    s = make_scripts(redis, size_threshold=4, min_batch_size=1, max_batch_size=4)
    _send_both_feeds_in_one_call(s)
    s.flush("b1", now_ms=T0 + 300_000)
    s.flush("b2", now_ms=T0 + 300_000)
    first, second = _handler_order(redis, s, "b1"), _handler_order(redis, s, "b2")
    assert len(first) == len(second) == 4
    a1, b1 = _per_source(first)
    assert a1 == FEED_A[:len(a1)] and b1 == FEED_B[:len(b1)]
    assert _per_source(first + second) == (FEED_A, FEED_B)
    assert_consistent(redis, s.keys)
