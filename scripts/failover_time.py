#!/usr/bin/env python3
"""Failover recovery time on a 3 masters + 3 replicas Redis Cluster (issue 18 item 6).

Each run forms a fresh cluster on loopback (tests/support/redis_cluster.py), SIGKILLs the
master that owns a queue's slot and times, from the kill:
  promoted    its replica reports role:master;
  state_ok    after that, every surviving node reports cluster_state:ok;
  first_write the first SET of a key in that slot through redis-py's RedisCluster succeeds
              (the client retries as a daemon would: a failed call, 10 ms, again).

    .venv/bin/python scripts/failover_time.py --runs 5 [--node-timeout-ms 1000]

The figures follow cluster-node-timeout (a master is failed after it, then the replica waits
its rank's delay and wins an election), not this machine's speed; a timed test would race.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

import redis  # noqa: E402
from redis.crc import key_slot  # noqa: E402

from tests.support.redis_cluster import RedisClusterFixture  # noqa: E402

KEY = b"batcher:{failover}:stats"
POLL_SECONDS = 0.01
GUARD_SECONDS = 120.0


def _owner(cluster: RedisClusterFixture, key: bytes) -> int:
    client = cluster.masters()[0].client()
    try:
        slot = key_slot(key)
        for start, end, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
            if start <= slot <= end:
                return int(master[1])
    finally:
        client.close()
    raise RuntimeError("no owner")


def one_run(node_timeout_ms: int) -> dict[str, float]:
    with RedisClusterFixture(node_timeout_ms) as cluster:
        client = cluster.client()
        client.set(KEY, b"before")
        victim = next(m for m in cluster.masters() if m.port == _owner(cluster, KEY))
        replica = cluster.replica_of(victim)
        assert replica is not None
        survivors = [n for n in cluster.nodes if n is not victim]
        killed = time.monotonic()
        victim.kill()
        marks: dict[str, float] = {}
        while len(marks) < 3:
            now = time.monotonic() - killed
            if now > GUARD_SECONDS:
                raise RuntimeError(f"no recovery in {GUARD_SECONDS} s: {marks}")
            if "promoted" not in marks and cluster.role(replica) == "master":
                marks["promoted"] = now
            # before the kill is noticed the survivors still say ok: count it after promotion
            if "state_ok" not in marks and "promoted" in marks and all(
                    n.cluster_info().get("cluster_state") == "ok" for n in survivors):
                marks["state_ok"] = now
            if "first_write" not in marks:
                try:
                    client.set(KEY, b"after")
                    marks["first_write"] = time.monotonic() - killed
                except (redis.ConnectionError, redis.TimeoutError, redis.exceptions.ClusterError,
                        redis.ResponseError):
                    pass
            time.sleep(POLL_SECONDS)
        client.close()
        return marks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--node-timeout-ms", type=int, default=1000)
    args = parser.parse_args()
    runs = []
    for i in range(args.runs):
        marks = one_run(args.node_timeout_ms)
        runs.append(marks)
        print(f"run {i + 1}: " + " ".join(f"{k}={v:.2f}s" for k, v in marks.items()),
              flush=True)
    summary = " ".join(
        f"{k}_s median={statistics.median(r[k] for r in runs):.2f} "
        f"max={max(r[k] for r in runs):.2f}"
        for k in ("promoted", "state_ok", "first_write"))
    print(f"failover: runs={args.runs} node_timeout_ms={args.node_timeout_ms} {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
