"""promote / expire / requeue, plus the NOSCRIPT and pipeline paths of the wrappers."""

from __future__ import annotations

import orjson
import redis as redis_py

from batcher.records import BatchRecord
from batcher.scripts import Scripts, lua_source, server_supports_flags
from tests.support.builders import (
    AWKWARD_PAYLOADS,
    T0,
    dead_record,
    entry,
    envelope,
    events,
    make_scripts,
    pending_ids,
    score,
    stat,
    state_int,
)
from tests.support.invariants import assert_consistent

MAX_AGE_MS = 3_600_000  # max_buffer_age_seconds of make_config


def _delay(s: Scripts, ids: list[str], backoffs_ms: list[int], now_ms: int = T0) -> None:
    """Enqueue ``ids``, flush, claim and fail each one with its own back-off."""
    s.enqueue([entry(i) for i in ids], now_ms=now_ms)
    assert s.flush("bd", manual=True, now_ms=now_ms).batch is not None
    assert isinstance(s.claim("bd", 1, now_ms=now_ms), BatchRecord)
    failed = {i: ("retry me", b) for i, b in zip(ids, backoffs_ms, strict=True)}
    result = s.ack("bd", 1, processing_ms=1, started_ms=now_ms, results={}, failed=failed,
                   now_ms=now_ms)
    assert result.delayed == len(ids)


def _dead_by_failure(s: Scripts, items: list[tuple[str, int, bytes]], error: str) -> None:
    """Enqueue ``items`` and fail their batch for good (make_scripts(max_attempts=1))."""
    s.enqueue(items, now_ms=T0)
    assert s.flush("bx", manual=True, now_ms=T0).batch is not None
    assert isinstance(s.claim("bx", 1, now_ms=T0), BatchRecord)
    assert s.fail("bx", 1, error, backoff_ms=1, now_ms=T0 + 1) == "dead"


# -- promote ---------------------------------------------------------------------------


def test_promote_returns_due_entries_with_their_original_score_and_bytes(
    redis: redis_py.Redis,
) -> None:
    s = make_scripts(redis)
    _delay(s, ["a", "b"], [1_000, 9_000])
    assert state_int(redis, s, "bytes") == 0
    assert s.promote(now_ms=T0 + 999) == 0
    assert s.promote(now_ms=T0 + 1_000) == 1
    assert redis.zscore(s.keys.pending, "a") == score(0, T0)
    assert state_int(redis, s, "bytes") == len(envelope("a"))
    assert redis.hget(s.keys.attempts, "a") == b"1"  # kept for the next batch
    assert redis.zrange(s.keys.delayed, 0, -1) == [b"b"]
    assert_consistent(redis, s.keys)


def test_promote_moves_at_most_limit_entries(redis: redis_py.Redis) -> None:
    s = make_scripts(redis)
    _delay(s, ["a", "b", "c"], [10, 10, 10])
    assert s.promote(limit=2, now_ms=T0 + 10) == 2
    assert s.promote(limit=2, now_ms=T0 + 10) == 1
    assert set(pending_ids(redis, s)) == {"a", "b", "c"}
    assert_consistent(redis, s.keys)


# -- expire ----------------------------------------------------------------------------


def test_expire_dead_letters_pending_entries_past_max_age(redis: redis_py.Redis) -> None:
    s = make_scripts(redis)
    s.enqueue([entry("old-n", 0), entry("old-u", 2)], now_ms=T0)
    s.enqueue([entry("young", 0)], now_ms=T0 + 1)
    assert s.expire(now_ms=T0 + MAX_AGE_MS - 1) == 0
    assert s.expire(now_ms=T0 + MAX_AGE_MS) == 2
    assert pending_ids(redis, s) == ["young"]
    for entry_id, prio in (("old-n", 0), ("old-u", 2)):
        dead = orjson.loads(dead_record(redis, s, entry_id))
        assert (dead["reason"], dead["attempts"]) == ("expired", 0)
        assert dead["score"] == score(prio, T0)
        assert orjson.dumps(dead["envelope"]) == envelope(entry_id, prio)
    assert redis.zscore(s.keys.dead, "old-n") == float(T0 + MAX_AGE_MS)
    assert stat(redis, s, "expired") == 2
    assert stat(redis, s, "dead") == 2
    assert events(redis, s, "expired")[-1]["n"] == "2"
    assert state_int(redis, s, "bytes") == len(envelope("young"))
    assert_consistent(redis, s.keys)


