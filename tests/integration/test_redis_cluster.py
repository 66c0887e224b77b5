"""The Redis Cluster fixture (issue 18 item 4): 3 masters + 3 replicas that form, serve a
write through redis-py's cluster client, and survive a master's SIGKILL by promoting its
replica."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from redis.crc import key_slot

from tests.support.redis_cluster import RedisClusterFixture


@pytest.fixture
def cluster() -> Iterator[RedisClusterFixture]:
    with RedisClusterFixture() as formed:
        yield formed


def _owner_port(fixture: RedisClusterFixture, key: bytes) -> int:
    slot = key_slot(key)
    client = fixture.masters()[0].client()
    try:
        for start, end, master, *_replicas in client.execute_command("CLUSTER", "SLOTS"):
            if start <= slot <= end:
                return int(master[1])
    finally:
        client.close()
    raise AssertionError(f"no master serves slot {slot}")


@pytest.mark.timeout(180)
def test_cluster_forms_with_three_masters_each_with_a_replica(
    cluster: RedisClusterFixture,
) -> None:
    assert len(cluster.masters()) == 3
    assert {r.port for m in cluster.masters() if (r := cluster.replica_of(m))} == (
        {n.port for n in cluster.nodes} - {m.port for m in cluster.masters()})
    for node in cluster.nodes:
        info = node.cluster_info()
        assert info["cluster_state"] == "ok" and info["cluster_slots_assigned"] == "16384"
    client = cluster.client()
    try:
        # keys of three different slots, each stored on the master that owns it
        for key in (b"batcher:{a}:stats", b"batcher:{b}:stats", b"batcher:{c}:stats"):
            client.set(key, b"v")
            owner = next(m for m in cluster.masters() if m.port == _owner_port(cluster, key))
            assert owner.client().get(key) == b"v"
    finally:
        client.close()


@pytest.mark.timeout(180)
def test_killed_master_is_replaced_by_its_replica_which_keeps_the_data(
    cluster: RedisClusterFixture,
) -> None:
    key = b"batcher:{failover}:stats"
    victim = next(m for m in cluster.masters() if m.port == _owner_port(cluster, key))
    replica = cluster.replica_of(victim)
    assert replica is not None
    direct = victim.client()
    direct.set(key, b"before")
    # replication is asynchronous: WAIT until the replica has the write before the kill
    assert direct.wait(1, 5000) == 1
    direct.close()

    promoted = cluster.kill_master(victim)

    assert promoted.port == replica.port and cluster.role(promoted) == "master"
    assert not victim.running and len(cluster.masters()) == 3
    assert _owner_port(cluster, key) == promoted.port
    after = cluster.client()
    try:
        assert after.get(key) == b"before"
        after.set(key, b"after")
        assert promoted.client().get(key) == b"after"
    finally:
        after.close()
