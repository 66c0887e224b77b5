"""The stored records read back in one place: batch record, index lines, score, dead record."""

from __future__ import annotations

import re
from importlib import resources

import orjson
import pytest

from batcher.errors import BatchExistsError, ScriptError, from_script_error
from batcher.records import (
    META_FIELDS,
    BatchRecord,
    ClaimRefused,
    DeadRecord,
    FailOutcome,
    RedispatchOutcome,
    outcome,
    score_of,
    split_score,
)


def _envelope(entry_id: str, priority: int = 0) -> bytes:
    return orjson.dumps({"g": "s", "id": entry_id, "source": "s", "priority": priority,
                         "payload": {"n": entry_id}})


def test_a_score_splits_back_into_its_priority_and_enqueue_time() -> None:
    for priority in (0, 1, 2):
        score = score_of(priority, 1_700_000_000_123)
        assert split_score(score) == (priority, 1_700_000_000_123)
        # Redis hands scores back as floats or their text
        assert split_score(float(score)) == split_score(str(score).encode())


def test_a_claimed_record_becomes_the_handlers_batch_best_score_first() -> None:
    raw = {
        b"attempt": b"3", b"status": b"claimed", b"free": b"1", b"n": b"2",
        b"reason": b"size", b"priority": b"2", b"created_ms": b"1000", b"claimed_ms": b"1500",
        b"key": b"tenant-1",
        b"ix": b"%d 0 late\n%d 2 urgent" % (score_of(0, 900), score_of(2, 950)),
        b"e:late": _envelope("late"), b"e:urgent": _envelope("urgent", 2),
    }
    record = BatchRecord.from_hash("b1", raw)
    assert (record.attempt, record.uncalled_dispatches, record.handler_calls) == (3, 1, 2)
    assert record.claimed_ms == 1500 and record.size == 2
    batch = record.to_batch("q")
    assert [e.id for e in batch.entries] == ["urgent", "late"]
    # one call before this one in this batch, plus the calls an entry brought with it
    assert [e.attempts for e in batch.entries] == [3, 1]
    assert [e.enqueued_ms for e in batch.entries] == [950, 900]
    assert (batch.attempt, batch.key, str(batch.reason), batch.priority) == (
        3, "tenant-1", "size", 2)


def test_a_meta_read_of_a_gone_batch_is_none() -> None:
    assert BatchRecord.from_meta("b1", [None] * len(META_FIELDS)) is None
    meta = BatchRecord.from_meta("b1", [b"2", b"retrying", None, b"5", b"deadline", b"0",
                                        b"10"])
    assert meta is not None and (meta.attempt, meta.status, meta.size) == (2, "retrying", 5)
    assert meta.uncalled_dispatches == 0 and meta.index == ()


def test_a_dead_record_is_read_whole_and_a_damaged_one_says_so() -> None:
    raw = (b'{"score":30000000000900,"attempts":4,"reason":"failed","error":"boom",'
           b'"envelope":{"id":"a","payload":[]}}')
    dead = DeadRecord.parse("a", 5000, raw)
    assert (dead.reason, dead.error, dead.attempts, dead.score) == ("failed", "boom", 4,
                                                                  score_of(0, 900))
    assert dead.envelope == {"id": "a", "payload": []}
    assert DeadRecord.parse("b", 5000, b"{not json").error == "(unreadable dead record)"
    assert DeadRecord.parse("c", 5000, None).reason is None


def test_the_three_scripts_that_kill_an_entry_build_its_record_with_one_text() -> None:
    pattern = re.compile(r"local function dead_record\(.*?\nend\n", re.S)
    texts = {name: pattern.findall(resources.files("batcher").joinpath(f"lua/{name}.lua")
                                   .read_text("utf-8"))
             for name in ("ack", "fail", "expire")}
    assert all(len(found) == 1 for found in texts.values()), texts
    assert len({found[0] for found in texts.values()}) == 1


def test_script_words_map_to_their_enum_and_an_unknown_word_is_an_error() -> None:
    assert outcome(ClaimRefused, b"gone") is ClaimRefused.GONE
    assert outcome(FailOutcome, "rate_limited") is FailOutcome.RATE_LIMITED
    assert RedispatchOutcome.LOST.dispatches_again
    assert not RedispatchOutcome.EXTENDED.dispatches_again
    with pytest.raises(ScriptError, match="'exploded'"):
        outcome(FailOutcome, b"exploded")


def test_a_scripts_error_code_becomes_its_typed_error_and_other_errors_pass() -> None:
    import redis

    typed = from_script_error(redis.ResponseError("BATCH_EXISTS b1"))
    assert isinstance(typed, BatchExistsError) and typed.batch_id == "b1"
    busy = redis.ResponseError("BUSY Redis is busy running a script.")
    assert from_script_error(busy) is busy
