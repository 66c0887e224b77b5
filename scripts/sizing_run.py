#!/usr/bin/env python3
"""Show the adaptive batch size following the handler's latency, on real processes.

A private redis-server, a coordinator, two simulated workers (SIM_BASE_MS=20,
SIM_PER_ENTRY_MS=4, target 200 ms: the ideal size is (180 - 20) / 4 = 40) and a producer
that keeps the buffer busy. Halfway, the workers restart with SIM_PER_ENTRY_MS=8 (ideal 20).
Prints every sizing event, then `batcher top --once`.

    .venv/bin/python scripts/sizing_run.py [--phase-seconds 40]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import orjson
import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from batcher.demo.embedded import EmbeddedRedis  # noqa: E402
from batcher.producer import BatchStateManager  # noqa: E402


def _produce(url: str, stop: threading.Event, rate_eps: float) -> None:
    os.environ["BATCH_REDIS_URL"] = url
    manager = BatchStateManager()
    while not stop.is_set():
        chunk = [{"id": str(uuid.uuid4()), "source": "sizing", "priority": 0,
                  "payload": {"title": "x" * 200}} for _ in range(int(rate_eps / 10))]
        manager.queue_many(chunk)
        stop.wait(0.1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phase-seconds", type=float, default=40.0)
    parser.add_argument("--rate", type=float, default=400.0, help="entries/s produced")
    args = parser.parse_args()
    log = Path(tempfile.mkdtemp(prefix="sizing-run-")) / "processes.log"
    with EmbeddedRedis() as url, log.open("ab") as out:
        env = {**os.environ, "BATCH_REDIS_URL": url, "BATCH_QUEUE": "sizing",
               "BATCH_HANDLER": "workers.handlers.simulated:handle",
               "BATCH_PERFORMANCE_TARGET_MS": "200", "BATCH_SIZE_THRESHOLD": "25",
               "BATCH_MIN_BATCH_SIZE": "5", "BATCH_MAX_BATCH_SIZE": "200",
               "BATCH_MAX_BUFFER_SIZE": "20000", "BATCH_TIME_THRESHOLD_SEC": "2",
               "BATCH_HIGH_TIME_THRESHOLD_SEC": "2", "BATCH_URGENT_TIME_THRESHOLD_SEC": "2",
               "BATCH_REAP_INTERVAL_SEC": "0.5", "BATCH_LOG_FORMAT": "json",
               "SIM_BASE_MS": "20", "SIM_PER_ENTRY_MS": "4"}
        os.environ.update({k: v for k, v in env.items() if k.startswith("BATCH_")})

        def start(cmd: list[str], extra: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
            return subprocess.Popen([sys.executable, "-m", "batcher", *cmd],
                                    env={**env, **(extra or {})}, stdout=out, stderr=out)

        daemons = [start(["coordinator"])]
        workers = [start(["worker", "--simple"]) for _ in range(2)]
        stop = threading.Event()
        producer = threading.Thread(target=_produce, args=(url, stop, args.rate), daemon=True)
        producer.start()
        time.sleep(args.phase_seconds)
        print(f"--- {args.phase_seconds:.0f} s: handler now 20 ms + 8 ms/entry (ideal 20) ---")
        for w in workers:
            w.send_signal(signal.SIGTERM)
            w.wait(30)
        workers = [start(["worker", "--simple"], {"SIM_PER_ENTRY_MS": "8"}) for _ in range(2)]
        time.sleep(args.phase_seconds)
        stop.set()
        producer.join(5)
        client = redis.Redis.from_url(url)
        t0 = None
        for _id, event in reversed(client.xrevrange("batcher:{sizing}:events", count=10000)):
            if event[b"type"] != b"sizing":
                continue
            ms = int(_id.decode().split("-")[0])
            t0 = t0 or ms
            evidence = orjson.loads(event[b"evidence"])
            print(f"t={(ms - t0) / 1000:6.1f}s  {int(event[b'before']):3d} -> "
                  f"{int(event[b'after']):3d}  {event[b'mode'].decode():5s} "
                  f"a={evidence.get('a_ms', '-')} b={evidence.get('b_ms_per_entry', '-')} "
                  f"mean_ms={evidence.get('mean_ms', '-')}")
        top = subprocess.run([sys.executable, "-m", "batcher", "top", "--once"], env=env,
                             capture_output=True, text=True)
        print(top.stdout)
        for p in daemons + workers:
            p.send_signal(signal.SIGTERM)
        for p in daemons + workers:
            p.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
