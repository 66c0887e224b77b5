"""A master and one replica, each a throw-away ``redis-server`` on a free loopback port."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from tests.support.redis_server import RedisServer, RedisServerError

LINK_TIMEOUT_SECONDS = 10.0


def start_replica(master: RedisServer, extra_args: list[str] | None = None) -> RedisServer:
    """A replica of ``master`` (``--replicaof``), returned once its link is up and synced."""
    replica = RedisServer(extra_args=["--replicaof", "127.0.0.1", str(master.port),
                                      *(extra_args or [])]).start()
    wait_link_up(replica)
    return replica


def wait_link_up(replica: RedisServer) -> None:
    """Until the replica reports ``master_link_status:up`` (it has loaded the master's data)."""
    client = redis.Redis(host="127.0.0.1", port=replica.port, socket_timeout=2)
    deadline = time.monotonic() + LINK_TIMEOUT_SECONDS
    try:
        while time.monotonic() < deadline:
            if client.info("replication").get("master_link_status") == "up":
                return
            time.sleep(0.05)
    finally:
        client.close()
    raise RedisServerError(f"replica on port {replica.port} never linked: {replica.log_tail()}")


@contextmanager
def master_and_replica() -> Iterator[tuple[RedisServer, RedisServer]]:
    """A master and its linked replica; both are stopped and removed on exit."""
    with RedisServer() as master:
        replica = start_replica(master)
        try:
            yield master, replica
        finally:
            replica.close()
