"""One coordinator process serving several queues, each with its own settings (issue 18).

Run through the real command line on a real redis-server; the stop event is injected (it
reads as set once every queue has flushed all it had), nothing sleeps.
"""

from __future__ import annotations

import threading
from pathlib import Path

import orjson
import pytest
import redis as redis_py
from click.testing import CliRunner
from rq import Queue

from batcher import BatchStateManager
from batcher.cli import cli
from batcher.keys import QueueKeys
from batcher.settings_file import load_settings

SETTINGS = """
[defaults]
size_threshold = 5
min_batch_size = 1

[queues.hot]
size_threshold = 10

[queues.split]
shards = 3
size_threshold = 2
"""


pytestmark = pytest.mark.usefixtures("json_logs")


class _StopWhenFlushed(threading.Event):
    """Reads as set once none of ``queues`` has anything pending."""

    def __init__(self, client: redis_py.Redis, queues: list[str]) -> None:
        super().__init__()
        self.client, self.queues = client, queues

    def is_set(self) -> bool:
        return super().is_set() or all(
            self.client.zcard(QueueKeys(q).pending) == 0 for q in self.queues)


def _batch_sizes(client: redis_py.Redis, queue: str) -> list[int]:
    keys = QueueKeys(queue)
    sizes = []
    for raw in client.scan_iter(match=keys.batch("*")):
        ix = client.hget(raw, "ix")
        sizes.append(len(ix.split(b"\n")) if ix else 0)
    return sorted(sizes)


