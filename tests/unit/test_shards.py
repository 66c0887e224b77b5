"""Sharded queues: stable routing, the producer's split, and the queue shown as one."""

from __future__ import annotations

from typing import Any

import fakeredis
import orjson
import pytest

from batcher import BatchStateManager
from batcher.config import BatchProcessingConfig
from batcher.errors import BufferFullError, ConfigError
from batcher.exporter import metric_families
from batcher.keys import QueueKeys, shard_names, split_shard
from batcher.shards import shard_index
from batcher.stats import read_queue_stats
from tests.support.builders import make_config

# source -> shard for 2, 3, 4, 8 and 16 shards. CRC-32 of the UTF-8 bytes, modulo N: a release
# that changes one of these moves sources between shards and breaks per-source order across
# an upgrade, so this table must never change.
PINNED = {
    "feed-a": [1, 0, 1, 5, 5],
    "feed-b": [1, 0, 3, 7, 15],
    "feed-c": [1, 2, 1, 1, 9],
    "https://example.com/rss": [1, 0, 3, 3, 3],
    "wire": [1, 1, 1, 5, 5],
    "default": [1, 1, 3, 7, 15],
    "über-feed": [1, 2, 1, 1, 1],
}


@pytest.mark.parametrize("source", sorted(PINNED))
def test_a_source_routes_to_the_same_shard_in_every_release(source: str) -> None:
    assert [shard_index(source, n) for n in (2, 3, 4, 8, 16)] == PINNED[source]


def test_shard_names_carry_their_own_hash_tag() -> None:
    assert shard_names("hot", 3) == ["hot~0", "hot~1", "hot~2"]
    assert shard_names("hot", 1) == ["hot"]
    assert QueueKeys("hot~2").pending == "batcher:{hot~2}:pending"
    assert (split_shard("hot~2"), split_shard("hot"), split_shard("a~b")) == (
        ("hot", 2), ("hot", None), ("a~b", None))


def test_a_users_queue_name_cannot_be_a_shard_of_another_with_shards() -> None:
    with pytest.raises(ConfigError, match=r"BATCH_SHARDS='3': must be 1 for a shard"):
        make_config(queue="hot~1").with_overrides(shards=3)
    with pytest.raises(ValueError, match="must match"):
        QueueKeys("a~b")


def _manager(client: Any, **overrides: Any) -> BatchStateManager:
    config = make_config(queue="hot", shards=3, **overrides)
    return BatchStateManager(client, config)


def _pending(client: Any, queue: str) -> list[str]:
    return [i.decode() for i in client.zrange(QueueKeys(queue).pending, 0, -1)]


def test_a_producer_sends_each_source_to_its_shard_in_order() -> None:
    client = fakeredis.FakeRedis()
    manager = _manager(client)
    entries = [{"id": f"{src}-{i}", "source": src, "payload": {"i": i}}
               for i in range(4) for src in ("feed-a", "feed-b", "feed-c", "wire")]
    result = manager.queue_many(entries)
    assert result.accepted == 16
    # feed-a and feed-b -> shard 0, wire -> 1, feed-c -> 2 (PINNED, 3 shards)
    assert sorted(_pending(client, "hot~0")) == sorted(
        f"{s}-{i}" for s in ("feed-a", "feed-b") for i in range(4))
    assert sorted(_pending(client, "hot~1")) == [f"wire-{i}" for i in range(4)]
    assert sorted(_pending(client, "hot~2")) == [f"feed-c-{i}" for i in range(4)]
    assert client.exists(QueueKeys("hot").pending) == 0  # the queue itself holds nothing
    # queue_entry routes the same way
    manager.queue_entry({"x": 1}, "feed-c", "feed-c-9")
    assert "feed-c-9" in _pending(client, "hot~2")


def test_the_same_id_and_source_is_a_duplicate_whichever_call_sends_it() -> None:
    client = fakeredis.FakeRedis()
    manager = _manager(client)
    manager.queue_many([{"id": "x", "source": "wire", "payload": {}}])
    again = manager.queue_many([{"id": "x", "source": "wire", "payload": {}}])
    assert (again.accepted, again.duplicate_ids) == (0, ["x"])


def test_an_entry_without_a_source_routes_by_its_id() -> None:
    client = fakeredis.FakeRedis()
    manager = _manager(client)
    manager.queue_many([{"id": "default", "payload": {}}, {"id": "wire", "payload": {}}])
    # crc32("default") % 3 == 1 and crc32("wire") % 3 == 1 (PINNED): both ids in shard 1
    assert sorted(_pending(client, "hot~1")) == ["default", "wire"]


