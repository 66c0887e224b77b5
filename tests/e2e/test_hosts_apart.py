"""Hosts apart (issue 18 item 5): producers, two coordinators and two workers, each on its own
test host (a network namespace), Redis on another; one worker host is cut off mid-batch.

Its lease runs out, the reaper redelivers the batch to the other worker, and when the link
comes back the cut-off worker's ack arrives late and is refused as stale: every entry is
acked exactly once, none is lost. The late ack is the real thing: the worker sent it into the
dead link before RQ's job timeout gave up on it, and the kernel delivers it once the link is
back, after the lease it was sent under has ended.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import cast

import pytest
import redis

from batcher.keys import QueueKeys
from tests.support.netns import HubRedisServer, Lan
from tests.support.waiting import stream_entries, wait_until

ROOT = Path(__file__).resolve().parents[2]
QUEUE = "hosts"
KEYS = QueueKeys(QUEUE)
PRODUCERS, PER_PRODUCER = 2, 200
TOTAL = PRODUCERS * PER_PRODUCER
# a lease of 3 + 1 s: the held batch is redelivered seconds after the cut, not minutes
JOB_TIMEOUT_SECONDS, LEASE_GRACE_SECONDS = 3, 1

PRODUCER = """
import sys
from batcher import BatchStateManager
index, count = int(sys.argv[1]), int(sys.argv[2])
BatchStateManager().queue_many([
    {"id": f"p{index}-{i}", "source": f"producer-{index}", "payload": {"i": i}}
    for i in range(count)])
"""


def _env(redis_url: str, host: str, work: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "BATCH_REDIS_URL": redis_url,
        "BATCH_QUEUE": QUEUE,
        "BATCH_HANDLER": "tests.support.cut_off:handle",
        "BATCH_TIME_THRESHOLD_SEC": "1",
        "BATCH_HIGH_TIME_THRESHOLD_SEC": "1",
        "BATCH_URGENT_TIME_THRESHOLD_SEC": "1",
        "BATCH_JOB_TIMEOUT_SEC": str(JOB_TIMEOUT_SECONDS),
        "BATCH_LEASE_GRACE_SEC": str(LEASE_GRACE_SECONDS),
        "BATCH_REAP_INTERVAL_SEC": "0.2",
        "BATCH_LOG_FORMAT": "json",
        "HOSTS_APART_DIR": str(work),
        "HOSTS_APART_HOST": host,
        "HOSTS_APART_HOLD": "w1",
    }


class Hosts:
    """The processes the test started, each on its host, each ended by its pid."""

    def __init__(self, lan: Lan, redis_url: str, work: Path) -> None:
        self.lan, self.redis_url, self.work = lan, redis_url, work
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, host: str, *argv: str) -> subprocess.Popen[bytes]:
        with (self.work / f"{name}.log").open("ab") as out:
            proc = subprocess.Popen(self.lan.hosts[host].argv(sys.executable, *argv),
                                    env=_env(self.redis_url, host, self.work), cwd=ROOT,
                                    stdout=out, stderr=subprocess.STDOUT)
        self.procs[name] = proc
        return proc

    def wait(self, ready: Callable[[], object], what: str, guard_seconds: float) -> None:
        """wait_until, with every process's log tail when it never happens."""
        try:
            wait_until(ready, what, guard_seconds=guard_seconds)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.logs()}") from None

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2500:]}"
                         for p in sorted(self.work.glob("*.log")))

    def stop(self) -> dict[str, int | None]:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        codes: dict[str, int | None] = {}
        for name, proc in self.procs.items():
            try:
                codes[name] = proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                codes[name] = None
        return codes


def _stat(client: redis.Redis, field: str) -> int:
    return int(client.hget(KEYS.stats, field) or 0)


def _handled(work: Path, host: str) -> list[tuple[str, int, str]]:
    path = work / f"{host}.handled"
    if not path.exists():
        return []
    return [(b, int(a), e) for b, a, e in (line.split() for line in path.read_text().split("\n")
                                           if line)]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_worker_host_cut_off_mid_batch_loses_nothing_and_its_late_ack_is_refused(
    tmp_path: Path,
) -> None:
    work = tmp_path / "hosts"
    work.mkdir()
    with Lan() as lan:
        for name in ("p1", "p2", "c1", "c2", "w1", "w2"):
            lan.add_host(name)
        # the late ack is a closed socket's unsent bytes: the kernel gives those up after
        # tcp_orphan_retries retransmissions (0 = 8, ~50 s); a loaded machine may cut longer.
        # The setting is the namespace's own.
        lan.sysctl(lan.hosts["w1"], "net.ipv4.tcp_orphan_retries", "15")
        with HubRedisServer(lan) as server:
            client = server.client()
            hosts = Hosts(lan, server.url, work)
            try:
                _run(lan, hosts, client, work)
            finally:
                codes = hosts.stop()
            print(hosts.logs()[-1500:])
            _verify(lan, hosts, client, work, codes)


