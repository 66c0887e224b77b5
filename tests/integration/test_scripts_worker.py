"""claim / ack / fail / redispatch: a batch's life after flush, on fakeredis and real Redis."""

from __future__ import annotations

import orjson
import redis as redis_py

from batcher.records import AckResult, BatchRecord, Redispatch
from batcher.scripts import Scripts
from tests.support.builders import (
    AWKWARD_PAYLOADS,
    T0,
    batch_entries,
    dead_record,
    entry,
    envelope,
    events,
    make_scripts,
    read_batch,
    score,
    stat,
    state_int,
)
from tests.support.invariants import assert_consistent

LEASE_MS = (180 + 5) * 1000  # job_timeout_seconds + lease_grace_seconds of make_config


def _flushed(s: Scripts, ids: list[str], batch_id: str = "b1", now_ms: int = T0) -> None:
    s.enqueue([entry(i) for i in ids], now_ms=now_ms)
    decision = s.flush(batch_id, manual=True, now_ms=now_ms)
    assert decision.batch is not None and decision.batch.size == len(ids)


def _claimed(s: Scripts, ids: list[str], batch_id: str = "b1", now_ms: int = T0) -> None:
    _flushed(s, ids, batch_id, now_ms)
    assert isinstance(s.claim(batch_id, 1, now_ms=now_ms), BatchRecord)


def _ack(s: Scripts, batch_id: str, attempt: int, now_ms: int, **kw: object) -> AckResult:
    results = kw.pop("results", {})
    failed = kw.pop("failed", None)
    return s.ack(batch_id, attempt, processing_ms=120, started_ms=now_ms - 120,
                 results=results, failed=failed, now_ms=now_ms)  # type: ignore[arg-type]


# -- claim -----------------------------------------------------------------------------


def test_claim_returns_the_record_and_leases_it_to_the_worker(redis: redis_py.Redis) -> None:
    s = make_scripts(redis)
    _flushed(s, ["a", "b"])
    record = s.claim("b1", 1, now_ms=T0 + 50)
    assert isinstance(record, BatchRecord)
    assert (record.status, record.claimed_ms) == ("claimed", T0 + 50)
    assert set(batch_entries(record)) == {"a", "b"}
    assert batch_entries(record)["a"] == (int(score(0, T0)), 0, envelope("a"))
    assert redis.zscore(s.keys.inflight, "b1") == float(T0 + 50 + LEASE_MS)
    assert_consistent(redis, s.keys)


def test_claim_refuses_a_stale_attempt_and_a_second_claim(redis: redis_py.Redis) -> None:
    s = make_scripts(redis)
    _flushed(s, ["a"])
    assert s.claim("b1", 2, now_ms=T0) == "stale"
    assert isinstance(s.claim("b1", 1, now_ms=T0), BatchRecord)
    assert s.claim("b1", 1, now_ms=T0) == "stale"
    assert stat(redis, s, "stale_claims") == 2
    assert_consistent(redis, s.keys)


def test_a_claimants_retry_of_its_own_claim_gets_the_record_back_unchanged(
    redis: redis_py.Redis,
) -> None:
    # the worker's first claim ran but its reply was lost: the retry carries the same token
    s = make_scripts(redis)
    _flushed(s, ["a", "b"])
    first = s.claim("b1", 1, now_ms=T0 + 50, claimant="w1")
    again = s.claim("b1", 1, now_ms=T0 + 900, claimant="w1")
    assert isinstance(first, BatchRecord) and again == first
    assert again.claimed_ms == T0 + 50  # the lease is the first claim's
    assert redis.zscore(s.keys.inflight, "b1") == float(T0 + 50 + LEASE_MS)
    assert stat(redis, s, "stale_claims") == 0
    assert _ack(s, "b1", 1, T0 + 1_000).acked == 2
    assert s.claim("b1", 1, now_ms=T0 + 1_100, claimant="w1") == "gone"
    assert_consistent(redis, s.keys)


