"""A failover under load on the 3 masters + 3 replicas test cluster (issue 18 item 4).

Producers, a coordinator and two workers run as real processes with ``BATCH_REDIS_URL`` = the
cluster and ``BATCH_RQ_REDIS_URL`` = a standalone Redis. Mid-run the master owning the queue's
slot is SIGKILLed while its replica lags: SIGSTOPped ``replica_lag_ms`` around the kill, with
payloads padded so that what the master sent meanwhile outgrows the socket buffers and dies in
its output buffer (on loopback a replica otherwise keeps up within microseconds, and a loss
with BATCH_REPLICA_ACKS=0, the loss the setting prevents, would be luck). The replica is
promoted; the killed node is started again, as an operator's
supervisor would, and rejoins as the new master's replica (without a replica, WAIT could never
confirm again). Nothing is restarted but that node. The run ends when the producers have every
id confirmed and the queue has drained, and counts:

  accepted    ids a producer saw confirmed (accepted, or a duplicate of an applied one)
  acked       accepted ids with a result (their batch acked)
  lost        accepted ids with none: asynchronous replication lost them in the failover
  duplicates  ids that met a handler more than once (at-least-once delivery allows it)
  recovery_s  master killed -> first ack after the promotion (the new master's events stream)

Used by ``tests/e2e/test_cluster_failover.py`` and ``scripts/cluster_failover.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import redis

from batcher.keys import QueueKeys
from tests.support.children import Children
from tests.support.redis_cluster import RedisClusterFixture
from tests.support.redis_server import RedisServer
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
QUEUE = "failover"
KEYS = QueueKeys(QUEUE)
GUARD_SECONDS = 180.0
SETTINGS = {
    "BATCH_QUEUE": QUEUE, "BATCH_LOG_FORMAT": "json",
    "BATCH_HANDLER": "tests.support.failover_handler:handle",
    "BATCH_SIZE_THRESHOLD": "20", "BATCH_MIN_BATCH_SIZE": "1", "BATCH_MAX_BATCH_SIZE": "50",
    "BATCH_TIME_THRESHOLD_SEC": "1", "BATCH_HIGH_TIME_THRESHOLD_SEC": "1",
    "BATCH_URGENT_TIME_THRESHOLD_SEC": "1", "BATCH_ENABLE_ADAPTIVE_SIZING": "false",
    "BATCH_MAX_BUFFER_SIZE": "100000",
    # a batch whose ack the failover swallowed comes back soon (a duplicate, not a loss)
    "BATCH_DISPATCH_LEASE_SEC": "3", "BATCH_REAP_INTERVAL_SEC": "0.2",
    "BATCH_JOB_TIMEOUT_SEC": "5", "BATCH_LEASE_GRACE_SEC": "1",
}


@dataclass
class FailoverRun:
    replica_acks: int
    accepted: int = 0
    acked: int = 0
    lost: int = 0
    duplicates: int = 0
    recovery_s: float = 0.0
    promoted_s: float = 0.0
    # lost ids a producer saw confirmed after the promotion, so by the promoted replica itself
    # (nothing can be confirmed between the kill and the promotion: the slot has no master;
    # the promotion, not the kill, is the bound, so a stamp taken just after reading a reply
    # the old master sent before it died is not miscounted)
    lost_confirmed_after_kill: int = 0
    check_exit: int = -1
    check_output: str = ""
    producers: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (f"cluster-failover: replica_acks={self.replica_acks} accepted={self.accepted} "
                f"acked={self.acked} lost={self.lost} duplicates={self.duplicates} "
                f"recovery_s={self.recovery_s:.2f} promoted_s={self.promoted_s:.2f}")


def _env(cluster: RedisClusterFixture, rq: RedisServer, work: Path,
         replica_acks: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCH_")}
    env.update(SETTINGS, BATCH_REDIS_URL=cluster.url(seeds=3), BATCH_RQ_REDIS_URL=rq.url,
               BATCH_REPLICA_ACKS=str(replica_acks), FAILOVER_DIR=str(work),
               PYTHONPATH=str(ROOT))
    return env


def _stat(client: redis.Redis, name: str) -> int:
    return int(client.hget(KEYS.counters, name) or 0)


def _drained(client: redis.Redis) -> bool:
    return (client.zcard(KEYS.pending) == 0 and client.zcard(KEYS.inflight) == 0
            and client.zcard(KEYS.delayed) == 0)


def _first_ack_after(client: redis.Redis, since_ms: int) -> int | None:
    """The ms of the first ack event at or after ``since_ms`` (stream ids are Redis's clock)."""
    start = f"{since_ms}-0"
    while True:
        rows = client.xrange(KEYS.events, min=start, count=200)
        if not rows:
            return None
        for event_id, fields in rows:
            if fields.get(b"type") == b"ack":
                return int(event_id.split(b"-")[0])
        start = "(" + rows[-1][0].decode()


def _confirmed(work: Path) -> dict[str, float]:
    out: dict[str, float] = {}
    for path in work.glob("confirmed-*"):
        for line in path.read_text().splitlines():
            entry_id, at = line.split()
            out.setdefault(entry_id, float(at))
    return out


def run_failover(replica_acks: int, work: Path, *, producers: int = 2, seconds: float = 15.0,
                 chunks_per_second: float = 50.0, kill_after_acked: int = 300,
                 replica_lag_ms: int = 3000, pad_bytes: int = 2000) -> FailoverRun:
    """One run (see the module docstring); ``work`` holds the logs and the id files."""
    run = FailoverRun(replica_acks)
    with RedisClusterFixture() as cluster, RedisServer() as rq:
        procs = Children(work, _env(cluster, rq, work, replica_acks), tail_chars=2000)
        try:
            _load_and_kill(cluster, procs, run, work,
                           _Load(producers, seconds, chunks_per_second, kill_after_acked,
                                 replica_lag_ms, pad_bytes))
        except AssertionError:
            raise AssertionError(procs.logs()) from None
        finally:
            procs.stop_all()
    return run


@dataclass(frozen=True)
class _Load:
    producers: int
    seconds: float
    chunks_per_second: float
    kill_after_acked: int
    replica_lag_ms: int
    pad_bytes: int


def _load_and_kill(cluster: RedisClusterFixture, procs: Children, run: FailoverRun, work: Path,
                   load: _Load) -> None:
    victim = cluster.owner_of(KEYS.state)
    replica = cluster.replica_of(victim)
    assert replica is not None
    before = victim.client()
    procs.start("-m", "batcher.cli", "coordinator", name="coordinator")
    procs.start("-m", "batcher.cli", "worker", "--simple", name="worker")
    procs.start("-m", "batcher.cli", "worker", name="worker")
    feeders = [procs.start("-m", "tests.support.failover_producer", f"p{i}-",
                           str(load.seconds), str(load.chunks_per_second),
                           str(work / f"confirmed-{i}"), str(load.pad_bytes),
                           name=f"producer{i}", capture=True)
               for i in range(load.producers)]
    wait_until(lambda: _stat(before, "acked") >= load.kill_after_acked,
               f"{load.kill_after_acked} entries acked before the kill", GUARD_SECONDS)
    before.close()
    lag_seconds = load.replica_lag_ms / 2000
    replica.pause()
    try:
        time.sleep(lag_seconds)
        killed_wall = time.time()
        killed = time.monotonic()
        victim.kill()
        time.sleep(lag_seconds)
    finally:
        replica.resume()
    wait_until(lambda: cluster.role(replica) == "master", "the replica promoted", GUARD_SECONDS)
    run.promoted_s = time.monotonic() - killed
    promoted_wall = killed_wall + run.promoted_s
    victim.start()  # back as the new master's replica, so WAIT can confirm again
    after = replica.client()
    try:
        for feeder in feeders:
            out, _ = feeder.communicate(timeout=GUARD_SECONDS)
            assert feeder.returncode == 0, out
            run.producers.append(out.decode().strip().splitlines()[-1])
        wait_until(lambda: _drained(after), "the queue drained", GUARD_SECONDS)
        first_ack = _first_ack_after(after, int(killed_wall * 1000))
        assert first_ack is not None, "no ack after the promotion"
        run.recovery_s = first_ack / 1000 - killed_wall
        _count(run, after, work, promoted_wall)
    finally:
        after.close()
    check = subprocess.run([sys.executable, "-m", "batcher.cli", "check"], env=procs.env,
                           cwd=ROOT, capture_output=True, text=True, timeout=120)
    run.check_exit, run.check_output = check.returncode, check.stdout + check.stderr


def _count(run: FailoverRun, client: redis.Redis, work: Path, promoted_wall: float) -> None:
    confirmed = _confirmed(work)
    ids = sorted(confirmed)
    pipe = client.pipeline(transaction=False)
    for entry_id in ids:
        pipe.exists(KEYS.result(entry_id))
    with_result = dict(zip(ids, pipe.execute(), strict=True))
    lost = [i for i in ids if not with_result[i]]
    handled = Counter((work / "handled").read_text().split())
    run.accepted, run.acked, run.lost = len(ids), len(ids) - len(lost), len(lost)
    run.duplicates = sum(1 for n in handled.values() if n > 1)
    run.lost_confirmed_after_kill = sum(1 for i in lost if confirmed[i] > promoted_wall)
