"""``batcher pause`` / ``resume`` (batcher.control) against the real redis-server: a paused
queue does not flush what is due, a resumed one does, and the coordinator is woken."""

from __future__ import annotations

import pytest
import redis as redis_py
from click.testing import CliRunner, Result

from batcher import control
from batcher.cli import cli
from batcher.config import load_config
from batcher.keys import QueueKeys
from batcher.monitoring.reads import discover_queues
from batcher.scripts import Scripts
from tests.support.builders import envelope

QUEUE = "ctl"
KEYS = QueueKeys(QUEUE)


pytestmark = pytest.mark.usefixtures("json_logs")


def run(url: str, *args: str) -> Result:
    return CliRunner().invoke(cli, [*args, "--queue", QUEUE, "--redis-url", url],
                              catch_exceptions=False)


def _scripts(url: str) -> Scripts:
    # threshold 1: every entry is due at once, so only a pause can hold it back
    config = load_config(queue=QUEUE, redis_url=url, size_threshold=1, min_batch_size=1)
    return Scripts(redis_py.Redis.from_url(url), config)


def test_pause_holds_due_entries_and_resume_lets_them_flush(
    redis_url: str, real_redis: redis_py.Redis
) -> None:
    s = _scripts(redis_url)
    paused = run(redis_url, "pause")
    assert (paused.exit_code, paused.stdout) == (0, "paused queue=ctl until resumed\n")
    s.enqueue([("e1", 0, envelope("e1"))])
    decision = s.flush("b1")
    assert decision.batch is None and decision.wait_ms > 10**9
    assert real_redis.zcard(KEYS.pending) == 1

    real_redis.delete(KEYS.wakeup)
    resumed = run(redis_url, "resume")
    assert (resumed.exit_code, resumed.stdout) == (0, "resumed queue=ctl\n")
    assert real_redis.lrange(KEYS.wakeup, 0, -1) == [b"1"]  # the coordinator wakes at once
    assert real_redis.hget(KEYS.state, "paused_until_ms") is None
    flushed = s.flush("b2")
    assert flushed.batch is not None and flushed.batch.size == 1
    kinds = [f[b"type"] for _id, f in real_redis.xrange(KEYS.events)]
    assert kinds[:1] == [b"pause"] and b"resume" in kinds


def test_pause_for_seconds_ends_by_itself(redis_url: str, real_redis: redis_py.Redis) -> None:
    config = load_config(queue=QUEUE, redis_url=redis_url)
    until = control.pause(real_redis, config, seconds=30)
    sec, usec = real_redis.time()
    now_ms = int(sec) * 1000 + int(usec) // 1000
    assert now_ms + 29_000 < until <= now_ms + 30_000
    assert control.paused_until_ms(real_redis, config) == until


def test_flush_now_ignores_a_pause(redis_url: str, real_redis: redis_py.Redis) -> None:
    config = load_config(queue=QUEUE, redis_url=redis_url)
    s = _scripts(redis_url)
    s.enqueue([(f"e{i}", 0, envelope(f"e{i}")) for i in range(3)])
    control.pause(real_redis, config)
    done = control.flush_now(real_redis, config)
    assert (done.entries, done.still_pending) == (3, 0)
    assert real_redis.zcard(KEYS.inflight) == done.batches == 1


def test_discover_queues_lists_every_queue_with_state(
    redis_url: str, real_redis: redis_py.Redis
) -> None:
    for name in ("b-queue", "a_queue"):
        control.pause(real_redis, load_config(queue=name, redis_url=redis_url))
    real_redis.set("batcher:{not a queue}:state", "x")
    assert discover_queues(real_redis) == ["a_queue", "b-queue"]