def test_a_claimed_batch_is_refused_to_another_claimant_and_to_a_claim_without_one(
    redis: redis_py.Redis,
) -> None:
    s = make_scripts(redis)
    _flushed(s, ["a"])
    assert isinstance(s.claim("b1", 1, now_ms=T0, claimant="w1"), BatchRecord)
    assert s.claim("b1", 1, now_ms=T0 + 1, claimant="w2") == "stale"
    assert s.claim("b1", 1, now_ms=T0 + 2) == "stale"
    assert stat(redis, s, "stale_claims") == 2
    assert_consistent(redis, s.keys)


def test_a_claimants_token_does_not_reclaim_a_superseded_attempt(redis: redis_py.Redis) -> None:
    s = make_scripts(redis)
    _flushed(s, ["a"])
    assert isinstance(s.claim("b1", 1, now_ms=T0, claimant="w1"), BatchRecord)
    # the lease ended with the worker still holding attempt 1: the reaper redelivers
    assert s.redispatch("b1", 1, job_alive=True, now_ms=T0 + LEASE_MS).attempt == 2
    assert s.claim("b1", 1, now_ms=T0 + LEASE_MS + 1, claimant="w1") == "stale"
    assert isinstance(s.claim("b1", 2, now_ms=T0 + LEASE_MS + 2, claimant="w2"), BatchRecord)
    assert s.claim("b1", 2, now_ms=T0 + LEASE_MS + 3, claimant="w1") == "stale"
    assert stat(redis, s, "stale_claims") == 2
    assert_consistent(redis, s.keys)


def test_claim_of_a_gone_batch_says_gone(redis: redis_py.Redis) -> None:
    s = make_scripts(redis)
    assert s.claim("nope", 1, now_ms=T0) == "gone"
    _claimed(s, ["a"])
    _ack(s, "b1", 1, T0 + 200)
    assert s.claim("b1", 1, now_ms=T0 + 300) == "gone"


# -- ack -------------------------------------------------------------------------------