def _run(lan: Lan, hosts: Hosts, client: redis.Redis, work: Path) -> None:
    hosts.start("c1", "c1", "-m", "batcher", "coordinator")
    hosts.start("c2", "c2", "-m", "batcher", "coordinator")
    # w1 alone first, so the batch it holds is one it claimed, whatever RQ's order
    hosts.start("w1", "w1", "-m", "batcher", "worker")
    producers = [hosts.start(f"producer{i}", f"p{i + 1}", "-c", PRODUCER, str(i),
                             str(PER_PRODUCER)) for i in range(PRODUCERS)]
    held = work / "held"
    hosts.wait(held.exists, "w1 holding a batch", guard_seconds=120)
    batch_id, attempt = held.read_text().split()
    record = client.hmget(KEYS.batch(batch_id), "status", "attempt")
    assert record == [b"claimed", attempt.encode()], "w1 holds a batch it has not claimed"
    hosts.start("w2", "w2", "-m", "batcher", "worker")

    lan.cut(lan.hosts["w1"])
    # the held handler returns into the dead link: its ack is sent but cannot arrive
    (work / "release").touch()
    hosts.wait(lambda: not client.exists(KEYS.batch(batch_id)),
               "the held batch redelivered to w2 and acked there", guard_seconds=150)
    assert _stat(client, "stale_acks") == 0, "an ack arrived from the cut-off host"
    # back as soon as the batch is settled: the late ack's retransmissions are still running
    lan.restore(lan.hosts["w1"])
    assert all(p.wait(120) == 0 for p in producers), hosts.logs()
    hosts.wait(lambda: _stat(client, "acked") >= TOTAL, f"{TOTAL} entries acked",
               guard_seconds=150)
    hosts.wait(lambda: _stat(client, "stale_acks") >= 1,
               "w1's late ack refused once the link is back", guard_seconds=120)


def _verify(lan: Lan, hosts: Hosts, client: redis.Redis, work: Path,
            codes: dict[str, int | None]) -> None:
    batch_id, _attempt = (work / "held").read_text().split()
    redelivered = stream_entries(client, KEYS.events, type="redelivered", batch=batch_id)
    assert redelivered, "the held batch was never redelivered"
    w2_attempts = {a for b, a, _e in _handled(work, "w2") if b == batch_id}
    assert w2_attempts and min(w2_attempts) >= 2, "w2 did not handle the redelivered attempt"

    ids = [f"p{i}-{j}" for i in range(PRODUCERS) for j in range(PER_PRODUCER)]
    with_result = sum(client.exists(KEYS.result(i)) for i in ids)
    raw = cast(dict[bytes, bytes], client.hgetall(KEYS.stats))
    stats = {k.decode(): int(v) for k, v in raw.items() if v.isdigit()}
    accepted, acked = stats.get("accepted", 0), stats.get("acked", 0)
    lost = TOTAL - with_result
    duplicates = acked - with_result
    handled = Counter(e for host in ("w1", "w2") for _b, _a, e in _handled(work, host))
    print(f"hosts-apart: accepted={accepted} acked={acked} lost={lost} "
          f"duplicates={duplicates} stale_acks_refused={stats.get('stale_acks', 0)} "
          f"redelivered_batches={stats.get('redelivered_batches', 0)} "
          f"handled_twice={sum(1 for n in handled.values() if n > 1)}")
    assert accepted == acked == TOTAL and lost == 0 and duplicates == 0
    # one late ack, from the one cut-off worker
    assert stats.get("stale_acks", 0) == 1
    assert stats.get("dead", 0) == 0
    # at least once: only the held batch's entries met the handler twice
    assert {e for e, n in handled.items() if n > 1} <= {
        e for b, _a, e in _handled(work, "w1") if b == batch_id}

    check = subprocess.run(lan.hosts["p1"].argv(sys.executable, "-m", "batcher", "check"),
                           env=_env(hosts.redis_url, "p1", work), cwd=ROOT,
                           capture_output=True, text=True, timeout=120, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    crashed = {n: c for n, c in codes.items() if c not in (0,)}
    assert not crashed, f"processes that did not stop cleanly: {crashed}\n{hosts.logs()}"
