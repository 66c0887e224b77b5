"""BATCH_REDIS_URL naming a Redis Cluster (issue 18 item 1): each queue's client is pinned to
the master owning its slot, runs the whole enqueue -> flush -> claim -> ack path there, follows
a migrated slot (MOVED) and a promoted replica, and the queues are found on every master."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis as redis_py
from redis.crc import key_slot

from batcher import cluster as cluster_module
from batcher import processing
from batcher.backoff import fault_kind, pause
from batcher.budget import Budget, BudgetLimits
from batcher.check import check_queue
from batcher.cluster import SlotMovedError
from batcher.config import BatchProcessingConfig, load_config
from batcher.connection import describe
from batcher.keys import budget_key
from batcher.monitoring.reads import discover_queues
from batcher.oom import replay
from batcher.producer import BatchStateManager
from batcher.records import BatchRecord
from batcher.scripts import Scripts
from tests.support.redis_cluster import RedisClusterFixture
from tests.support.redis_server import RedisServer
from tests.support.waiting import blocked_on, wait_until

pytestmark = pytest.mark.timeout(240)
ENTRIES = 30


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterFixture]:
    with RedisClusterFixture() as formed:
        yield formed


_OPENED: list[redis_py.Redis] = []


@pytest.fixture(autouse=True)
def _disconnect_pinned_clients() -> Iterator[None]:
    yield
    # a pinned client's pool is its own: disconnect it, not only hand its connections back
    while _OPENED:
        _OPENED.pop().connection_pool.disconnect()


def _pinned(config: BatchProcessingConfig, **options: Any) -> redis_py.Redis:
    client = config.redis_client(**options)
    _OPENED.append(client)
    return client


def _config(cluster: RedisClusterFixture, queue: str, rq_url: str) -> BatchProcessingConfig:
    return load_config(queue=queue, redis_url=cluster.url(), rq_redis_url=rq_url,
                       size_threshold=10, min_batch_size=1, max_batch_size=10,
                       log_format="json")


def _enqueue(config: BatchProcessingConfig, client: redis_py.Redis, prefix: str = "e") -> None:
    manager = BatchStateManager(client, config)
    result = manager.queue_many([{"id": f"{prefix}{i}", "priority": i % 3, "payload": {"n": i}}
                                 for i in range(ENTRIES)])
    assert result.accepted == ENTRIES


def _drain(config: BatchProcessingConfig, client: redis_py.Redis) -> int:
    """Flush, claim and ack every batch as a coordinator and a worker would; entries acked."""
    scripts = Scripts(client, config)
    acked = 0
    for n in range(100):
        decision = scripts.flush(f"b{n}", manual=True)
        if decision.batch is None:
            return acked
        record = scripts.claim(decision.batch.id, decision.batch.attempt)
        assert isinstance(record, BatchRecord)
        done = scripts.ack(record.id, record.attempt, processing_ms=1.0, started_ms=0,
                           results={entry_id: b'"ok"' for entry_id in record.envelopes})
        assert done.ok
        acked += done.acked
    raise AssertionError("the queue never emptied")


def test_queues_on_different_masters_run_enqueue_flush_claim_ack_each_on_its_own(
    cluster: RedisClusterFixture, redis_url: str,
) -> None:
    queues = cluster.queues_on_distinct_masters(3, prefix="run")
    for queue in queues:
        config = _config(cluster, queue, redis_url)
        client = _pinned(config)
        _enqueue(config, client)
        assert _drain(config, client) == ENTRIES
        # every key of the queue is on the master owning its slot, none elsewhere
        owner = cluster.owner_of(config.keys.state)
        assert owner.client().hget(config.keys.counters, "acked") == str(ENTRIES).encode()
        assert f"on 127.0.0.1:{owner.port}" in describe(client)
        report = check_queue(client, config)
        assert report.ok, report.problems
    # no batcher key reached RQ's standalone server
    assert not list(redis_py.Redis.from_url(redis_url).scan_iter(match="batcher:*"))


def test_discovery_finds_the_queues_of_every_master(cluster: RedisClusterFixture,
                                                    redis_url: str) -> None:
    queues = cluster.queues_on_distinct_masters(3, prefix="found")
    for queue in queues:
        config = _config(cluster, queue, redis_url)
        _enqueue(config, _pinned(config))
    client = _pinned(_config(cluster, queues[0], redis_url))
    assert set(queues) <= set(discover_queues(client))


def test_a_budget_key_is_served_by_its_own_slot(cluster: RedisClusterFixture,
                                               redis_url: str) -> None:
    budget_owner = cluster.owner_of(budget_key("llm"))
    # a queue on another master than the budget's key, so the queue's node would refuse it
    queue = next(q for q in cluster.queues_on_distinct_masters(3, prefix="spend")
                 if cluster.owner_of(f"batcher:{{{q}}}:state") is not budget_owner)
    config = _config(cluster, queue, redis_url)
    budget = Budget(_pinned(config), "llm")
    budget.set_limits(BudgetLimits(rpm=60))
    assert budget.reserve(1, 10, 10) == 0.0
    assert budget.show()["req"]["limit_per_minute"] == 60
    # the budget's key lives on the master owning its own slot, wherever the queue's is
    assert budget_owner.client().exists(budget.key)


def test_a_migrated_slot_is_followed_and_the_next_call_succeeds(
    cluster: RedisClusterFixture, redis_url: str,
) -> None:
    queue = cluster.queues_on_distinct_masters(1, prefix="moving")[0]
    config = _config(cluster, queue, redis_url)
    client = _pinned(config)
    _enqueue(config, client, prefix="before")
    source = cluster.owner_of(config.keys.state)
    target = next(m for m in cluster.masters() if m is not source)
    cluster.move_slot(key_slot(config.keys.state.encode()), target)
    # the old owner answers MOVED: the command did not run, and the client now knows where
    with pytest.raises(SlotMovedError):
        client.zcard(config.keys.pending)
    assert client.zcard(config.keys.pending) == ENTRIES
    assert f"on 127.0.0.1:{target.port}" in describe(client)
    # the producer's hot path (hand-packed EVALSHA) and the daemons' paths run on the new owner
    _enqueue(config, client, prefix="after")
    assert _drain(config, client) == 2 * ENTRIES
    assert check_queue(client, config).ok


def test_a_killed_master_is_replaced_and_the_pinned_client_carries_on() -> None:
    with RedisClusterFixture() as cluster:
        with RedisServer() as rq:
            queue = cluster.queues_on_distinct_masters(1, prefix="failing")[0]
            config = _config(cluster, queue, rq.url)
            client = _pinned(config)
            _enqueue(config, client, prefix="before")
            wait_replicated(cluster, config)
            victim = cluster.owner_of(config.keys.state)
            promoted = cluster.replica_of(victim)
            assert promoted is not None
            victim.kill()
            with pytest.raises(redis_py.ConnectionError) as lost:
                client.zcard(config.keys.pending)
            # a daemon's back-off after that fault (batcher.backoff.pause): no other master
            # serves the slot until the replica is promoted (the node timeout is 1 s), so a
            # short wait is waited out whole; a long one ends at the promotion, not after 60 s
            assert not pause(lost.value, 0.2)
            assert pause(lost.value, 60)
            assert cluster.role(promoted) == "master"
            wait_until(lambda: all(n.cluster_info().get("cluster_state") == "ok"
                                   for n in cluster.running), "the cluster ok again")
            # a producer's enqueue retries connection loss; the script is loaded again on the
            # promoted replica (NOSCRIPT), which kept the data it had replicated
            _enqueue(config, client, prefix="after")
            assert f"on 127.0.0.1:{promoted.port}" in describe(client)
            assert _drain(config, client) == 2 * ENTRIES
            assert check_queue(client, config).ok


def test_a_forking_workers_parent_follows_a_slot_moved_under_its_horses(
    cluster: RedisClusterFixture, redis_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A horse follows a moved slot in its own copy of the map; the parent looks again after
    each job (processing.follow_moved_slots), so the next horse starts on the new owner
    instead of meeting a MOVED (or a dead host's connect timeout) per job."""
    queue = cluster.queues_on_distinct_masters(1, prefix="parent")[0]
    config = _config(cluster, queue, redis_url)
    client = _pinned(config)
    _enqueue(config, client)
    source = cluster.owner_of(config.keys.state)
    target = next(m for m in cluster.masters() if m is not source)
    cluster.move_slot(key_slot(config.keys.state.encode()), target)
    monkeypatch.setitem(processing._CONTEXTS, queue, processing.WorkerContext(
        config, client, Scripts(client, config), lambda batch: None))
    monkeypatch.setattr(cluster_module, "RECHECK_SECONDS", 0.0)  # the last look was long ago
    monkeypatch.setattr(cluster_module, "REFRESH_MIN_SECONDS", 0.0)
    processing.follow_moved_slots()
    assert f"on 127.0.0.1:{target.port}" in describe(client)
    assert client.zcard(config.keys.pending) == ENTRIES  # no SlotMovedError first


