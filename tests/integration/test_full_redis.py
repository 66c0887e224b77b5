"""A Redis over ``maxmemory`` (``noeviction``): producers are refused with a clear error, and
everything that drains the buffer (flush, dispatch, claim, ack, fail, the reaper, RQ's own
bookkeeping around a batch job) still runs, so memory frees and producers succeed again."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis as redis_py
from rq.serializers import JSONSerializer

from batcher import processing as tasks
from batcher.connection import connect
from batcher.coordinator import Coordinator
from batcher.errors import BufferFullError, RedisFullError
from batcher.models import FlushReason
from batcher.oom import OomTolerantRedis, replayed_commands
from batcher.producer import BatchStateManager
from batcher.records import BatchRecord
from batcher.rq.job import BatchJob
from batcher.rq.worker import BatchSimpleWorker
from batcher.scripts import lua_source, server_supports_flags
from tests.support.builders import make_config, stat
from tests.support.invariants import assert_consistent
from tests.support.redis_server import RedisServer

QUEUE = "full"


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with RedisServer(["--maxmemory-policy", "noeviction"]) as srv:
        yield srv


@pytest.fixture
def client(server: RedisServer) -> Iterator[redis_py.Redis]:
    c = connect(server.url, oom_tolerant=True)
    c.flushall()
    c.config_set("maxmemory", 0)
    yield c
    c.config_set("maxmemory", 0)
    tasks._CONTEXTS.pop(QUEUE, None)


def _fill_up(client: redis_py.Redis) -> None:
    """Make Redis full now: maxmemory just under what it uses (any deny-oom write refused)."""
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory", max(1, used - 64 * 1024))
    with pytest.raises(redis_py.exceptions.OutOfMemoryError):
        redis_py.Redis(connection_pool=client.connection_pool).set("probe", "x")


def _manager(client: redis_py.Redis, **overrides: object) -> BatchStateManager:
    config = make_config(queue=QUEUE, redis_url="redis://unused", **overrides)
    # a producer's own client: plain, its refusals are not replayed
    plain = redis_py.Redis(connection_pool=client.connection_pool)
    return BatchStateManager(plain, config)


def _entries(prefix: str, n: int) -> list[dict[str, object]]:
    return [{"id": f"{prefix}{i}", "source": "s", "payload": {"text": "x" * 300}}
            for i in range(n)]


def test_a_full_redis_refuses_producers_with_a_typed_error_naming_maxmemory(
    client: redis_py.Redis,
) -> None:
    manager = _manager(client)
    manager.queue_many(_entries("a", 10))
    _fill_up(client)
    with pytest.raises(RedisFullError) as refused:
        manager.queue_many(_entries("b", 5))
    assert isinstance(refused.value, BufferFullError)  # code that handles a full buffer works
    assert "maxmemory" in str(refused.value)
    assert refused.value.result.rejected == 5 and refused.value.result.accepted == 0
    # nothing refused was written, and the enqueue script itself stayed deny-oom
    assert client.zcard(manager.keys.pending) == 10
    assert not client.hexists(manager.keys.payloads, "b0")
    assert_consistent(client, manager.keys)


def test_flush_dispatch_claim_and_ack_drain_a_full_redis_then_producers_succeed(
    client: redis_py.Redis,
) -> None:
    manager = _manager(client, size_threshold=10, min_batch_size=5)
    manager.queue_many(_entries("a", 40))
    _fill_up(client)
    coordinator = Coordinator(client, manager.config)
    coordinator.start()
    coordinator.drain()
    assert coordinator.tally.flushed_entries == 40
    # the dispatcher's RQ jobs were written past the refusal
    assert sum(coordinator.dispatcher.rq_queue_lengths().values()) == 4
    before = replayed_commands()
    worker = BatchSimpleWorker(manager.config.keys.rq_queues_by_urgency(), connection=client,
                               serializer=JSONSerializer, job_class=BatchJob)
    worker.work(burst=True, logging_level="WARNING")
    assert replayed_commands() > before  # RQ's bookkeeping went through the allow-oom script
    assert stat(client, manager.scripts, "acked") == 40
    # the results would have grown a full Redis: dropped and counted, the ack went through
    assert stat(client, manager.scripts, "results_dropped") == 40
    assert client.zcard(manager.keys.inflight) == 0
    assert_consistent(client, manager.keys)
    client.config_set("maxmemory", 0)
    assert manager.queue_many(_entries("c", 5)).accepted == 5


def test_fail_and_the_reaper_run_on_a_full_redis(client: redis_py.Redis) -> None:
    manager = _manager(client, size_threshold=5, min_batch_size=5, max_attempts=1)
    manager.queue_many(_entries("a", 5))
    coordinator = Coordinator(client, manager.config)
    coordinator.start()
    batch = manager.scripts.flush("b1").batch
    assert batch is not None
    _fill_up(client)
    assert isinstance(manager.scripts.claim("b1", 1), BatchRecord)  # claim works without MULTI
    assert manager.scripts.fail("b1", 1, "boom", backoff_ms=0) == "dead"
    assert client.zcard(manager.keys.dead) == 5
    assert manager.scripts.requeue(["a0"]) == (1, 0, 0)
    coordinator.reap()  # promote, expire, the seen trim: no refusal
    assert_consistent(client, manager.keys)


def test_the_coordinator_flushes_early_when_redis_memory_nears_maxmemory(
    client: redis_py.Redis,
) -> None:
    manager = _manager(client, size_threshold=20, min_batch_size=5,
                       redis_memory_flush_pressure=0.5)
    manager.queue_many(_entries("a", 3))  # far under every count, byte and time threshold
    coordinator = Coordinator(client, manager.config)
    coordinator.start()
    assert manager.scripts.flush("idle").batch is None
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory", int(used / 0.6))  # 60 % used: over the 50 % level
    assert 0.5 < coordinator.read_memory() < 0.7
    decision = coordinator.scripts.flush("early")
    assert decision.batch is not None and decision.batch.reason == FlushReason.PRESSURE


def test_replayed_commands_keep_redis_py_reply_shapes(client: redis_py.Redis) -> None:
    _fill_up(client)
    assert isinstance(client, OomTolerantRedis)
    assert client.hset("h", "a", "1") == 1
    with client.pipeline() as pipe:
        pipe.hset("h", "b", "2").expire("h", 100).hgetall("h").get("missing")
        assert pipe.execute() == [1, True, {b"a": b"1", b"b": b"2"}, None]
    with client.pipeline(transaction=False) as pipe:
        pipe.sadd("s", "m").lpush("h", "x")  # the second fails on its own: wrong type
        replies = pipe.execute(raise_on_error=False)
    assert replies[0] == 1 and isinstance(replies[1], redis_py.ResponseError)


def test_scripts_carry_redis_7_flags_only_where_the_server_takes_them(
    client: redis_py.Redis,
) -> None:
    import fakeredis

    assert server_supports_flags(client)
    assert lua_source("ack").startswith("#!lua flags=allow-oom\n")
    assert lua_source("ack_results").startswith("#!lua\n")  # refused whole when full
    assert lua_source("enqueue").startswith("#!lua\n")
    assert not server_supports_flags(fakeredis.FakeRedis())
    stripped = lua_source("flush", flags=False)
    assert not stripped.startswith("#!")
    assert stripped.count("\n") == lua_source("flush").count("\n")  # line numbers kept


def test_batcher_enqueue_exits_5_on_a_full_redis(client: redis_py.Redis,
                                                 server: RedisServer) -> None:
    from click.testing import CliRunner

    from batcher.cli import cli

    _fill_up(client)
    args = ["enqueue", '{"title": "hello"}', "--queue", QUEUE, "--redis-url", server.url]
    refused = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert refused.exit_code == 5, refused.output
    assert "maxmemory" in refused.output
    client.config_set("maxmemory", 0)
    assert CliRunner().invoke(cli, args, catch_exceptions=False).exit_code == 0
