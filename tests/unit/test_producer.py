"""Producer validation: bad input is refused with a typed error and nothing is written."""

from __future__ import annotations

import math
import uuid
from types import MappingProxyType
from typing import Any

import fakeredis
import orjson
import pytest
import redis
from hypothesis import example, given, settings
from hypothesis import strategies as st

from batcher import (
    BatchProcessingConfig,
    BatchStateManager,
    BufferFullError,
    InvalidEntryError,
    producer,
    tracing,
)
from batcher.errors import BatcherUnavailableError, RedisFullError, SourceFullError
from batcher.models import EnqueueResult, FlushReason
from batcher.producer import _is_plain_json, _non_json_path
from batcher.scripts import Scripts
from tests.support.spies import count_enqueue_calls


def make_manager(**overrides: Any) -> tuple[BatchStateManager, fakeredis.FakeRedis]:
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    config = BatchProcessingConfig(queue="unit", **overrides)
    return BatchStateManager(client, config), client


def entry(i: int | str, **kw: Any) -> dict[str, Any]:
    return {"id": f"e-{i}", "source": "s", "priority": 0, "payload": {"n": i}, **kw}


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        ({"priority": 3}, "priority must be 0"),
        ({"priority": -1}, "priority must be 0"),
        ({"priority": True}, "priority must be 0"),
        ({"priority": "1"}, "priority must be 0"),
        ({"id": ""}, "1-200 printable"),
        ({"id": "x" * 201}, "1-200 printable"),
        ({"id": "tab\there"}, "1-200 printable"),
        ({"id": 7}, "id must be a string"),
        ({"payload": "not an object"}, "payload must be a JSON object"),
        ({"payload": [1, 2]}, "payload must be a JSON object"),
        ({"payload": {"s": {1, 2}}}, r"payload\.s is not a JSON value"),
        ({"payload": {1: "int key"}}, r"payload \(key 1\) is not a JSON value"),
        ({"payload": {"x": [1, float("nan")]}}, r"payload\.x\[1\] is not a JSON value"),
        ({"payload": {"big": 2**70}}, "not JSON-serialisable"),
        ({"source": ""}, "source must be"),
    ],
)
def test_bad_entry_in_a_chunk_writes_nothing(bad: dict[str, Any], words: str) -> None:
    manager, client = make_manager()
    entries = [entry(i) for i in range(10)] + [entry("bad", **bad)]
    with pytest.raises(InvalidEntryError, match=words):
        manager.queue_many(entries)
    assert client.keys("*") == []


def test_oversize_entry_names_the_limit_and_writes_nothing() -> None:
    manager, client = make_manager(max_entry_bytes=200, max_batch_bytes=1024)
    with pytest.raises(InvalidEntryError, match="exceeds max_entry_bytes=200") as info:
        manager.queue_entry({"text": "x" * 300}, "s", "big-1")
    assert info.value.entry_id == "big-1"
    assert client.keys("*") == []


def test_queue_entry_then_duplicate_is_success() -> None:
    manager, _ = make_manager()
    first = manager.queue_entry({"title": "t"}, "rss", "uuid-1", priority=2)
    again = manager.queue_entry({"title": "t"}, "rss", "uuid-1", priority=2)
    assert (first.accepted, first.duplicate_ids) == (1, [])
    assert (again.accepted, again.duplicate_ids) == (0, ["uuid-1"])


def test_full_buffer_raises_with_the_result() -> None:
    manager, client = make_manager(max_buffer_size=5, size_threshold=5, min_batch_size=1,
                                   max_batch_size=5)
    with pytest.raises(BufferFullError) as info:
        manager.queue_many([entry(i) for i in range(8)])
    result = info.value.result
    assert result.accepted == 5
    assert result.rejected_ids == ["e-5", "e-6", "e-7"]
    assert client.zcard("batcher:{unit}:pending") == 5


def test_queue_many_sends_one_call_per_chunk_of_500() -> None:
    manager, client = make_manager(max_buffer_size=5000)
    calls = count_enqueue_calls(manager)
    result = manager.queue_many([entry(i) for i in range(1201)])
    assert result.accepted == 1201
    assert calls == [500, 500, 201]


def test_flush_callback_is_recorded_as_the_expected_handler() -> None:
    from workers.handlers import echo

    client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    config = BatchProcessingConfig(queue="unit")
    by_function = BatchStateManager(client, config, flush_callback=echo.handle)
    assert client.hget("batcher:{unit}:state", "handler") is None  # only with the first entry
    by_function.queue_entry({}, "s", "a")
    assert client.hget("batcher:{unit}:state", "handler") == b"workers.handlers.echo:handle"
    BatchStateManager(client, config, flush_callback="myapp.handlers:summarize").queue_entry(
        {}, "s", "b")
    assert client.hget("batcher:{unit}:state", "handler") == b"myapp.handlers:summarize"
    # ``handler`` is the plain name of the same thing; naming it twice is refused
    BatchStateManager(client, config, handler="myapp.handlers:classify").queue_entry({}, "s", "c")
    assert client.hget("batcher:{unit}:state", "handler") == b"myapp.handlers:classify"
    with pytest.raises(TypeError, match="not both"):
        BatchStateManager(client, config, handler="a:b", flush_callback="a:b")