def test_expire_keeps_the_prior_attempts_of_a_retried_entry(redis: redis_py.Redis) -> None:
    s = make_scripts(redis)
    _delay(s, ["a"], [10])
    s.promote(now_ms=T0 + 10)
    assert s.expire(now_ms=T0 + MAX_AGE_MS) == 1
    assert orjson.loads(dead_record(redis, s, "a"))["attempts"] == 1
    assert redis.hget(s.keys.attempts, "a") is None
    assert_consistent(redis, s.keys)


# -- requeue and purge -----------------------------------------------------------------


def test_requeue_returns_dead_entries_byte_identical_with_their_score(
    redis: redis_py.Redis,
) -> None:
    s = make_scripts(redis, max_attempts=1)
    items = [entry(name, 1, payload) for name, payload in AWKWARD_PAYLOADS.items()]
    _dead_by_failure(s, items, 'upstream said ,"envelope": "no"')
    ids = [entry_id for entry_id, _p, _e in items]
    assert s.requeue([*ids, "never-dead"]) == (len(ids), 0, 1)
    for entry_id, _prio, env in items:
        assert redis.hget(s.keys.payloads, entry_id) == env
        assert redis.zscore(s.keys.pending, entry_id) == score(1, T0)
    assert redis.zcard(s.keys.dead) == 0
    assert stat(redis, s, "requeued") == len(ids)
    assert events(redis, s, "requeue")[-1]["moved"] == str(len(ids))
    assert_consistent(redis, s.keys)
    # and once more through flush and claim: still the producer's bytes
    assert s.flush("b2", manual=True, now_ms=T0 + 5).batch is not None
    record = s.claim("b2", 1, now_ms=T0 + 5)
    assert isinstance(record, BatchRecord)
    for entry_id, _prio, env in items:
        assert record.envelopes[entry_id] == env


def test_requeue_of_expired_entries(redis: redis_py.Redis) -> None:
    s = make_scripts(redis)
    s.enqueue([entry("a", 2, AWKWARD_PAYLOADS["big-int"])], now_ms=T0)
    s.expire(now_ms=T0 + MAX_AGE_MS)
    assert s.requeue(["a"]) == (1, 0, 0)
    assert redis.zscore(s.keys.pending, "a") == score(2, T0)
    assert redis.hget(s.keys.payloads, "a") == envelope("a", 2, AWKWARD_PAYLOADS["big-int"])
    assert_consistent(redis, s.keys)


def test_purge_drops_dead_entries_and_counts_them(redis: redis_py.Redis) -> None:
    s = make_scripts(redis, max_attempts=1)
    _dead_by_failure(s, [entry("a"), entry("b")], "gone")
    assert s.requeue(["a", "b", "c"], purge=True) == (0, 2, 1)
    assert redis.zcard(s.keys.dead) == 0
    assert redis.hlen(s.keys.dead_payloads) == 0
    assert stat(redis, s, "purged") == 2
    assert pending_ids(redis, s) == []
    assert_consistent(redis, s.keys)


def test_requeue_purges_an_id_that_is_pending_again(redis: redis_py.Redis) -> None:
    s = make_scripts(redis, max_attempts=1, dedupe_window_seconds=0)
    _dead_by_failure(s, [entry("a")], "gone")
    s.enqueue([entry("a", 2)], now_ms=T0 + 10)  # the producer sent it again
    assert s.requeue(["a"]) == (0, 1, 0)
    assert redis.zscore(s.keys.pending, "a") == score(2, T0 + 10)
    assert redis.hget(s.keys.payloads, "a") == envelope("a", 2)
    assert_consistent(redis, s.keys)


