"""ACL roles (docs/acl/users.acl): each role does its real job with its own user, and no more."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_py

from batcher.config import load_config
from batcher.demo.feed_server import SAMPLE_FEEDS_TOML, serve_feeds
from batcher.keys import QueueKeys
from batcher.llm.fake import serve_fake_llm
from batcher.producer import BatchStateManager
from tests.e2e.test_cli_processes import Batcher, _env, procs  # noqa: F401 - fixture
from tests.support.acl import AclRedisServer
from tests.support.redis_server import free_port
from tests.support.waiting import wait_until

QUEUE = "proc"
KEYS = QueueKeys(QUEUE)
FAST = {"BATCH_SIZE_THRESHOLD": "5", "BATCH_MIN_BATCH_SIZE": "1",
        "BATCH_TIME_THRESHOLD_SEC": "1", "BATCH_HIGH_TIME_THRESHOLD_SEC": "1",
        "BATCH_URGENT_TIME_THRESHOLD_SEC": "1"}


@pytest.fixture(scope="module")
def server() -> Iterator[AclRedisServer]:
    srv = AclRedisServer().start()
    try:
        yield srv
    finally:
        srv.close()


def _cli(server: AclRedisServer, role: str, *args: str, **extra: str
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "batcher.cli", *args], text=True,
                          env=_env(server.url_for(role), **FAST, **extra),
                          capture_output=True, timeout=120)


def _denied(call: Callable[[], Any]) -> bool:
    try:
        call()
    except redis_py.exceptions.NoPermissionError:
        return True
    return False


def test_each_role_does_its_job_with_its_own_user(
    server: AclRedisServer, procs: Batcher, tmp_path: Path  # noqa: F811
) -> None:
    admin = server.client()
    admin.execute_command("ACL", "LOG", "RESET")
    # producer: the CLI (one entry and a file) and the API (sources: the fair-share keys)
    one = _cli(server, "producer", "enqueue", "--id", "cli-1", '{"via": "cli"}')
    assert one.returncode == 0, one.stderr
    lines = tmp_path / "entries.jsonl"
    lines.write_text("".join(json.dumps({"id": f"file-{i}", "source": "feed-a",
                                          "payload": {"i": i}}) + "\n" for i in range(4)))
    many = _cli(server, "producer", "enqueue", "--file", str(lines))
    assert many.returncode == 0, many.stderr
    producer_config = load_config(queue=QUEUE, redis_url=server.url_for("producer"))
    manager = BatchStateManager(config=producer_config,
                                flush_callback="workers.handlers.echo:handle")
    result = manager.queue_many([{"id": f"api-{i}", "source": f"feed-{i % 3}",
                                  "priority": i % 3, "payload": {"i": i},
                                  "batch_key": "summarize" if i % 2 else None}
                                 for i in range(9)])
    assert result.accepted == 9  # with and without a batch key (issue 17's keys)
    # a fetcher is a producer too: the shared feed schedule (fetch:* keys) and enqueue
    feeds, feeds_url = serve_feeds()
    try:
        fetched = _cli(server, "producer", "fetch", "--feeds", str(SAMPLE_FEEDS_TOML),
                       "--once", "--base-url", feeds_url)
    finally:
        feeds.stop()
    assert fetched.returncode == 0, fetched.stderr
    # the operator sets a shared LLM budget; the workers below draw on it
    budget = _cli(server, "admin", "budget", "set", "llm", "--rpm", "6000", "--itpm", "1e7",
                  "--otpm", "1e7")
    assert budget.returncode == 0, budget.stderr
    # coordinator: a manual flush, then the daemon (flush loop and reaper)
    flushed = _cli(server, "coordinator", "flush")
    assert flushed.returncode == 0, flushed.stderr
    coordinator = procs.start("coordinator", env=_env(server.url_for("coordinator"), **FAST))
    llm, llm_url = serve_fake_llm(base_latency_ms=1, per_entry_ms=0)
    try:
        worker = procs.start("worker", env=_env(
            server.url_for("worker"), **FAST, BATCH_BUDGET="llm", LLM_BASE_URL=llm_url,
            BATCH_HANDLER="batcher.llm.handler:summarize"))

        def all_acked() -> bool:
            assert coordinator.poll() is None, procs.stderr(coordinator)
            assert worker.poll() is None, procs.stderr(worker)
            stats = admin.hmget(KEYS.stats, "accepted", "acked")
            return int(stats[1] or 0) == int(stats[0] or 0) > 14

        wait_until(all_acked, "every accepted entry acked")
        acked = int(admin.hget(KEYS.stats, "acked") or 0)
        manager.queue_many([{"id": "late", "payload": {}}])  # flushed by deadline
        wait_until(lambda: int(admin.hget(KEYS.stats, "acked") or 0) == acked + 1,
                   "the late entry")
    finally:
        llm.shutdown()
        llm.server_close()
    assert llm.requests > 0
    # observer: every read-only view
    for args in (["stats"], ["stats", "--json"], ["top", "--once"], ["check"], ["keys"],
                 ["dead", "list"], ["result", "api-3"], ["fetch-status"]):
        done = _cli(server, "observer", *args)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
    port = free_port()
    procs.start("exporter", "--port", str(port), "--addr", "127.0.0.1",
                env=_env(server.url_for("observer")))
    scraped: list[str] = []

    def scrape() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                scraped.append(r.read().decode())
        except OSError:
            return False
        return True

    wait_until(scrape, "the exporter answering")
    assert f'batcher_up{{queue="{QUEUE}"}} 1.0' in scraped[0]
    assert f'batcher_entry_end_to_end_seconds_count{{queue="proc"}} {acked + 1}.0' in scraped[0]
    # no role was refused anything along the way (a daemon may retry a refusal quietly)
    denials = [{k: e[k] for k in (b"username", b"object", b"reason", b"context")}
               for e in admin.execute_command("ACL", "LOG")]
    assert denials == []


def test_the_producer_cannot_read_results_payloads_or_dead_letters(
    server: AclRedisServer,
) -> None:
    admin = server.client()
    admin.set(KEYS.result("x"), b'"secret result"')
    admin.hset(KEYS.payloads, "other", b'{"secret": 1}')
    admin.zadd(KEYS.dead, {"d": 1})
    admin.hset(KEYS.dead_payloads, "d", b"{}")
    admin.hset(KEYS.batch("b1"), "n", 1)
    producer = server.client("producer")
    reads: list[Callable[[], Any]] = [
        lambda: producer.get(KEYS.result("x")),
        lambda: producer.hget(KEYS.payloads, "other"),
        lambda: producer.hgetall(KEYS.payloads),
        lambda: producer.hscan(KEYS.payloads),
        lambda: producer.zrange(KEYS.dead, 0, -1),
        lambda: producer.hgetall(KEYS.dead_payloads),
        lambda: producer.hgetall(KEYS.batch("b1")),
        lambda: producer.xrange(KEYS.events),
        lambda: producer.keys("*"),
        lambda: producer.scan(),
        lambda: producer.delete(KEYS.pending),
        lambda: producer.flushall(),
    ]
    assert [i for i, read in enumerate(reads) if not _denied(read)] == []
    config = load_config(queue=QUEUE, redis_url=server.url_for("producer"))
    with pytest.raises(redis_py.exceptions.NoPermissionError):
        BatchStateManager(config=config).get_result("x")


def test_the_observer_cannot_write_anything(server: AclRedisServer) -> None:
    observer = server.client("observer")
    writes: list[Callable[[], Any]] = [
        lambda: observer.set("batcher:{proc}:x", 1),
        lambda: observer.hset(KEYS.state, "paused_until_ms", 1),
        lambda: observer.hincrby(KEYS.stats, "acked", 1),
        lambda: observer.delete(KEYS.pending),
        lambda: observer.zadd(KEYS.pending, {"x": 1}),
        lambda: observer.lpush(KEYS.wakeup, 1),
        lambda: observer.xadd(KEYS.events, {"a": 1}),
        lambda: observer.eval("return 1", 0),
        lambda: observer.script_load("return 1"),
        lambda: observer.publish("rq:pubsub:x", "kill"),
        lambda: observer.flushall(),
        lambda: observer.config_set("maxmemory", "1"),
        lambda: observer.expire(KEYS.stats, 1),
    ]
    assert [i for i, write in enumerate(writes) if not _denied(write)] == []
    # and through the CLI: an observer's pause or enqueue is refused, nothing written
    assert _cli(server, "observer", "pause").returncode != 0
    assert _cli(server, "observer", "enqueue", '{"a": 1}').returncode != 0
    assert not server.client().hexists(KEYS.state, "paused_until_ms")
