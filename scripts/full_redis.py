#!/usr/bin/env python3
"""Fill Redis to its maxmemory mid-run and prove that the drain goes on (issue 13, item 1).

    .venv/bin/python scripts/full_redis.py [--entries 40000] [--budget-mb 4] [--producers 3]

A private redis-server (``noeviction``) runs one coordinator and two ``batcher worker``
processes (the simulated handler, slower than the producers). Once they are up, maxmemory is
set to what Redis then uses plus ``--budget-mb``: the producers (threads here, each its own
``BatchStateManager``) offer far more than that, so Redis fills up mid-run and refuses them
with ``RedisFullError``; they wait and offer the refused entries again. The coordinator
(flushing early on Redis's own memory figures) and the workers keep draining through the
refusals. At the end every accepted entry must be acked or dead, the queue empty, no daemon
exited, ``batcher check`` clean, and a producer must succeed again at once.

Results live ``BATCH_RESULT_TTL_SEC=10`` and the de-duplication window 5 s here, so the
drained memory is free again after the run; the per-id proof is the counters (``acked`` +
``dead`` = ``accepted``, ``batcher check``'s invariants). The last line is
``full-redis: accepted=… acked=… dead=… lost=… refusals=… refused_s=… longest_refused_s=…
results_dropped=… daemons_exited=… after_drain_ok=…``; exit 1 when anything is wrong.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

import structlog  # noqa: E402
from chaos_procs import Managed  # noqa: E402

from batcher.config import BatchProcessingConfig  # noqa: E402
from batcher.connection import connect  # noqa: E402
from batcher.errors import RedisFullError  # noqa: E402
from batcher.keys import QueueKeys  # noqa: E402
from batcher.producer import BatchStateManager  # noqa: E402
from tests.support.redis_server import RedisServer  # noqa: E402

QUEUE = "full"
SETTINGS = {
    "BATCH_QUEUE": QUEUE,
    "BATCH_HANDLER": "workers.handlers.simulated:handle",
    "SIM_BASE_MS": "15", "SIM_PER_ENTRY_MS": "0.5", "SIM_JITTER_MS": "1",
    # only Redis's own maxmemory refuses here, not the buffer's limits
    "BATCH_MAX_BUFFER_SIZE": "10000000", "BATCH_MAX_BUFFER_BYTES": "10000000000",
    "BATCH_RESULT_TTL_SEC": "10", "BATCH_DEDUPE_WINDOW_SEC": "5",
    "BATCH_TIME_THRESHOLD_SEC": "1", "BATCH_HIGH_TIME_THRESHOLD_SEC": "1",
    "BATCH_URGENT_TIME_THRESHOLD_SEC": "1", "BATCH_REAP_INTERVAL_SEC": "0.5",
    "BATCH_LOG_FORMAT": "json",
}
REFUSED_PAUSE_SECONDS = 0.05


class Producer(threading.Thread):
    """Offers its share of the entries; a refused chunk waits and goes again until accepted."""

    def __init__(self, index: int, count: int, url: str, chunk: int, pad: int):
        super().__init__(name=f"producer-{index}", daemon=True)
        config = BatchProcessingConfig(**{"redis_url": url, "queue": QUEUE,
                                          "max_buffer_size": 10_000_000,
                                          "max_buffer_bytes": 10_000_000_000,
                                          "log_format": "json"})
        self.manager = BatchStateManager(connect(url), config)
        self.ids = [f"p{index}-{n}" for n in range(count)]
        self.chunk, self.pad = chunk, pad
        self.accepted = self.refusals = 0
        self.refused_at: list[tuple[float, float]] = []  # (first refusal, accepted) per chunk
        self.error: str | None = None

    def run(self) -> None:
        rng = random.Random(self.name)
        try:
            for start in range(0, len(self.ids), self.chunk):
                todo = [{"id": i, "source": "full", "priority": rng.choice((0, 0, 1, 2)),
                         "payload": {"pad": "x" * rng.randint(self.pad // 2, self.pad)}}
                        for i in self.ids[start:start + self.chunk]]
                first_refusal: float | None = None
                while todo:
                    try:
                        self.accepted += self.manager.queue_many(todo).accepted
                        todo = []
                    except RedisFullError as exc:
                        self.refusals += 1
                        first_refusal = first_refusal or time.monotonic()
                        self.accepted += exc.result.accepted
                        again = set(exc.result.rejected_ids)
                        todo = [e for e in todo if e["id"] in again]
                        time.sleep(REFUSED_PAUSE_SECONDS)
                if first_refusal is not None:
                    self.refused_at.append((first_refusal, time.monotonic()))
        except Exception as exc:  # noqa: BLE001 - reported in the summary, the run fails
            self.error = f"{type(exc).__name__}: {exc}"


def child_env(url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BATCH_", "SIM_"))}
    env.update(SETTINGS, BATCH_REDIS_URL=url, PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join([str(ROOT / "scripts"), str(ROOT)]))
    return env


def wait_drained(url: str, deadline: float) -> bool:
    client, keys = connect(url), QueueKeys(QUEUE)
    while time.monotonic() < deadline:
        pipe = client.pipeline(transaction=False)
        for key in (keys.pending, keys.delayed, keys.inflight):
            pipe.zcard(key)
        if not any(pipe.execute()):
            return True
        time.sleep(0.25)
    return False


def main(argv: list[str] | None = None) -> int:
    # the producers' refusals are counted in the summary, not logged one by one
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--entries", type=int, default=40_000)
    ap.add_argument("--producers", type=int, default=3)
    ap.add_argument("--budget-mb", type=float, default=4.0,
                    help="maxmemory = what Redis uses once the daemons are up + this")
    ap.add_argument("--pad", type=int, default=600, help="largest payload padding, bytes")
    ap.add_argument("--duration-cap", type=float, default=600.0)
    args = ap.parse_args(argv)
    log_dir = Path(tempfile.mkdtemp(prefix="batcher-full-redis-"))
    t0 = time.monotonic()
    with RedisServer(["--maxmemory-policy", "noeviction"]) as server:
        env, py = child_env(server.url), sys.executable
        daemons = [Managed("coordinator", [py, "-m", "batcher", "coordinator"],
                           log_dir / "coordinator.log", env)]
        daemons += [Managed(f"worker-{i}", [py, "-m", "batcher", "worker", "--simple"],
                            log_dir / f"worker-{i}.log", env) for i in range(2)]
        for d in daemons:
            d.start()
        client = connect(server.url)
        time.sleep(3.0)  # the daemons registered and loaded their scripts
        base = int(client.info("memory")["used_memory"])
        maxmemory = base + int(args.budget_mb * 1024 * 1024)
        client.config_set("maxmemory", maxmemory)
        print(f"full-redis: redis-server {server.version} port {server.port}; used {base} B "
              f"with the daemons up, maxmemory set to {maxmemory} B; logs in {log_dir}",
              flush=True)
        share = args.entries // args.producers
        producers = [Producer(i, share + (1 if i < args.entries % args.producers else 0),
                              server.url, 200, args.pad) for i in range(args.producers)]
        for p in producers:
            p.start()
        peak = 0
        while any(p.is_alive() for p in producers) and time.monotonic() - t0 < args.duration_cap:
            peak = max(peak, int(client.info("memory")["used_memory"]))
            time.sleep(0.2)
        drained = wait_drained(server.url, t0 + args.duration_cap)
        exited = [f"{d.name}:exit={d.exit_code()}" for d in daemons if d.exit_code() is not None]
        # after the drain: a producer succeeds at once (results and the seen window expire)
        after = Producer(99, 200, server.url, 200, args.pad)
        time.sleep(11.0)
        after.run()
        after_ok = after.refusals == 0 and after.accepted == 200 and after.error is None
        drained = wait_drained(server.url, time.monotonic() + 60) and drained
        stats = {k.decode(): int(float(v)) for k, v in
                 client.hgetall(QueueKeys(QUEUE).counters).items()}  # type: ignore[union-attr]
        check = Managed("check", [py, "-m", "batcher", "check"], log_dir / "check.log", env)
        check.start()
        assert check.proc is not None
        check_rc = check.proc.wait(timeout=300)
        for d in daemons:
            d.terminate()
    accepted = sum(p.accepted for p in producers) + after.accepted
    acked, dead = stats.get("acked", 0), stats.get("dead", 0)
    lost = accepted - acked - dead
    waits = [end - start for p in producers for start, end in p.refused_at]
    starts = [s for p in producers for s, _ in p.refused_at]
    ends = [e for p in producers for _, e in p.refused_at]
    refused_s = (max(ends) - min(starts)) if starts else 0.0
    errors = [p.error for p in producers if p.error]
    print(f"full-redis: peak used_memory {peak} B of maxmemory {maxmemory} B; "
          f"stats accepted={stats.get('accepted', 0)} rejected={stats.get('rejected', 0)} "
          f"batches={stats.get('batches_processed', 0)}; batcher check exit {check_rc}; "
          f"run {time.monotonic() - t0:.0f} s", flush=True)
    problems = [*errors, *exited]
    if not drained:
        problems.append("the queue did not drain before --duration-cap")
    if stats.get("accepted", 0) != accepted:
        problems.append(f"counters.accepted={stats.get('accepted')} != confirmed {accepted}")
    if lost or dead or check_rc or not after_ok or not waits:
        problems.append(f"lost={lost} dead={dead} check={check_rc} after_drain_ok={after_ok} "
                        f"refused_chunks={len(waits)} (the run must have been refused)")
    for problem in problems:
        print(f"full-redis: PROBLEM: {problem}", flush=True)
    print(f"full-redis: accepted={accepted} acked={acked} dead={dead} lost={lost} "
          f"refusals={sum(p.refusals for p in producers)} refused_s={refused_s:.1f} "
          f"longest_refused_s={max(waits, default=0.0):.1f} "
          f"results_dropped={stats.get('results_dropped', 0)} daemons_exited={len(exited)} "
          f"after_drain_ok={int(after_ok)}", flush=True)
    if problems:
        print(f"full-redis: FAILED, logs kept in {log_dir}", file=sys.stderr)
        return 1
    shutil.rmtree(log_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
