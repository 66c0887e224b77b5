"""pause.lua and ack's dead-at-once entries (LLM quota, auth, rejected entries), both servers."""

from __future__ import annotations

import orjson
import redis as redis_py

from batcher.records import AckResult, BatchRecord
from batcher.scripts import Scripts
from tests.support.builders import T0, dead_record, entry, events, make_scripts, stat, state_int
from tests.support.invariants import assert_consistent


def _claimed(s: Scripts, ids: list[str], batch_id: str = "b1", now_ms: int = T0) -> None:
    s.enqueue([entry(i) for i in ids], now_ms=now_ms)
    decision = s.flush(batch_id, manual=True, now_ms=now_ms)
    assert decision.batch is not None
    assert isinstance(s.claim(batch_id, 1, now_ms=now_ms), BatchRecord)


def test_pause_holds_the_queue_with_its_reason_and_counts_no_attempt(
    redis: redis_py.Redis,
) -> None:
    s = make_scripts(redis, max_attempts=1, size_threshold=1)
    _claimed(s, ["a"])
    outcome = s.pause("b1", 1, "LLM quota exhausted", "429 insufficient_quota: no money",
                      probe_ms=30_000, now_ms=T0 + 10)
    assert outcome == "paused"
    until = T0 + 10 + 30_000
    assert state_int(redis, s, "paused_until_ms") == until
    assert redis.hget(s.keys.state, "paused_reason") == b"LLM quota exhausted"
    assert redis.zscore(s.keys.inflight, "b1") == float(until)
    assert stat(redis, s, "pauses") == 1
    assert events(redis, s, "paused")[-1]["reason"] == "LLM quota exhausted"
    s.enqueue([entry("later")], now_ms=T0 + 20)
    assert s.flush("b2", now_ms=T0 + 30).wait_ms == until - (T0 + 30)
    # the probe: the same batch again at the pause's end, its attempt not spent
    assert s.redispatch("b1", 1, job_alive=False, now_ms=until).outcome == "retry"
    assert isinstance(s.claim("b1", 2, now_ms=until), BatchRecord)
    assert s.fail("b1", 2, "real error", backoff_ms=1, now_ms=until + 10) == "dead"
    assert orjson.loads(dead_record(redis, s, "a"))["attempts"] == 1
    assert_consistent(redis, s.keys)


def test_pause_of_a_stale_attempt_is_a_no_op(redis: redis_py.Redis) -> None:
    s = make_scripts(redis)
    _claimed(s, ["a"])
    assert s.pause("b1", 2, "LLM auth rejected", "401", probe_ms=1000, now_ms=T0) == "stale"
    assert redis.hget(s.keys.state, "paused_reason") is None


def test_a_rate_limit_pause_past_the_reason_clears_it(redis: redis_py.Redis) -> None:
    s = make_scripts(redis)
    _claimed(s, ["a"])
    _claimed(s, ["b"], batch_id="b2")
    s.pause("b1", 1, "LLM auth rejected", "401", probe_ms=1000, now_ms=T0)
    s.fail("b2", 1, "429", backoff_ms=0, rate_limited_until_ms=T0 + 5000, now_ms=T0 + 1)
    assert redis.hget(s.keys.state, "paused_reason") is None
    assert state_int(redis, s, "paused_until_ms") == T0 + 5000


def test_rejected_entries_go_dead_at_once_and_the_rest_are_acked(redis: redis_py.Redis) -> None:
    s = make_scripts(redis, max_attempts=5)
    _claimed(s, ["a", "b", "c"])
    outcome = s.ack("b1", 1, processing_ms=50, started_ms=T0, results={"a": b"1"},
                    failed={"b": ("LLM API rejected the request: 400 invalid_prompt", -1),
                            "c": ("omitted by the model", 1000)}, now_ms=T0 + 100)
    assert outcome == AckResult(True, 1, 1, 1)
    record = orjson.loads(dead_record(redis, s, "b"))
    assert record["reason"] == "rejected" and record["attempts"] == 1
    assert "invalid_prompt" in record["error"]
    assert stat(redis, s, "dead_rejected") == 1 and stat(redis, s, "dead") == 1
    assert redis.zscore(s.keys.delayed, "c") == T0 + 100 + 1000  # the ack's now + back-off
    assert_consistent(redis, s.keys)
