#!/usr/bin/env python3
"""What BATCH_REPLICA_ACKS=1 costs and what it saves (issue 18 items 4 and 6).

Both parts run a master and one replica on loopback (tests/support/replica.py).

cost      entries/s enqueued with n=0 and n=1 side by side, rounds alternating: queue_many in
          chunks of 500, and one queue_entry per entry.
failover  producer threads enqueue chunks under load; the master is SIGKILLed mid-run and the
          replica promoted (REPLICAOF NO ONE); an entry counts as accepted when its call
          returned without error, and as lost when the promoted replica lacks it.
          ``--lag-ms`` first puts the replica in DEBUG SLEEP for that long (a replica behind,
          as on a slow link or a busy host); the kill falls inside the sleep.

    .venv/bin/python scripts/replica_acks.py [--rounds 3] [--runs 3] [--lag-ms 0 1500]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

import redis  # noqa: E402

from batcher.config import BatchProcessingConfig  # noqa: E402
from batcher.errors import BatcherError  # noqa: E402
from batcher.logs import configure  # noqa: E402
from batcher.producer import BatchStateManager  # noqa: E402
from tests.support.redis_server import RedisServer  # noqa: E402
from tests.support.replica import start_replica  # noqa: E402

PAYLOAD = {"text": "x" * 200, "n": 1}


def _config(url: str, n: int) -> BatchProcessingConfig:
    return BatchProcessingConfig(
        queue="acks", redis_url=url, log_format="json", replica_acks=n,
        max_buffer_size=10_000_000, max_buffer_bytes=4_000_000_000,
        enable_adaptive_timeout=False)


def _entries(prefix: str, count: int) -> list[dict[str, Any]]:
    return [{"id": f"{prefix}-{i}", "source": f"s{i % 8}", "payload": PAYLOAD}
            for i in range(count)]


def _rate(master: RedisServer, n: int, many: int, singles: int) -> tuple[float, float]:
    client = redis.Redis(host="127.0.0.1", port=master.port)
    client.flushall()
    producer = BatchStateManager(client, _config(master.url, n))
    producer.scripts.preload()
    entries = _entries(f"m{n}", many)
    t0 = time.perf_counter()
    producer.queue_many(entries)
    many_eps = many / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for i in range(singles):
        producer.queue_entry(PAYLOAD, "s", f"q{n}-{i}")
    single_eps = singles / (time.perf_counter() - t0)
    client.close()
    return many_eps, single_eps


def cost(args: argparse.Namespace) -> None:
    with RedisServer() as master:
        replica = start_replica(master)
        try:
            got: dict[int, list[tuple[float, float]]] = {0: [], 1: []}
            for _ in range(args.rounds):
                for n in (0, 1):
                    got[n].append(_rate(master, n, args.many, args.singles))
        finally:
            replica.close()
    for n in (0, 1):
        many = statistics.median(r[0] for r in got[n])
        single = statistics.median(r[1] for r in got[n])
        print(f"replica-acks cost: n={n} queue_many(500/chunk)={many:,.0f} entries/s "
              f"({1e6 / many:.1f} us/entry) queue_entry={single:,.0f} entries/s "
              f"({1e6 / single:.0f} us/entry) rounds={args.rounds}", flush=True)


def _produce(url: str, n: int, name: str, stop: threading.Event,
             reported: list[str], refused: list[int]) -> None:
    client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=1)
    producer = BatchStateManager(client, _config(url, n))
    chunk = 0
    while not stop.is_set():
        entries = _entries(f"{name}-{chunk}", 50)
        chunk += 1
        try:
            result = producer.queue_many(entries)
        except (BatcherError, redis.RedisError):
            refused[0] += len(entries)  # not reported done: the caller would re-send them
            continue
        reported.extend(e["id"] for e in entries if e["id"] not in result.rejected_ids)


def failover_run(n: int, args: argparse.Namespace, lag_ms: int) -> dict[str, int]:
    master = RedisServer().start()
    replica = start_replica(master, ["--enable-debug-command", "yes"])
    try:
        stop = threading.Event()
        reported: list[list[str]] = [[] for _ in range(args.producers)]
        refused = [[0] for _ in range(args.producers)]
        threads = [threading.Thread(target=_produce, daemon=True,
                                    args=(master.url, n, f"p{i}", stop, reported[i], refused[i]))
                   for i in range(args.producers)]
        for t in threads:
            t.start()
        time.sleep(args.run_seconds)
        if lag_ms:
            sleeper = redis.Redis(host="127.0.0.1", port=replica.port, socket_timeout=30)
            threading.Thread(target=sleeper.execute_command, daemon=True,
                             args=("DEBUG", "SLEEP", f"{lag_ms / 1000:.3f}")).start()
            time.sleep(lag_ms / 2000)  # the kill falls mid-sleep
        master.kill()
        stop.set()
        for t in threads:
            t.join()
        promoted = redis.Redis(host="127.0.0.1", port=replica.port, socket_timeout=30)
        promoted.execute_command("REPLICAOF", "NO", "ONE")
        keys = _config(master.url, n).keys
        held = {bytes(k).decode() for k in promoted.hkeys(keys.payloads)}  # type: ignore[union-attr]
        accepted = [i for ids in reported for i in ids]
        lost = sum(1 for i in accepted if i not in held)
        return {"accepted": len(accepted), "lost": lost,
                "unconfirmed": sum(r[0] for r in refused)}
    finally:
        master.close()
        replica.close()


def failover(args: argparse.Namespace) -> None:
    for lag_ms in args.lag_ms:
        for n in (0, 1):
            runs = [failover_run(n, args, lag_ms) for _ in range(args.runs)]
            total = {k: sum(r[k] for r in runs) for k in runs[0]}
            per_run = " ".join(f"{r['accepted']}/{r['lost']}" for r in runs)
            print(f"replica-acks: n={n} lag_ms={lag_ms} runs={args.runs} "
                  f"accepted={total['accepted']} lost={total['lost']} "
                  f"not_reported={total['unconfirmed']} (accepted/lost per run: {per_run})",
                  flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("cost", "failover", "both"), default="both")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--many", type=int, default=20_000)
    parser.add_argument("--singles", type=int, default=2_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--producers", type=int, default=4)
    parser.add_argument("--run-seconds", type=float, default=2.0)
    parser.add_argument("--lag-ms", type=int, nargs="+", default=[0, 1500])
    args = parser.parse_args(argv)
    configure(json=False, level="ERROR")  # the producers' retry warnings after the kill
    if args.part in ("cost", "both"):
        cost(args)
    if args.part in ("failover", "both"):
        failover(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