def test_ack_stores_results_with_ttl_and_retires_the_batch(redis: redis_py.Redis) -> None:
    s = make_scripts(redis, result_ttl_seconds=600)
    _claimed(s, ["a", "b", "c"])
    results = {"a": orjson.dumps({"ok": [1, {}]}), "b": b'"fine"'}
    outcome = _ack(s, "b1", 1, T0 + 1_000, results=results)
    assert outcome == AckResult(True, 3, 0, 0)
    assert redis.get(s.keys.result("a")) == results["a"]
    assert redis.get(s.keys.result("b")) == b'"fine"'
    assert redis.get(s.keys.result("c")) is None
    assert 590 <= redis.ttl(s.keys.result("a")) <= 600
    assert redis.exists(s.keys.batch("b1")) == 0
    assert redis.zscore(s.keys.inflight, "b1") is None
    assert stat(redis, s, "acked") == 3
    assert stat(redis, s, "batches_processed") == 1
    assert stat(redis, s, "processing_ms_sum") == 120
    assert stat(redis, s, "queue_wait_ms_sum") == 3 * (1_000 - 120)
    assert stat(redis, s, "end_to_end_ms_sum") == 3 * 1_000
    assert redis.hgetall(s.keys.hist("processing_ms")) == {b"250": b"1"}
    assert redis.hgetall(s.keys.hist("queue_wait_ms")) == {b"1000": b"3"}
    assert redis.hgetall(s.keys.hist("end_to_end_ms")) == {b"1000": b"3"}
    assert redis.lrange(s.keys.samples, 0, -1) == [f"{T0 + 1_000}:3:120".encode()]
    assert redis.hget(s.keys.throughput, str((T0 + 1_000) // 1000)) == b"3"
    assert events(redis, s, "ack")[-1]["n"] == "3"
    assert_consistent(redis, s.keys)


def test_ack_keeps_no_results_when_result_ttl_is_zero(redis: redis_py.Redis) -> None:
    s = make_scripts(redis, result_ttl_seconds=0)
    _claimed(s, ["a"])
    assert _ack(s, "b1", 1, T0 + 10, results={"a": b"1"}).ok
    assert redis.exists(s.keys.result("a")) == 0
    assert stat(redis, s, "acked") == 1
    assert_consistent(redis, s.keys)


def test_second_ack_is_a_stale_no_op(redis: redis_py.Redis) -> None:
    s = make_scripts(redis)
    _claimed(s, ["a", "b"])
    assert _ack(s, "b1", 1, T0 + 10).ok
    assert _ack(s, "b1", 1, T0 + 20) == AckResult(False)
    assert stat(redis, s, "acked") == 2
    assert stat(redis, s, "batches_processed") == 1
    assert stat(redis, s, "stale_acks") == 1
    assert_consistent(redis, s.keys)


def test_ack_of_an_unclaimed_batch_is_stale(redis: redis_py.Redis) -> None:
    s = make_scripts(redis)
    _flushed(s, ["a"])
    assert not _ack(s, "b1", 1, T0 + 10).ok
    assert read_batch(redis, s, "b1")[b"status"] == b"dispatched"
    assert_consistent(redis, s.keys)


def test_ack_wakes_the_coordinator_when_inflight_was_at_the_cap(redis: redis_py.Redis) -> None:
    s = make_scripts(redis, max_inflight_batches=1)
    _claimed(s, ["a"])
    redis.delete(s.keys.wakeup)
    assert _ack(s, "b1", 1, T0 + 10).ok
    assert redis.llen(s.keys.wakeup) == 1


def test_a_capped_coordinator_is_woken_once_at_the_low_water_mark(
    redis: redis_py.Redis,
) -> None:
    # cap 8: the coordinator refills when a quarter of the slots (2) are free, in one burst,
    # not after every ack
    s = make_scripts(redis, max_inflight_batches=8)
    for i in range(8):
        _claimed(s, [f"e{i}"], f"b{i}")
    s.enqueue([entry("waiting")], now_ms=T0)
    assert s.flush("b-next", now_ms=T0).wait_ms == -1  # held at the cap until woken
    redis.delete(s.keys.wakeup)
    woken = []
    for i in range(8):
        assert _ack(s, f"b{i}", 1, T0 + 10).ok
        woken.append(redis.llen(s.keys.wakeup))
        redis.delete(s.keys.wakeup)
    assert woken == [0, 1, 0, 0, 0, 0, 0, 0]


def test_throughput_window_forgets_old_seconds(redis: redis_py.Redis) -> None:
    s = make_scripts(redis)
    _claimed(s, ["a"], "b1")
    _ack(s, "b1", 1, T0 + 10)
    later = T0 + 800_000  # 800 s on: the first second is outside the ~700 s window
    _claimed(s, ["b"], "b2", now_ms=later)
    _ack(s, "b2", 1, later + 10)
    _claimed(s, ["c"], "b3", now_ms=later + 2_000)
    _ack(s, "b3", 1, later + 2_010)
    assert redis.hget(s.keys.throughput, str((T0 + 10) // 1000)) is None
    assert redis.hget(s.keys.throughput, str((later + 10) // 1000)) == b"1"


def test_partial_failure_sends_failed_ids_to_delayed(redis: redis_py.Redis) -> None:
    s = make_scripts(redis, max_attempts=3)
    _claimed(s, ["a", "b"])
    outcome = _ack(s, "b1", 1, T0 + 100, results={"a": b"1", "b": b"2"},
                   failed={"b": ("flaky", 5_000)})
    assert outcome == AckResult(True, 1, 1, 0)
    assert redis.get(s.keys.result("b")) is None
    assert redis.zscore(s.keys.delayed, "b") == float(T0 + 100 + 5_000)
    assert redis.hget(s.keys.delayed_score, "b") == str(int(score(0, T0))).encode()
    assert redis.hget(s.keys.attempts, "b") == b"1"
    assert redis.hget(s.keys.payloads, "b") == envelope("b")
    assert state_int(redis, s, "bytes") == 0  # delayed bytes return with promote
    assert stat(redis, s, "retried_entries") == 1
    assert_consistent(redis, s.keys)


def test_partial_failure_counts_attempts_across_batches_until_dead(
    redis: redis_py.Redis,
) -> None:
    s = make_scripts(redis, max_attempts=3)
    s.enqueue([entry("x", 0, AWKWARD_PAYLOADS["marker"])], now_ms=T0)
    now = T0
    for attempt_no in (1, 2, 3):
        batch_id = f"b{attempt_no}"
        assert s.flush(batch_id, manual=True, now_ms=now).batch is not None
        record = s.claim(batch_id, 1, now_ms=now)
        assert isinstance(record, BatchRecord)
        assert batch_entries(record)["x"][1] == attempt_no - 1  # prior attempts
        outcome = _ack(s, batch_id, 1, now + 10, failed={"x": ("still failing", 1_000)})
        now += 2_000
        s.promote(now_ms=now)
        assert_consistent(redis, s.keys)
    assert outcome == AckResult(True, 0, 0, 1)
    dead = orjson.loads(dead_record(redis, s, "x"))
    assert (dead["reason"], dead["error"], dead["attempts"]) == ("failed", "still failing", 3)
    assert dead["score"] == score(0, T0)
    assert redis.hget(s.keys.attempts, "x") is None
    assert stat(redis, s, "dead") == 1


def test_partial_failure_at_max_attempts_dead_letters(redis: redis_py.Redis) -> None:
    s = make_scripts(redis, max_attempts=1)
    _claimed(s, ["a", "b"])
    assert _ack(s, "b1", 1, T0 + 10, failed={"a": ("bad input", 1_000)}) == AckResult(
        True, 1, 0, 1
    )
    assert redis.zscore(s.keys.dead, "a") == float(T0 + 10)
    assert redis.hget(s.keys.payloads, "a") is None
    assert_consistent(redis, s.keys)


# -- fail ------------------------------------------------------------------------------


def test_fail_schedules_a_retry_after_the_backoff(redis: redis_py.Redis) -> None:
    s = make_scripts(redis, max_attempts=3)
    _claimed(s, ["a", "b"])
    assert s.fail("b1", 1, "timeout", backoff_ms=2_000, now_ms=T0 + 100) == "retrying"
    record = read_batch(redis, s, "b1")
    assert (record[b"status"], record[b"last_error"]) == (b"retrying", b"timeout")
    assert redis.zscore(s.keys.inflight, "b1") == float(T0 + 100 + 2_000)
    assert stat(redis, s, "batches_failed") == 1
    assert events(redis, s, "failure")[-1]["outcome"] == "retrying"
    assert_consistent(redis, s.keys)


def test_fail_at_max_attempts_dead_letters_with_the_error(redis: redis_py.Redis) -> None:
    s = make_scripts(redis, max_attempts=2)
    _claimed(s, ["a", "b"])
    assert s.fail("b1", 1, "first", backoff_ms=1_000, now_ms=T0 + 10) == "retrying"
    assert s.redispatch("b1", 1, job_alive=False, now_ms=T0 + 1_010) == Redispatch("retry", 2, 0)
    assert isinstance(s.claim("b1", 2, now_ms=T0 + 1_020), BatchRecord)
    error = 'boom: "quoted" ,"envelope": ü'
    assert s.fail("b1", 2, error, backoff_ms=1_000, now_ms=T0 + 1_030) == "dead"
    for entry_id in ("a", "b"):
        dead = orjson.loads(dead_record(redis, s, entry_id))
        assert (dead["reason"], dead["error"], dead["attempts"]) == ("failed", error, 2)
        assert orjson.dumps(dead["envelope"]) == envelope(entry_id)
    assert redis.exists(s.keys.batch("b1")) == 0
    assert redis.zscore(s.keys.inflight, "b1") is None
    assert stat(redis, s, "dead") == 2
    assert stat(redis, s, "retries") == 1
    assert_consistent(redis, s.keys)


def test_a_batch_dead_lettered_at_the_low_water_mark_wakes_the_coordinator(
    redis: redis_py.Redis,
) -> None:
    # cap 4: low water at 3; a batch that leaves flight dead counts like an ack
    s = make_scripts(redis, max_attempts=1, max_inflight_batches=4)
    for i in range(4):
        _claimed(s, [f"e{i}"], f"b{i}")
    redis.delete(s.keys.wakeup)
    assert s.fail("b0", 1, "boom", backoff_ms=1, now_ms=T0 + 10) == "dead"
    assert redis.llen(s.keys.wakeup) == 1
    redis.delete(s.keys.wakeup)
    assert s.fail("b1", 1, "boom", backoff_ms=1, now_ms=T0 + 10) == "dead"
    assert redis.llen(s.keys.wakeup) == 0
    assert_consistent(redis, s.keys)


def test_fail_after_ack_or_with_a_stale_attempt_is_a_no_op(redis: redis_py.Redis) -> None:
    s = make_scripts(redis)
    _claimed(s, ["a"])
    assert s.fail("b1", 2, "x", backoff_ms=1, now_ms=T0) == "stale"
    _ack(s, "b1", 1, T0 + 10)
    assert s.fail("b1", 1, "x", backoff_ms=1, now_ms=T0 + 20) == "stale"
    assert stat(redis, s, "stale_fails") == 2
    assert stat(redis, s, "batches_failed") == 0
    assert_consistent(redis, s.keys)


def test_rate_limited_fail_pauses_the_queue_and_counts_no_attempt(
    redis: redis_py.Redis,
) -> None:
    s = make_scripts(redis, max_attempts=1, size_threshold=1)
    _claimed(s, ["a"])
    until = T0 + 60_000
    outcome = s.fail("b1", 1, "429", backoff_ms=0, rate_limited_until_ms=until, now_ms=T0 + 10)
    assert outcome == "rate_limited"
    assert state_int(redis, s, "paused_until_ms") == until
    assert redis.zscore(s.keys.inflight, "b1") == float(until)
    assert stat(redis, s, "rate_limited") == 1
    s.enqueue([entry("later")], now_ms=T0 + 20)
    assert s.flush("b2", now_ms=T0 + 30).wait_ms == until - (T0 + 30)
    assert s.redispatch("b1", 1, job_alive=False, now_ms=until).outcome == "retry"
    assert isinstance(s.claim("b1", 2, now_ms=until), BatchRecord)
    # max_attempts=1 and one ordinary failure: only now is an attempt counted
    assert s.fail("b1", 2, "real error", backoff_ms=1, now_ms=until + 10) == "dead"
    assert orjson.loads(dead_record(redis, s, "a"))["attempts"] == 1
    assert_consistent(redis, s.keys)


# -- redispatch ------------------------------------------------------------------------


def test_redispatch_extends_the_lease_of_a_dispatched_batch_whose_job_lives(
    redis: redis_py.Redis,
) -> None:
    s = make_scripts(redis)
    _flushed(s, ["a"])
    assert s.redispatch("b1", 1, job_alive=True, now_ms=T0 + 29_999).outcome == "stale"
    outcome = s.redispatch("b1", 1, job_alive=True, now_ms=T0 + 30_000)
    assert outcome == Redispatch("extended", 1, 0)
    assert redis.zscore(s.keys.inflight, "b1") == float(T0 + 60_000)
    assert read_batch(redis, s, "b1")[b"attempt"] == b"1"
    assert_consistent(redis, s.keys)


def test_redispatch_of_a_lost_dispatch_counts_no_handler_call(redis: redis_py.Redis) -> None:
    s = make_scripts(redis, max_attempts=1)
    s.enqueue([entry("u", 2)], now_ms=T0)
    assert s.flush("b1", manual=True, now_ms=T0).batch is not None
    assert s.redispatch("b1", 1, job_alive=False, now_ms=T0 + 30_000) == Redispatch("lost", 2, 2)
    record = read_batch(redis, s, "b1")
    assert (record[b"status"], record[b"attempt"], record[b"free"]) == (b"dispatched", b"2", b"1")
    assert stat(redis, s, "lost_dispatches") == 1
    assert events(redis, s, "lost")[-1]["attempt"] == "2"
    assert s.claim("b1", 1, now_ms=T0 + 30_001) == "stale"
    assert isinstance(s.claim("b1", 2, now_ms=T0 + 30_001), BatchRecord)
    assert s.fail("b1", 2, "e", backoff_ms=1, now_ms=T0 + 30_002) == "dead"
    assert orjson.loads(dead_record(redis, s, "u"))["attempts"] == 1
    assert_consistent(redis, s.keys)


def test_redispatch_of_a_claimed_batch_redelivers(redis: redis_py.Redis) -> None:
    s = make_scripts(redis)
    _claimed(s, ["a", "b"])
    assert s.redispatch("b1", 1, job_alive=True, now_ms=T0 + LEASE_MS - 1).outcome == "stale"
    outcome = s.redispatch("b1", 1, job_alive=True, now_ms=T0 + LEASE_MS)
    assert outcome == Redispatch("redelivered", 2, 0)
    assert stat(redis, s, "redeliveries") == 2
    assert stat(redis, s, "redelivered_batches") == 1
    assert _ack(s, "b1", 1, T0 + LEASE_MS + 1) == AckResult(False)  # the dead worker's ack
    assert isinstance(s.claim("b1", 2, now_ms=T0 + LEASE_MS + 2), BatchRecord)
    assert _ack(s, "b1", 2, T0 + LEASE_MS + 3).acked == 2
    assert_consistent(redis, s.keys)


def test_redispatch_of_a_retrying_batch_starts_the_next_attempt(redis: redis_py.Redis) -> None:
    s = make_scripts(redis)
    _claimed(s, ["a"])
    s.fail("b1", 1, "e", backoff_ms=4_000, now_ms=T0 + 10)
    assert s.redispatch("b1", 1, job_alive=False, now_ms=T0 + 4_009).outcome == "stale"
    assert s.redispatch("b1", 1, job_alive=False, now_ms=T0 + 4_010) == Redispatch("retry", 2, 0)
    assert read_batch(redis, s, "b1")[b"status"] == b"dispatched"
    assert redis.zscore(s.keys.inflight, "b1") == float(T0 + 4_010 + 30_000)
    assert s.redispatch("b1", 1, job_alive=False, now_ms=T0 + 99_000).outcome == "stale"
    assert_consistent(redis, s.keys)


def test_redispatch_of_a_gone_batch_is_stale(redis: redis_py.Redis) -> None:
    s = make_scripts(redis)
    assert s.redispatch("nope", 1, job_alive=False, now_ms=T0) == Redispatch("stale")


def test_fail_dead_letters_only_the_entries_out_of_attempts(redis: redis_py.Redis) -> None:
    s = make_scripts(redis, max_attempts=2)
    _claimed(s, ["old"], "b0")
    _ack(s, "b0", 1, T0 + 10, failed={"old": ("flaky", 10)})  # old: 1 attempt so far
    s.promote(now_ms=T0 + 20)
    s.enqueue([entry("new")], now_ms=T0 + 20)
    assert s.flush("b1", manual=True, now_ms=T0 + 30).batch is not None
    assert isinstance(s.claim("b1", 1, now_ms=T0 + 30), BatchRecord)
    assert s.fail("b1", 1, "down", backoff_ms=500, now_ms=T0 + 40) == "retrying"
    assert redis.zrange(s.keys.dead, 0, -1) == [b"old"]
    record = read_batch(redis, s, "b1")
    assert set(batch_entries(record)) == {"new"}
    assert record[b"n"] == b"1"
    assert_consistent(redis, s.keys)
    assert s.redispatch("b1", 1, job_alive=False, now_ms=T0 + 540).outcome == "retry"
    assert isinstance(s.claim("b1", 2, now_ms=T0 + 541), BatchRecord)
    assert _ack(s, "b1", 2, T0 + 600) == AckResult(True, 1, 0, 0)
    assert_consistent(redis, s.keys)
