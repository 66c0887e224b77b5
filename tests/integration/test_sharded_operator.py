"""Operator commands on a sharded queue act on every shard (issue 18 item 3): ``batcher dead
list / requeue / purge`` and ``batcher keys`` given the queue's own name, as ``pause``,
``flush``, ``stats`` and ``check`` already were. The id does not name its shard."""

from __future__ import annotations

import orjson
import pytest
import redis as redis_py
from click.testing import CliRunner, Result

from batcher import BatchStateManager
from batcher.cli import cli
from batcher.config import load_config
from batcher.keys import QueueKeys, shard_names
from batcher.records import BatchRecord
from batcher.scripts import Scripts
from batcher.shards import shard_index
from tests.support.invariants import assert_consistent

QUEUE, SHARDS = "sq", 3
# sources that land in three different shards (the stable CRC-32 routing)
SOURCES = {shard_index(f"feed-{i}", SHARDS): f"feed-{i}" for i in range(40)}


@pytest.fixture(autouse=True)
def _sharded(json_logs: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCH_SHARDS", str(SHARDS))


def run(url: str, *args: str) -> Result:
    return CliRunner().invoke(cli, [*args, "--queue", QUEUE, "--redis-url", url],
                              catch_exceptions=False)


def _kill_in_every_shard(url: str, client: redis_py.Redis) -> dict[str, str]:
    """Two entries per shard, flushed, claimed and failed with max_attempts=1; id -> shard."""
    assert sorted(SOURCES) == [0, 1, 2]
    config = load_config(queue=QUEUE, redis_url=url, size_threshold=1, min_batch_size=1)
    items = [{"id": f"d{shard}-{n}", "source": source, "payload": {"n": n}}
             for shard, source in sorted(SOURCES.items()) for n in range(2)]
    assert BatchStateManager(client, config).queue_many(items).accepted == 6
    assert run(url, "flush").exit_code == 0
    where = {}
    for name in shard_names(QUEUE, SHARDS):
        s = Scripts(client, load_config(queue=name, redis_url=url, max_attempts=1, shards=1))
        for raw in client.zrange(s.keys.inflight, 0, -1):
            record = s.claim(raw.decode(), 1)
            assert isinstance(record, BatchRecord)
            assert s.fail(raw.decode(), 1, "ValueError: boom", backoff_ms=0) == "dead"
            where.update({line.entry_id: name for line in record.index})
    assert sorted(set(where.values())) == shard_names(QUEUE, SHARDS)
    return where


def test_dead_list_shows_every_shards_entries_naming_the_shard(
    redis_url: str, real_redis: redis_py.Redis
) -> None:
    where = _kill_in_every_shard(redis_url, real_redis)
    listed = run(redis_url, "dead", "list")
    assert listed.exit_code == 0, listed.stderr
    assert f"dead entries of queue '{QUEUE}': 6" in listed.stdout
    assert all(f"{QUEUE}~{i}" in listed.stdout for i in range(SHARDS))
    records = orjson.loads(run(redis_url, "dead", "list", "--json").stdout)
    assert {r["id"]: r["shard"] for r in records} == where
    died = [r["died_at_ms"] for r in records]
    assert died == sorted(died)  # oldest death first, across shards
    limited = orjson.loads(run(redis_url, "dead", "list", "--json", "--limit", "4").stdout)
    assert len(limited) == 4


def test_dead_requeue_and_purge_find_each_ids_shard(
    redis_url: str, real_redis: redis_py.Redis
) -> None:
    where = _kill_in_every_shard(redis_url, real_redis)
    one = run(redis_url, "dead", "requeue", "d0-0", "d2-1", "nope")
    assert one.stdout == "requeued=2 already_pending=0 missing=1\n"
    for entry_id in ("d0-0", "d2-1"):  # back in its own shard's pending, nowhere else
        assert real_redis.zscore(QueueKeys(where[entry_id]).pending, entry_id) is not None
    purged = run(redis_url, "dead", "purge", "d1-0", "d1-0")
    assert purged.stdout == "purged=1 missing=0\n"
    rest = run(redis_url, "dead", "requeue")
    assert rest.stdout == "requeued=3 already_pending=0 missing=0\n"
    for name in shard_names(QUEUE, SHARDS):
        assert real_redis.zcard(QueueKeys(name).dead) == 0
        assert_consistent(real_redis, QueueKeys(name))
    checked = run(redis_url, "check")
    assert checked.exit_code == 0, checked.stdout


def test_keys_lists_every_shards_keys(redis_url: str, real_redis: redis_py.Redis) -> None:
    _kill_in_every_shard(redis_url, real_redis)
    result = run(redis_url, "keys")
    assert result.exit_code == 0, result.stderr
    for name in shard_names(QUEUE, SHARDS):
        assert f"batcher:{{{name}}}:dead " in result.stdout