# the fast check and the walk that names the problem must agree on every value
_odd_leaves = st.one_of(
    st.floats(), st.uuids(), st.datetimes(), st.decimals(allow_nan=False), st.binary(max_size=3),
    st.sampled_from([FlushReason.SIZE, frozenset({1}), object()]),
)
_json_like = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=3), _odd_leaves),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.tuples(inner, inner),
        st.dictionaries(st.one_of(st.text(max_size=2), st.integers()), inner, max_size=3)),
    max_leaves=12)


@given(value=_json_like)
@settings(max_examples=300)
@example(value=math.nan)
@example(value={"a": [1.5, -math.inf]})
@example(value={1: "int key"})
@example(value=(uuid.UUID(int=1),))
@example(value={"ok": [None, True, 2, "x", {"b": 0.5}]})
def test_the_fast_json_check_agrees_with_the_walk(value: object) -> None:
    assert _is_plain_json(value) == (_non_json_path(value) is None)


TP = "00-" + "a" * 32 + "-" + "b" * 16 + "-01"


def _envelope(client: fakeredis.FakeRedis, entry_id: str) -> dict[str, Any]:
    raw = client.hget("batcher:{unit}:payloads", entry_id)
    assert raw is not None, f"{entry_id} is not pending"
    return orjson.loads(raw)  # type: ignore[no-any-return]


def test_queue_entry_writes_the_envelope_the_seed_signature_describes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    manager, client = make_manager()
    monkeypatch.setattr(tracing, "current_traceparent", lambda: TP)
    manager.queue_entry({"n": 1}, "feed", "plain")  # priority 0, no batch key by default
    manager.queue_entry({"n": 2}, "feed", "keyed", 2, batch_key="tenant-7")
    assert _envelope(client, "plain") == {"g": "feed", "id": "plain", "source": "feed",
                                          "priority": 0, "payload": {"n": 1}, "tp": TP}
    assert _envelope(client, "keyed") == {"g": "feed", "k": "tenant-7", "id": "keyed",
                                          "source": "feed", "priority": 2, "payload": {"n": 2},
                                          "tp": TP}
    # the pending score's first digit is 3 - priority
    assert client.zscore("batcher:{unit}:pending", "plain") // 10**13 == 3
    with pytest.raises(InvalidEntryError) as refused:
        manager.queue_entry([], "feed", "bad")  # type: ignore[arg-type]
    assert (refused.value.entry_id, refused.value.index) == ("bad", 0)


def test_queue_many_fills_in_the_default_source_and_carries_key_and_trace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    manager, client = make_manager()
    monkeypatch.setattr(tracing, "current_traceparent", lambda: TP)
    manager.queue_many([{"id": "a", "payload": {}},
                        {"id": "b", "payload": {}, "batch_key": "k1", "priority": 1}])
    assert _envelope(client, "a") == {"g": "default", "id": "a", "source": "default",
                                      "priority": 0, "payload": {}, "tp": TP}
    assert _envelope(client, "b") == {"g": "default", "k": "k1", "id": "b", "source": "default",
                                      "priority": 1, "payload": {}, "tp": TP}


def test_queue_many_takes_any_mapping_and_names_the_first_entry_that_is_not_one() -> None:
    manager, client = make_manager()
    proxy = MappingProxyType({"id": "m", "payload": {"x": 1}})
    assert manager.queue_many([proxy]).accepted == 1
    assert _envelope(client, "m")["payload"] == {"x": 1}
    with pytest.raises(InvalidEntryError,
                       match="^entry 1: must be a mapping with id, source, priority and payload$"
                       ) as refused:
        manager.queue_many([entry(0), ["not", "a", "mapping"]])
    assert refused.value.index == 1
    with pytest.raises(InvalidEntryError) as refused:
        manager.queue_many([entry(0), entry(1), {"id": 7, "payload": {}}])
    assert refused.value.index == 2  # a bad field names its entry's place too


def test_get_result_is_the_stored_json_or_none() -> None:
    manager, client = make_manager()
    assert manager.get_result("missing") is None
    client.set("batcher:{unit}:result:done", b'{"summary":"ok","n":[1,2]}')
    assert manager.get_result("done") == {"summary": "ok", "n": [1, 2]}