def test_one_coordinator_flushes_every_queue_with_its_own_settings(
    redis_url: str, real_redis: redis_py.Redis, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "queues.toml"
    path.write_text(SETTINGS)
    settings = load_settings(str(path), redis_url=redis_url)
    for queue, n in (("hot", 40), ("quiet", 10), ("split", 16)):
        manager = BatchStateManager(real_redis, settings.config_for(queue))
        manager.queue_many([{"id": f"{queue}-{i}", "source": f"s{i % 4}",
                             "payload": {"i": i}} for i in range(n)])
    # split: 4 entries a source, so each shard holds a multiple of its threshold of 2
    served = ["hot", "quiet", "split~0", "split~1", "split~2"]
    stop = _StopWhenFlushed(real_redis, served)
    from batcher.cli import coordinator as coordinator_cli

    monkeypatch.setattr(coordinator_cli, "stop_on_signals", lambda event, **_: stop)
    result = CliRunner().invoke(cli, ["coordinator", "--queue", "hot", "--queue", "quiet",
                                      "--queue", "split", "--settings", str(path),
                                      "--redis-url", redis_url], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    # each queue batched by its own size threshold: hot 10, quiet the [defaults]' 5
    assert _batch_sizes(real_redis, "hot") == [10, 10, 10, 10]
    assert _batch_sizes(real_redis, "quiet") == [5, 5]
    # the sharded queue's producer spread it over its shards, all flushed, by its threshold
    split_sizes = [s for q in served[2:] for s in _batch_sizes(real_redis, q)]
    assert sum(split_sizes) == 16 and set(split_sizes) == {2}
    assert all(_batch_sizes(real_redis, q) for q in served[2:])
    # a job per batch, on each queue's own RQ queue
    jobs = {q: Queue(QueueKeys(q).rq_queue(0), connection=real_redis).count for q in served}
    assert (jobs["hot"], jobs["quiet"]) == (4, 2)
    assert sum(jobs[q] for q in served[2:]) == 8
    # every queue's loop said it stopped, naming its queue
    stopped = [orjson.loads(line) for line in result.stderr.splitlines()
               if line.startswith("{") and '"coordinator.stopped"' in line]
    assert sorted(e["queue"] for e in stopped) == sorted(served)
    # one worker serves both queues: every entry acked, on its own queue's counters
    worked = CliRunner().invoke(cli, ["worker", "--burst", "--simple", "--queue", "hot",
                                      "--queue", "quiet", "--queue", "split",
                                      "--settings", str(path),
                                      "--redis-url", redis_url], catch_exceptions=False)
    assert worked.exit_code == 0, worked.stderr
    acked = {q: int(real_redis.hget(QueueKeys(q).counters, "acked") or 0) for q in served}
    assert (acked["hot"], acked["quiet"], sum(acked[q] for q in served[2:])) == (40, 10, 16)
    # check sees the sharded queue as one: consistent, its shards summed
    checked = CliRunner().invoke(cli, ["check", "--queue", "split", "--redis-url", redis_url],
                                 catch_exceptions=False)
    assert checked.exit_code == 0, checked.output
    assert "accepted=16" in checked.output and "acked=16" in checked.output
    assert "shards=3" in checked.output
    # an entry's result is found whichever shard holds it
    found = CliRunner().invoke(cli, ["result", "split-3", "--queue", "split",
                                     "--redis-url", redis_url], catch_exceptions=False)
    assert found.exit_code == 0, found.output
    assert orjson.loads(found.output) is not None


def test_a_worker_takes_a_quiet_queues_batch_before_a_hot_queues_backlog(
    redis_url: str, real_redis: redis_py.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    from batcher import control, processing
    from batcher.config import load_config
    from tests.support.order_log import BATCHES_KEY

    monkeypatch.setenv("BATCH_HANDLER", "tests.support.order_log:handle")
    monkeypatch.setenv("BATCH_REDIS_URL", redis_url)
    # a job's settings and handler are kept per process and queue: none from an earlier test
    monkeypatch.setattr(processing, "_CONTEXTS", {})
    for queue, n in (("hot", 200), ("quiet", 5)):  # hot: 20 batches queued before quiet's
        config = load_config(queue=queue, redis_url=redis_url, size_threshold=10,
                             min_batch_size=1, max_batch_size=10)
        BatchStateManager(real_redis, config).queue_many(
            [{"id": f"{queue}-{i}", "source": "s", "payload": {"i": i}} for i in range(n)])
        control.flush_now(real_redis, config)
    worked = CliRunner().invoke(cli, ["worker", "--burst", "--simple", "--queue", "hot",
                                      "--queue", "quiet", "--redis-url", redis_url],
                                catch_exceptions=False)
    assert worked.exit_code == 0, worked.stderr
    order = [q.decode() for q in real_redis.lrange(BATCHES_KEY, 0, -1)]
    assert len(order) == 21
    # taking turns: after one batch of hot, the worker asks quiet first
    assert order.index("quiet") == 1, order


def test_a_coordinator_given_a_pattern_serves_the_queues_that_appear_later(
    redis_url: str, real_redis: redis_py.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    from batcher import multi_queue
    from batcher.cli import coordinator as coordinator_cli
    from batcher.config import load_config

    monkeypatch.setattr(multi_queue, "RESCAN_SECONDS", 0.1)
    monkeypatch.setenv("BATCH_SIZE_THRESHOLD", "5")  # the coordinator's settings, every queue
    monkeypatch.setenv("BATCH_MIN_BATCH_SIZE", "1")
    config = load_config(queue="feeds-a", redis_url=redis_url)
    BatchStateManager(real_redis, config).queue_many(
        [{"id": f"a{i}", "source": "s", "payload": {}} for i in range(5)])
    late = config.with_overrides(queue="feeds-b")

    class _AddLateThenStop(threading.Event):
        """Once feeds-a is flushed, a producer starts feeds-b; stop when it is flushed too."""

        def is_set(self) -> bool:
            if super().is_set():
                return True
            if real_redis.zcard(QueueKeys("feeds-a").pending) == 0 and not real_redis.exists(
                    QueueKeys("feeds-b").counters):
                BatchStateManager(real_redis, late).queue_many(
                    [{"id": f"b{i}", "source": "s", "payload": {}} for i in range(5)])
            return bool(real_redis.exists(QueueKeys("feeds-b").counters)) and all(
                real_redis.zcard(QueueKeys(q).pending) == 0 for q in ("feeds-a", "feeds-b"))

    stop = _AddLateThenStop()
    monkeypatch.setattr(coordinator_cli, "stop_on_signals", lambda event, **_: stop)
    result = CliRunner().invoke(cli, ["coordinator", "--queue", "feeds-*", "--queue", "x",
                                      "--redis-url", redis_url], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    assert _batch_sizes(real_redis, "feeds-a") == [5]
    assert _batch_sizes(real_redis, "feeds-b") == [5]
    assert '"coordinator.queue_found"' in result.stderr and "feeds-b" in result.stderr


def test_a_burst_worker_whose_pattern_matches_no_queue_has_nothing_to_do(
    redis_url: str, real_redis: redis_py.Redis
) -> None:
    result = CliRunner().invoke(cli, ["worker", "--burst", "--simple", "--queue", "none-*",
                                      "--redis-url", redis_url], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    assert '"worker.no_queue"' in result.stderr and "none-*" in result.stderr
    assert not real_redis.smembers("rq:workers")  # it never registered as an RQ worker
