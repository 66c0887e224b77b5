"""A sharded queue on a Redis Cluster (issue 18 item 3): its shards live on different masters,
one coordinator and one worker (the real commands) serve them all, and stats and check read
them as one queue from every master. RQ runs on the standalone test server."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from batcher import BatchStateManager
from batcher.check import check_queue
from batcher.cli import cli
from batcher.keys import QueueKeys, shard_names
from batcher.settings_file import load_settings
from batcher.stats import read_queue_stats
from tests.support.redis_cluster import RedisClusterFixture

pytestmark = [pytest.mark.timeout(240), pytest.mark.usefixtures("json_logs")]
SHARDS, SOURCES, PER_SOURCE = 3, 6, 10


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterFixture]:
    with RedisClusterFixture() as formed:
        yield formed


def _spread_queue(cluster: RedisClusterFixture) -> str:
    """A queue name whose shards' slots are on as many different masters as shards."""
    for i in range(1000):
        name = f"hot{i}"
        owners = {cluster.owner_of(QueueKeys(q).state).port for q in shard_names(name, SHARDS)}
        if len(owners) == SHARDS:
            return name
    raise AssertionError("no queue name spreads its shards over every master")


class _StopWhenFlushed(threading.Event):
    def __init__(self, cluster: RedisClusterFixture, queues: list[str]) -> None:
        super().__init__()
        self.cluster, self.queues = cluster, queues

    def is_set(self) -> bool:
        return super().is_set() or all(
            self.cluster.owner_of(QueueKeys(q).pending).client().zcard(QueueKeys(q).pending)
            == 0 for q in self.queues)


def test_a_sharded_queue_runs_with_its_shards_on_different_masters(
    cluster: RedisClusterFixture, redis_url: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = _spread_queue(cluster)
    shards = shard_names(queue, SHARDS)
    path = tmp_path / "queues.toml"
    path.write_text(f"[queues.{queue}]\nshards = {SHARDS}\nsize_threshold = 5\n"
                    "min_batch_size = 1\n")
    monkeypatch.setenv("BATCH_RQ_REDIS_URL", redis_url)  # RQ is not cluster-safe
    settings = load_settings(str(path), redis_url=cluster.url())
    config = settings.config_for(queue)
    client = config.redis_client()
    try:
        manager = BatchStateManager(client, config)
        total = SOURCES * PER_SOURCE
        result = manager.queue_many([{"id": f"s{s}-{i}", "source": f"feed-{s}", "payload": {}}
                                     for i in range(PER_SOURCE) for s in range(SOURCES)])
        assert result.accepted == total
        # each shard's keys are on the master owning its own slot
        held = {q: cluster.owner_of(QueueKeys(q).state).client().zcard(QueueKeys(q).pending)
                for q in shards}
        assert sum(held.values()) == total and all(held.values()), held

        from batcher.cli import coordinator as coordinator_cli

        stop = _StopWhenFlushed(cluster, shards)
        monkeypatch.setattr(coordinator_cli, "stop_on_signals", lambda event, **_: stop)
        args = ["--queue", queue, "--settings", str(path), "--redis-url", cluster.url()]
        ran = CliRunner().invoke(cli, ["coordinator", *args], catch_exceptions=False)
        assert ran.exit_code == 0, ran.stderr
        worked = CliRunner().invoke(cli, ["worker", "--burst", "--simple", *args],
                                    catch_exceptions=False)
        assert worked.exit_code == 0, worked.stderr

        acked = {q: int(cluster.owner_of(QueueKeys(q).state).client().hget(
            QueueKeys(q).counters, "acked") or 0) for q in shards}
        assert acked == held
        # read through the queue's own pinned client: each shard from its own master
        stats = read_queue_stats(client, config, check_workers=False)
        assert (stats.counters.accepted, stats.counters.acked) == (total, total)
        assert stats.shards is not None
        assert [(s["queue"], s["acked"]) for s in stats.shards] == [(q, held[q]) for q in shards]
        report = check_queue(client, config)
        assert report.ok, report.problems
        assert (report.facts["accepted"], report.facts["acked"]) == (total, total)
    finally:
        for each in [client, *getattr(client, "_batcher_shard_clients", {}).values()]:
            each.connection_pool.disconnect()