def test_a_new_owner_gets_the_queues_scripts_before_its_first_command(
    cluster: RedisClusterFixture, redis_url: str,
) -> None:
    """A promoted replica (here a migration target) has no scripts: an EVALSHA there would be
    refused NOSCRIPT, and with BATCH_REPLICA_ACKS the WAIT sent behind it would still wait its
    whole timeout while the new master has no replica. The pool loads them on the new owner
    before the first command it sends there."""
    queue = cluster.queues_on_distinct_masters(1, prefix="carry")[0]
    config = _config(cluster, queue, redis_url)
    client = _pinned(config)
    scripts = Scripts(client, config)
    scripts.preload()
    shas = [script.sha for script in scripts._scripts.values()]
    source = cluster.owner_of(config.keys.state)
    target = next(m for m in cluster.masters() if m is not source)
    with target.client() as direct:
        direct.script_flush()
        cluster.move_slot(key_slot(config.keys.state.encode()), target)
        with pytest.raises(SlotMovedError):
            client.zcard(config.keys.pending)
        assert not any(direct.script_exists(*shas))
        assert client.zcard(config.keys.pending) == 0  # the first command on the new owner
        assert all(direct.script_exists(*shas))


def wait_replicated(cluster: RedisClusterFixture, config: BatchProcessingConfig) -> None:
    """WAIT until the owner's replica holds what was written (no loss is what this tests)."""
    owner = cluster.owner_of(config.keys.state)
    client = owner.client()
    try:
        assert client.execute_command("WAIT", 1, 5000) == 1
    finally:
        client.close()


