"""BATCH_REPLICA_ACKS=n on a real master and replica: an enqueue or an ack returns once WAIT
confirms n replicas hold it, raises ReplicaAckError when they do not, and sends no WAIT at 0."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis as redis_py
from click.testing import CliRunner
from structlog.testing import capture_logs

from batcher import processing as tasks
from batcher.cli import cli
from batcher.config import BatchProcessingConfig
from batcher.coordinator import Coordinator
from batcher.errors import BatcherUnavailableError, ReplicaAckError
from batcher.models import Batch, EnqueueResult
from batcher.producer import BatchStateManager
from batcher.scripts import Scripts
from tests.support.acl import AclRedisServer
from tests.support.invariants import assert_consistent
from tests.support.redis_server import RedisServer
from tests.support.replica import master_and_replica, start_replica, wait_link_up

QUEUE = "acks"


@pytest.fixture
def servers() -> Iterator[tuple[RedisServer, RedisServer]]:
    with master_and_replica() as pair:
        yield pair


def _client(server: RedisServer) -> redis_py.Redis:
    return redis_py.Redis(host="127.0.0.1", port=server.port)


def _config(server: RedisServer, **overrides: Any) -> BatchProcessingConfig:
    return BatchProcessingConfig(queue=QUEUE, redis_url=server.url, log_format="json",
                                 **overrides)


def _entries(n: int, prefix: str = "e") -> list[dict[str, Any]]:
    return [{"id": f"{prefix}{i}", "source": "s", "payload": {"i": i}} for i in range(n)]


def _dispatched(client: redis_py.Redis, config: BatchProcessingConfig) -> str:
    coordinator = Coordinator(client, config)
    coordinator.start()
    coordinator.drain(manual=True)
    (key,) = client.scan_iter(match=f"{config.keys.base}:batch:*")
    return bytes(key).decode().rsplit(":", 1)[1]


def _handle(batch: Batch) -> dict[str, Any]:
    return {e.id: {"ok": True} for e in batch.entries}


def _wait_calls(client: redis_py.Redis) -> int:
    stats: dict[str, Any] = client.info("commandstats")
    return int(stats.get("cmdstat_wait", {}).get("calls", 0))


def test_with_one_replica_ack_an_enqueue_returns_once_the_replica_holds_it(
    servers: tuple[RedisServer, RedisServer],
) -> None:
    master, replica = servers
    client, on_replica = _client(master), _client(replica)
    config = _config(master, replica_acks=1)
    producer = BatchStateManager(client, config)
    producer.scripts.preload()  # else the first call's NOSCRIPT reply costs a second WAIT

    one = producer.queue_entry({"n": 1}, "s", "single")
    # read straight after the call returns: no sleep, the WAIT already confirmed it
    assert on_replica.hexists(config.keys.payloads, "single")
    many = producer.queue_many(_entries(600))  # two chunks, each with its own WAIT

    assert (one.accepted, many.accepted) == (1, 600)
    assert on_replica.hlen(config.keys.payloads) == 601
    assert on_replica.zcard(config.keys.pending) == 601
    assert _wait_calls(client) == 3


def test_with_one_replica_ack_a_workers_ack_returns_once_the_replica_has_it(
    servers: tuple[RedisServer, RedisServer],
) -> None:
    master, replica = servers
    client, on_replica = _client(master), _client(replica)
    config = _config(master, replica_acks=1)
    BatchStateManager(client, config).queue_many(_entries(3))
    batch_id = _dispatched(client, config)
    ctx = tasks.WorkerContext(config, client, Scripts(client, config), _handle)

    outcome = tasks.run_batch(ctx, batch_id, 1)

    assert outcome == {"status": "acked", "acked": 3}
    assert not on_replica.exists(config.keys.batch(batch_id))
    assert on_replica.zcard(config.keys.inflight) == 0
    assert on_replica.get(config.keys.result("e0")) == b'{"ok":true}'


def test_an_enqueue_no_replica_confirms_raises_replica_ack_error_and_stays_on_the_master(
    servers: tuple[RedisServer, RedisServer],
) -> None:
    master, replica = servers
    client = _client(master)
    config = _config(master, replica_acks=1, replica_acks_timeout_ms=200)
    producer = BatchStateManager(client, config)
    replica.stop()

    with pytest.raises(ReplicaAckError) as caught:
        producer.queue_many(_entries(700))

    err = caught.value
    assert isinstance(err, BatcherUnavailableError)  # handlers of an outage catch it too
    assert (err.what, err.wanted, err.confirmed, err.timeout_ms) == ("enqueue", 1, 0, 200)
    # the first chunk (500) was applied and not confirmed: the call stops there
    assert isinstance(err.result, EnqueueResult) and err.result.accepted == 500
    assert err.unconfirmed_ids == [f"e{i}" for i in range(700)]
    assert "applied on the master but confirmed on 0 of 1 replicas within 200 ms" in str(err)
    assert "re-sending these ids is safe: enqueue de-duplicates by id" in str(err)
    assert client.zcard(config.keys.pending) == 500
    assert_consistent(client, config.keys)

    # re-sent once the replica is back: the 500 count as duplicates, the rest are accepted
    replica.start()
    wait_link_up(replica)
    again = producer.queue_many(_entries(700))
    assert (again.accepted, len(again.duplicate_ids)) == (200, 500)


def test_an_unconfirmed_workers_ack_is_applied_once_and_reported_not_resent(
    servers: tuple[RedisServer, RedisServer],
) -> None:
    master, replica = servers
    client = _client(master)
    config = _config(master, replica_acks=1, replica_acks_timeout_ms=200)
    BatchStateManager(client, config).queue_many(_entries(3))  # confirmed: replica up
    batch_id = _dispatched(client, config)
    ctx = tasks.WorkerContext(config, client, Scripts(client, config), _handle)
    replica.stop()

    with capture_logs() as logs:
        outcome = tasks.run_batch(ctx, batch_id, 1)

    assert outcome == {"status": "acked", "acked": 3}
    unconfirmed = [e for e in logs if e["event"] == "batch.ack_unconfirmed"]
    assert [(e["replicas"], e["wanted"]) for e in unconfirmed] == [(0, 1)]
    stats: dict[bytes, bytes] = client.hgetall(config.keys.stats)  # type: ignore[assignment]
    assert stats.get(b"stale_acks") is None  # not re-sent: no second, stale ack
    assert not client.exists(config.keys.batch(batch_id))
    assert_consistent(client, config.keys)


def test_replica_acks_zero_sends_no_wait(servers: tuple[RedisServer, RedisServer]) -> None:
    master, _replica = servers
    client = _client(master)
    config = _config(master)
    assert config.replica_acks == 0
    BatchStateManager(client, config).queue_many(_entries(3))
    batch_id = _dispatched(client, config)
    ctx = tasks.WorkerContext(config, client, Scripts(client, config), _handle)

    assert tasks.run_batch(ctx, batch_id, 1) == {"status": "acked", "acked": 3}
    assert _wait_calls(client) == 0


def test_cli_enqueue_waits_for_the_replica_and_exits_4_when_none_confirms(
    servers: tuple[RedisServer, RedisServer],
) -> None:
    master, replica = servers
    env = {"BATCH_REPLICA_ACKS": "1", "BATCH_REPLICA_ACKS_TIMEOUT_MS": "200"}
    keys = _config(master).keys

    def enqueue(entry_id: str) -> Any:
        return CliRunner().invoke(cli, ["enqueue", '{"a": 1}', "--id", entry_id, "--queue",
                                        QUEUE, "--redis-url", master.url], env=env,
                                  catch_exceptions=False)

    done = enqueue("up")
    assert done.exit_code == 0, done.stderr
    assert _client(replica).hexists(keys.payloads, "up")  # read at once: WAIT confirmed it

    replica.stop()
    refused = enqueue("down")
    assert refused.exit_code == 4
    assert "enqueue applied on the master but confirmed on 0 of 1 replicas" in refused.stderr
    assert _client(master).hexists(keys.payloads, "down")


def test_the_documented_acl_roles_may_wait_for_replicas() -> None:
    with AclRedisServer() as master:
        replica = start_replica(master, ["--masteruser", "admin",
                                         "--masterauth", master.passwords["admin"]])
        try:
            config = _config(master, replica_acks=1)
            admin, worker = master.client("admin"), master.client("worker")
            Scripts(admin, config).preload()  # else a NOSCRIPT reply costs one more WAIT
            producer = master.client("producer")
            assert BatchStateManager(producer, config).queue_many(_entries(3)).accepted == 3
            batch_id = _dispatched(admin, config)
            ctx = tasks.WorkerContext(config, worker, Scripts(worker, config), _handle)
            assert tasks.run_batch(ctx, batch_id, 1) == {"status": "acked", "acked": 3}
            assert _wait_calls(admin) == 2
            assert not _client(replica).exists(config.keys.batch(batch_id))
        finally:
            replica.close()
