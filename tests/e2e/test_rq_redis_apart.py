"""RQ on a Redis of its own (BATCH_RQ_REDIS_URL): coordinator and worker processes keep every
batcher key on BATCH_REDIS_URL and RQ's queues, jobs and registries on the other server; when
RQ's Redis is lost (kill -9, a fresh empty one on its port) the reaper dispatches again from
the batch records and nothing is lost (issue 18 item 1)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as redis_py

from batcher.config import load_config
from batcher.keys import QueueKeys
from batcher.producer import BatchStateManager
from tests.support.children import Children
from tests.support.held import HOLD_KEY
from tests.support.invariants import assert_consistent
from tests.support.redis_server import RedisServer
from tests.support.waiting import wait_until

QUEUE = "apart"
KEYS = QueueKeys(QUEUE)
ENTRIES = 120
# a run on the loaded 2-core machine: a hang guard, never a speed claim
GUARD_SECONDS = 180.0
FAST = {
    "BATCH_SIZE_THRESHOLD": "10", "BATCH_MIN_BATCH_SIZE": "1", "BATCH_MAX_BATCH_SIZE": "10",
    "BATCH_TIME_THRESHOLD_SEC": "1", "BATCH_HIGH_TIME_THRESHOLD_SEC": "1",
    "BATCH_URGENT_TIME_THRESHOLD_SEC": "1", "BATCH_ENABLE_ADAPTIVE_SIZING": "false",
    "BATCH_DISPATCH_LEASE_SEC": "2", "BATCH_REAP_INTERVAL_SEC": "0.2",
    "BATCH_JOB_TIMEOUT_SEC": "60", "BATCH_LEASE_GRACE_SEC": "1",
}


@pytest.fixture
def rq_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.close()


def _env(redis_url: str, rq_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCH_")}
    env.update(BATCH_REDIS_URL=redis_url, BATCH_RQ_REDIS_URL=rq_url, BATCH_QUEUE=QUEUE,
               BATCH_LOG_FORMAT="json", **FAST, **extra)
    return env


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[list[Children]]:
    made: list[Children] = []
    yield made
    for p in made:
        p.stop_all()


def _queue_entries(client: redis_py.Redis, redis_url: str) -> BatchStateManager:
    config = load_config(queue=QUEUE, redis_url=redis_url)
    manager = BatchStateManager(client, config)
    manager.queue_many([{"id": f"e{i}", "priority": i % 3, "payload": {"n": i}}
                        for i in range(ENTRIES)])
    return manager


def _acked(client: redis_py.Redis) -> int:
    return int(client.hget(KEYS.counters, "acked") or 0)


def _key_names(client: redis_py.Redis) -> set[str]:
    return {k.decode() for k in client.scan_iter(count=1000)}


def _assert_keys_apart(batcher: redis_py.Redis, rq: redis_py.Redis) -> None:
    batcher_keys, rq_keys = _key_names(batcher), _key_names(rq)
    assert batcher_keys and rq_keys
    assert {k for k in batcher_keys if not k.startswith("batcher:")} == set()
    assert {k for k in rq_keys if not k.startswith("rq:")} == set()


@pytest.mark.parametrize("worker_args", [("--simple",), ()], ids=["simple", "forking"])
def test_rq_on_its_own_redis_acks_everything_and_keeps_keys_apart(
    redis_url: str, real_redis: redis_py.Redis, rq_server: RedisServer,
    procs: list[Children], tmp_path: Path, worker_args: tuple[str, ...],
) -> None:
    run = Children(tmp_path, _env(redis_url, rq_server.url))
    procs.append(run)
    run.start("-m", "batcher.cli", "coordinator", name="coordinator")
    run.start("-m", "batcher.cli", "worker", *worker_args, name="worker")
    manager = _queue_entries(real_redis, redis_url)
    try:
        wait_until(lambda: _acked(real_redis) >= ENTRIES, "every entry acked", GUARD_SECONDS)
    except AssertionError:
        raise AssertionError(run.logs()) from None
    assert [manager.get_result(f"e{i}") for i in range(ENTRIES)] == [
        {"n": i} for i in range(ENTRIES)]
    assert _acked(real_redis) == ENTRIES
    rq_client = redis_py.Redis.from_url(rq_server.url)
    _assert_keys_apart(real_redis, rq_client)
    # RQ's worker registry is where RQ keeps it, not on the batcher's Redis
    assert rq_client.smembers("rq:workers") and not real_redis.exists("rq:workers")
    assert_consistent(real_redis, KEYS)
    # stats reads RQ's worker registry on RQ's Redis
    stats = subprocess.run([sys.executable, "-m", "batcher.cli", "stats", "--json"],
                           env=run.env, capture_output=True, timeout=60, text=True)
    assert stats.returncode == 0, stats.stderr
    assert [w["queues"] for w in json.loads(stats.stdout)["workers"]] == [
        KEYS.rq_queues_by_urgency()]


def test_lost_rq_redis_is_refilled_from_the_batch_records(
    redis_url: str, real_redis: redis_py.Redis, rq_server: RedisServer,
    procs: list[Children], tmp_path: Path, request: pytest.FixtureRequest,
) -> None:
    """kill -9 RQ's Redis with one batch in a worker's hands and the rest queued in RQ; a
    fresh, empty server on the same port: the reaper dispatches the lost jobs again."""
    run = Children(tmp_path, _env(redis_url, rq_server.url,
                               BATCH_HANDLER="tests.support.held:handle"))
    procs.append(run)
    rq_client = redis_py.Redis.from_url(rq_server.url, socket_timeout=5)
    real_redis.set(HOLD_KEY, 1)  # the worker's first batch waits in its handler
    run.start("-m", "batcher.cli", "coordinator", name="coordinator")
    run.start("-m", "batcher.cli", "worker", "--simple", name="worker")
    manager = _queue_entries(real_redis, redis_url)
    started = [f"rq:wip:{name}" for name in KEYS.rq_queues_by_urgency()]
    rq_lists = [f"rq:queue:{name}" for name in KEYS.rq_queues_by_urgency()]
    try:
        wait_until(lambda: real_redis.zcard(KEYS.pending) == 0
                   and sum(rq_client.zcard(k) for k in started) == 1,
                   "everything flushed, one batch in the worker's hands", GUARD_SECONDS)
    except AssertionError:
        raise AssertionError(run.logs()) from None
    queued_jobs = sum(int(rq_client.llen(k)) for k in rq_lists)
    assert queued_jobs > 0  # jobs only RQ's Redis knew about: they are lost with it

    run_id = rq_client.info("server")["run_id"]
    rq_server.kill()  # kill -9: nothing of RQ's survives (no persistence)
    rq_server.start()  # a fresh, empty server on the same port
    assert rq_client.info("server")["run_id"] != run_id
    real_redis.delete(HOLD_KEY)
    try:
        wait_until(lambda: _acked(real_redis) >= ENTRIES, "every entry acked", GUARD_SECONDS)
    except AssertionError:
        raise AssertionError(run.logs()) from None
    results = [manager.get_result(f"e{i}") for i in range(ENTRIES)]
    lost = sum(1 for r in results if r is None)
    acked = _acked(real_redis)
    redispatched = int(real_redis.hget(KEYS.counters, "lost_dispatches") or 0)
    line = (f"rq-redis-lost: accepted={ENTRIES} acked={acked} lost={lost} "
            f"rq_jobs_lost={queued_jobs} lost_dispatches={redispatched}")
    from tests.conftest import _report

    _report(request.config, line)
    assert lost == 0 and acked == ENTRIES
    assert results == [{"ok": True}] * ENTRIES
    # every job RQ's Redis lost was dispatched again from its batch record
    assert redispatched >= queued_jobs
    _assert_keys_apart(real_redis, rq_client)
    assert_consistent(real_redis, KEYS)
    # the worker, which RQ's fresh Redis never saw start, listed again (stats counts it)
    wait_until(lambda: rq_client.scard("rq:workers") == 1, "the worker registered again")
    stats = subprocess.run([sys.executable, "-m", "batcher.cli", "stats", "--json"],
                           env=run.env, capture_output=True, timeout=60, text=True)
    assert [w["queues"] for w in json.loads(stats.stdout)["workers"]] == [
        KEYS.rq_queues_by_urgency()], stats.stderr