def test_a_full_shard_rejects_its_entries_and_the_others_still_take_theirs() -> None:
    client = fakeredis.FakeRedis()
    manager = _manager(client, max_buffer_size=2)
    entries = [{"id": f"w{i}", "source": "wire", "payload": {}} for i in range(3)]
    entries += [{"id": "c0", "source": "feed-c", "payload": {}}]
    with pytest.raises(BufferFullError) as caught:
        manager.queue_many(entries)
    result = caught.value.result
    assert (result.accepted, result.rejected_ids) == (3, ["w2"])
    assert "shard 'hot~1'" in str(caught.value)
    assert _pending(client, "hot~2") == ["c0"]


def _stats_fixture() -> tuple[fakeredis.FakeRedis, BatchProcessingConfig]:
    client = fakeredis.FakeRedis()
    manager = _manager(client)
    manager.queue_many([{"id": f"{s}-{i}", "source": s, "payload": {}}
                        for i in range(5) for s in ("feed-a", "wire", "feed-c")])
    return client, make_config(queue="hot", shards=3)


def test_stats_show_a_sharded_queue_as_one_with_each_shard_under_shards() -> None:
    client, config = _stats_fixture()
    stats = read_queue_stats(client, config, check_workers=False)
    assert stats.queue == "hot"
    assert (stats.buffer.pending, stats.counters.accepted) == (15, 15)
    assert stats.buffer.capacity == 3 * config.max_buffer_size
    # the queue is as full as its fullest shard (5 of max_buffer_size each here); the count
    # ratio is the whole queue's
    assert stats.buffer.utilization == round(5 / config.max_buffer_size, 4)
    assert stats.buffer.utilization_count == round(15 / (3 * config.max_buffer_size), 4)
    assert stats.shards is not None
    assert [(s["queue"], s["pending"], s["accepted"]) for s in stats.shards] == [
        ("hot~0", 5, 5), ("hot~1", 5, 5), ("hot~2", 5, 5)]
    # each shard sizes its own batches: the queue shows their mean, each shard its own
    for queue, threshold in (("hot~0", 10), ("hot~1", 12), ("hot~2", 17)):
        client.hset(QueueKeys(queue).state, "size_threshold", threshold)
    stats = read_queue_stats(client, config, check_workers=False)
    assert stats.sizing.size_threshold == 13
    assert stats.shards is not None
    assert [s["size_threshold"] for s in stats.shards] == [10, 12, 17]
    as_json = orjson.loads(orjson.dumps(stats.to_dict()))
    assert [s["queue"] for s in as_json["shards"]] == ["hot~0", "hot~1", "hot~2"]
    # without BATCH_SHARDS, stats find the shards on the server by themselves
    found = read_queue_stats(client, make_config(queue="hot"), check_workers=False)
    assert found.shards == stats.shards and found.buffer.pending == 15


def test_an_unsharded_queue_has_no_shards_key_in_its_json() -> None:
    client = fakeredis.FakeRedis()
    BatchStateManager(client, make_config(queue="plain")).queue_many(
        [{"id": "a", "source": "s", "payload": {}}])
    stats = read_queue_stats(client, make_config(queue="plain"), check_workers=False)
    assert stats.shards is None and "shards" not in stats.to_dict()


def test_the_exporter_sums_the_shards_and_labels_each() -> None:
    client, config = _stats_fixture()
    families = {m.name: m for m in metric_families(
        read_queue_stats(client, config, check_workers=False))}
    shard_pending = {s.labels["shard"]: s.value
                     for s in families["batcher_shard_pending"].samples}
    assert shard_pending == {"hot~0": 5, "hot~1": 5, "hot~2": 5}
    assert [s.value for s in families["batcher_buffer_pending_entries"].samples] == [15]


def test_pause_and_resume_act_on_every_shard_of_a_sharded_queue() -> None:
    from batcher import control

    client, config = _stats_fixture()
    plain = make_config(queue="hot")  # no BATCH_SHARDS: the shards are found on the server
    until = control.pause(client, plain)
    assert until == control.PAUSED_FOREVER_MS
    assert [client.hget(QueueKeys(q).state, "paused_until_ms") for q in shard_names("hot", 3)
            ] == [str(until).encode()] * 3
    assert control.paused_until_ms(client, plain) == until
    # the queue itself holds no counters, so it is still read as its shards
    assert client.exists(QueueKeys("hot").counters) == 0
    control.resume(client, config)
    assert control.paused_until_ms(client, plain) == 0
    assert [client.llen(QueueKeys(q).wakeup) for q in shard_names("hot", 3)] == [1, 1, 1]


def test_top_shows_a_sharded_queue_with_a_table_of_its_shards() -> None:
    import io

    from rich.console import Console

    from batcher.top import render_top

    client, config = _stats_fixture()
    console = Console(file=io.StringIO(), width=120, color_system=None, record=True)
    console.print(render_top(read_queue_stats(client, config, check_workers=False)))
    frame = console.export_text()
    rows = [line for line in frame.splitlines() if line.lstrip("│ ").startswith("hot~")]
    assert [row.split()[1] for row in rows] == ["hot~0", "hot~1", "hot~2"], frame