def test_requeue_handles_more_than_one_chunk(redis: redis_py.Redis) -> None:
    s = make_scripts(redis, max_buffer_size=1000, max_batch_size=1000, size_threshold=600)
    ids = [f"e{i:04}" for i in range(600)]
    s.enqueue([entry(i) for i in ids], now_ms=T0)
    assert s.expire(now_ms=T0 + MAX_AGE_MS, limit=1000) == 600
    assert s.requeue(ids) == (600, 0, 0)
    assert redis.zcard(s.keys.pending) == 600
    assert_consistent(redis, s.keys)


# -- the wrappers' plumbing ------------------------------------------------------------


def test_scripts_still_run_after_script_flush(redis: redis_py.Redis) -> None:
    s = make_scripts(redis, size_threshold=2)
    s.preload()
    s.enqueue([entry("a")], now_ms=T0)
    redis.script_flush()  # NOSCRIPT on the next EVALSHA: enqueue loads the script, sends again
    assert s.enqueue([entry("b")], now_ms=T0 + 1).accepted == 1
    redis.script_flush()
    decision = s.flush("b1", now_ms=T0 + 2)
    assert decision.batch is not None and decision.batch.size == 2
    # claim runs its script inside MULTI/EXEC by hand: it must load the script itself too,
    # and the record read in that transaction must be the claimed one
    redis.script_flush()
    record = s.claim("b1", 1, now_ms=T0 + 3)
    assert isinstance(record, BatchRecord) and record.status == "claimed"
    assert set(record.envelopes) == {"a", "b"}
    # ack is packed by hand as well, results and all
    redis.script_flush()
    ack = s.ack("b1", 1, processing_ms=1.0, started_ms=T0 + 3,
                results={"a": b'{"ok":1}', "b": b'{"ok":2}'}, now_ms=T0 + 4)
    assert (ack.ok, ack.acked) == (True, 2)
    assert redis.get(s.keys.result("b")) == b'{"ok":2}'
    assert_consistent(redis, s.keys)


def test_flush_many_after_script_flush_pops_each_batch_once(redis: redis_py.Redis) -> None:
    # flush_many sends EVALSHA by hand: after a SCRIPT FLUSH every call answers NOSCRIPT and
    # must run again, once, under its own batch id
    s = make_scripts(redis, size_threshold=2)
    s.enqueue([entry(i) for i in "abcdef"], now_ms=T0)
    redis.script_flush()
    decisions = s.flush_many(["b1", "b2", "b3", "b4"], now_ms=T0 + 1)
    assert [d.batch.id if d.batch else None for d in decisions] == ["b1", "b2", "b3", None]
    assert all(redis.exists(s.keys.batch(b)) for b in ("b1", "b2", "b3"))
    assert redis.zcard(s.keys.pending) == 0
    assert_consistent(redis, s.keys)


def test_a_script_call_inside_a_pipeline(redis: redis_py.Redis) -> None:
    s = make_scripts(redis)
    k = s.keys
    promote = redis.register_script(lua_source("promote", flags=server_supports_flags(redis)))
    _delay(s, ["a"], [10])
    redis.script_flush()  # the pipeline must load the script itself
    with redis.pipeline() as pipe:
        pipe.hincrby(k.stats, "reaper_runs", 1)
        promote(keys=[k.pending, k.payloads, k.delayed, k.delayed_score, k.state, *k.actives(),
                      k.source_prefix],
                args=[str(T0 + 10), "100"], client=pipe)
        replies = pipe.execute()
    assert replies == [1, 1]
    assert pending_ids(redis, s) == ["a"]
    assert_consistent(redis, s.keys)