# -- the block policy's wait, on fakeredis (its timing paths are in test_backpressure) --------


def _full_buffer(**overrides: Any) -> tuple[BatchStateManager, fakeredis.FakeRedis]:
    manager, client = make_manager(overflow_policy="block", block_timeout_seconds=60,
                                   max_buffer_size=5, **overrides)
    manager.queue_many([entry(i) for i in range(5)])
    return manager, client


def test_block_policy_resends_after_a_connection_lost_while_it_waited(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    manager, client = _full_buffer()
    slept: list[float] = []
    monkeypatch.setattr(producer.time, "sleep", slept.append)

    def blpop(keys: Any, timeout: float) -> None:
        Scripts(client, manager.config).flush("b1", manual=True)  # room made meanwhile
        raise redis.ConnectionError("lost while blocked")

    monkeypatch.setattr(client, "blpop", blpop)
    got = manager.queue_many([entry(f"late-{i}") for i in range(3)])
    assert got == EnqueueResult(3, [], [])
    assert slept == [producer.RETRY_DELAYS_SECONDS[-1]]  # one pause, then the resend


def test_block_policy_names_what_is_unconfirmed_when_redis_goes_away_while_it_waits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    manager, client = _full_buffer()
    monkeypatch.setattr(producer.time, "sleep", lambda s: None)
    monkeypatch.setattr(client, "blpop", lambda keys, timeout: None)

    enqueue, sent = manager.scripts.enqueue, []

    def first_then_unreachable(*args: Any, **kwargs: Any) -> Any:
        sent.append(args)
        if len(sent) == 1:  # the first try reaches Redis and finds the buffer full
            return enqueue(*args, **kwargs)
        raise redis.ConnectionError("gone")

    monkeypatch.setattr(manager.scripts, "enqueue", first_then_unreachable)
    with pytest.raises(BatcherUnavailableError) as info:
        manager.queue_many([entry(5), entry("x")])
    assert info.value.unconfirmed_ids == ["e-5", "e-x"]
    assert len(sent) == 2 + len(producer.RETRY_DELAYS_SECONDS)  # the try, then the resends


def test_block_policy_still_says_which_source_was_capped_after_waiting() -> None:
    manager, _ = make_manager(overflow_policy="block", block_timeout_seconds=0.05,
                              max_pending_per_source=3)
    manager.queue_many([{"id": f"a{i}", "source": "a", "payload": {}} for i in range(3)])
    # nothing frees room for source a: the wait ends at its own timeout, the cap unchanged
    with pytest.raises(SourceFullError) as refused:
        manager.queue_many([{"id": "a3", "source": "a", "payload": {}},
                            {"id": "b0", "source": "b", "payload": {}}])
    assert refused.value.result == EnqueueResult(1, [], ["a3"], ["a3"])


def _out_of_memory(*args: Any, **kwargs: Any) -> Any:
    raise redis.exceptions.OutOfMemoryError("OOM command not allowed (used memory > maxmemory)")


def test_a_full_redis_is_named_with_its_memory_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    manager, client = make_manager()
    monkeypatch.setattr(manager.scripts, "enqueue", _out_of_memory)
    memory = {"used_memory_human": "101.2M", "maxmemory_human": "100.0M"}
    monkeypatch.setattr(client, "info", lambda section: memory if section == "memory" else {})
    with pytest.raises(RedisFullError) as full:
        manager.queue_many([entry(0), entry(1)])
    assert "(used_memory=101.2M, maxmemory=100.0M)" in str(full.value)
    assert full.value.result == EnqueueResult(0, [], ["e-0", "e-1"])
    memory.clear()  # a server that does not report them: the figures say so
    with pytest.raises(RedisFullError, match=r"\(used_memory=\?, maxmemory=\?\)"):
        manager.queue_many([entry(0)])


def test_a_full_redis_whose_info_is_refused_is_named_without_figures(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    manager, _ = make_manager()  # fakeredis has no INFO: the figures are left out, not guessed
    monkeypatch.setattr(manager.scripts, "enqueue", _out_of_memory)
    with pytest.raises(RedisFullError, match=r"over its maxmemory \(maxmemory-policy noeviction\)"):
        manager.queue_many([entry(0)])


def test_an_unreachable_redis_says_so_and_how_many_entries_are_unconfirmed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    manager, _ = make_manager()
    monkeypatch.setattr(producer.time, "sleep", lambda s: None)

    def unreachable(*args: Any, **kwargs: Any) -> Any:
        raise redis.ConnectionError("gone")

    monkeypatch.setattr(manager.scripts, "enqueue", unreachable)
    with pytest.raises(BatcherUnavailableError,
                       match=r"^Redis unavailable \(connection\), 3 entries not confirmed: gone"):
        manager.queue_many([entry(i) for i in range(3)])