def test_a_manual_failover_unblocks_a_waiting_blpop_and_the_next_call_reaches_the_new_master(
    redis_url: str,
) -> None:
    with RedisClusterFixture() as cluster:
        queue = cluster.queues_on_distinct_masters(1, prefix="handover")[0]
        config = _config(cluster, queue, redis_url)
        client = _pinned(config)
        blocking = _pinned(config, blocking_seconds=30)
        _enqueue(config, client)
        old = cluster.owner_of(config.keys.state)
        replica = cluster.replica_of(old)
        assert replica is not None
        outcome: list[BaseException | object] = []
        waiter = threading.Thread(
            target=lambda: outcome.append(_blpop_outcome(blocking, config.keys.room)))
        waiter.start()
        with old.client() as watch:
            wait_until(lambda: blocked_on(watch, "blpop") == 1, "the BLPOP waiting")
        with replica.client() as promote:
            promote.execute_command("CLUSTER", "FAILOVER")  # graceful: the old master hands over
        waiter.join(timeout=60)
        # the old master, now a replica, unblocks its waiter: a fault the coordinator waits out
        assert len(outcome) == 1 and fault_kind(outcome[0]) is not None, outcome
        wait_until(lambda: cluster.role(replica) == "master", "the replica promoted")
        # both clients find the new master by themselves (retried as a daemon's back-off does)
        for pinned in (client, blocking):
            wait_until(lambda p=pinned: _answers(p, config), "the pinned client on the new master")
            assert f"on 127.0.0.1:{replica.port}" in describe(pinned)
        assert _drain(config, client) == ENTRIES


def _blpop_outcome(client: redis_py.Redis, key: str) -> BaseException | object:
    try:
        return client.blpop([key], timeout=20)
    except redis_py.RedisError as exc:
        return exc


def _answers(client: redis_py.Redis, config: BatchProcessingConfig) -> bool:
    try:
        return client.zcard(config.keys.pending) == ENTRIES
    except redis_py.ConnectionError:
        return False


def test_a_daemons_oom_replay_runs_on_the_queues_own_node(cluster: RedisClusterFixture,
                                                          redis_url: str) -> None:
    """bookkeeping.lua (no KEYS) replays a daemon's refused writes of its own queue: the pinned
    node serves that slot, so it runs them, where RQ's keys spanning slots were refused."""
    queue = cluster.queues_on_distinct_masters(1, prefix="full")[0]
    config = _config(cluster, queue, redis_url)
    client = _pinned(config, oom_tolerant=True)
    assert replay(client, [(("HSET", config.keys.state, "probe", "1"), {}),
                           (("HINCRBY", config.keys.counters, "probe", "2"), {})]) == [1, 2]
    assert client.hget(config.keys.state, "probe") == b"1"
