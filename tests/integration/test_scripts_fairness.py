"""Fair share inside a priority class (issue 17): flush.lua fills a batch across sources."""

from __future__ import annotations

import collections

import pytest
import redis as redis_py

from batcher.errors import SourceFullError
from batcher.fairness import list_weights, set_weight, source_group
from batcher.producer import BatchStateManager
from batcher.scripts import Scripts
from tests.support.builders import T0, batch_entries, entry, make_config, make_scripts, read_batch
from tests.support.invariants import assert_consistent

BATCH = 10


def _scripts(redis: redis_py.Redis, **overrides: object) -> Scripts:
    return make_scripts(redis, size_threshold=BATCH, min_batch_size=BATCH,
                        max_batch_size=BATCH, max_buffer_size=100_000, **overrides)


def _enqueue(s: Scripts, source: str, n: int, priority: int = 0, at_ms: int = T0) -> None:
    items = [entry(f"{source}-{i}", priority, source=source) for i in range(n)]
    for start in range(0, n, 500):
        s.enqueue(items[start:start + 500], now_ms=at_ms)


def _sources_of(redis: redis_py.Redis, s: Scripts, batch_id: str) -> list[str]:
    return [eid.rsplit("-", 1)[0] for eid in batch_entries(read_batch(redis, s, batch_id))]


def test_small_sources_are_not_held_behind_a_flood(redis: redis_py.Redis) -> None:
    s = _scripts(redis)
    _enqueue(s, "wire", 1_000, at_ms=T0)
    for k in range(10):
        _enqueue(s, f"feed{k}", 5, at_ms=T0 + 1 + k)  # all of them after the flood
    done_at: dict[str, int] = {}
    for b in range(1, 16):
        decision = s.flush(f"b{b}", now_ms=T0 + 100)
        assert decision.batch is not None and decision.batch.size == BATCH
        for source in _sources_of(redis, s, f"b{b}"):
            done_at[source] = b  # the last batch that held one of its entries
    small = {f"feed{k}" for k in range(10)}
    # 50 small entries at 10/11 of each 10-entry batch: all out by the 6th batch
    assert max(done_at[f] for f in small) <= 6
    assert_consistent(redis, s.keys)


def test_weights_set_each_sources_share(redis: redis_py.Redis) -> None:
    s = _scripts(redis)
    set_weight(redis, s.keys.weights, "big", 3)
    _enqueue(s, "big", 400, at_ms=T0)
    _enqueue(s, "small", 400, at_ms=T0 + 1)
    shares: collections.Counter[str] = collections.Counter()
    for b in range(20):
        s.flush(f"b{b}", now_ms=T0 + 100)
        shares.update(_sources_of(redis, s, f"b{b}"))
    assert shares == {"big": 150, "small": 50}
    assert list_weights(redis, s.keys.weights) == {"big": 3.0}
    assert_consistent(redis, s.keys)


def test_priority_comes_before_fair_share(redis: redis_py.Redis) -> None:
    s = _scripts(redis)
    _enqueue(s, "calm", 5, priority=0, at_ms=T0)
    _enqueue(s, "loud", 30, priority=2, at_ms=T0 + 1)
    for b in range(3):
        s.flush(f"b{b}", now_ms=T0 + 100)
        assert set(_sources_of(redis, s, f"b{b}")) == {"loud"}
    assert_consistent(redis, s.keys)


def test_an_overdue_entry_is_never_held_back_for_fairness(redis: redis_py.Redis) -> None:
    s = _scripts(redis, time_threshold_seconds=60, high_time_threshold_seconds=60,
                 urgent_time_threshold_seconds=60, max_buffer_age_seconds=3600)
    _enqueue(s, "wire", 30, at_ms=T0)  # overdue at T0 + 60 s
    for k in range(10):
        _enqueue(s, f"feed{k}", 3, at_ms=T0 + 50_000)
    decision = s.flush("b1", now_ms=T0 + 60_000)
    assert decision.batch is not None
    assert _sources_of(redis, s, "b1") == ["wire"] * BATCH
    assert_consistent(redis, s.keys)


def test_a_source_joining_late_is_served_at_once(redis: redis_py.Redis) -> None:
    s = _scripts(redis)
    _enqueue(s, "wire", 200, at_ms=T0)
    for b in range(5):
        s.flush(f"a{b}", now_ms=T0 + 100)
    _enqueue(s, "late", 2, at_ms=T0 + 200)
    s.flush("b", now_ms=T0 + 300)
    assert collections.Counter(_sources_of(redis, s, "b")) == {"wire": 8, "late": 2}
    assert_consistent(redis, s.keys)


def test_the_per_source_cap_rejects_only_that_source(redis: redis_py.Redis) -> None:
    manager = BatchStateManager(redis, make_config(max_pending_per_source=3))
    manager.queue_many([{"id": f"a{i}", "source": "a", "payload": {}} for i in range(3)])
    with pytest.raises(SourceFullError) as caught:
        manager.queue_many([{"id": "a3", "source": "a", "payload": {}},
                            {"id": "b0", "source": "b", "payload": {}}])
    assert caught.value.result.rejected_ids == ["a3"]
    assert caught.value.result.source_capped_ids == ["a3"]
    assert caught.value.result.accepted == 1
    assert set(redis.zrange(manager.keys.pending, 0, -1)) == {b"a0", b"a1", b"a2", b"b0"}
    assert_consistent(redis, manager.keys)


def test_a_source_name_json_would_escape_gets_a_digest_group(redis: redis_py.Redis) -> None:
    odd = 'feed "quoted"\n'
    assert source_group(odd).startswith("h-") and source_group("plain-feed") == "plain-feed"
    manager = BatchStateManager(redis, make_config())
    manager.queue_many([{"id": "x", "source": odd, "payload": {}}])
    assert redis.lrange(manager.keys.source_list(0, source_group(odd)), 0, -1) == [b"x"]
    assert_consistent(redis, manager.keys)
