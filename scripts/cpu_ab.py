#!/usr/bin/env python3
"""One end-to-end run measured by CPU and Redis command counts, which load does not swamp.

    PYTHONSAFEPATH=1 PYTHONPATH=TREE:TREE/scripts python scripts/cpu_ab.py TREE [--simple]

Runs the benchmark's e2e workload (TREE's benchlib: a running coordinator, 2 workers, the
producer) against TREE's code and prints one JSON line: wall entries/s, CPU seconds (user+sys,
work horses included) of the workers and of the coordinator, the Redis server's CPU and its
INFO commandstats delta, and the batches acked. Wall time on a loaded machine moves ±40 %;
the CPU per entry and the commands per batch are what an A/B between two trees compares.
PYTHONSAFEPATH keeps the checkout this script lives in off sys.path, so TREE's code is the
code imported, in this process and in the children.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> float:
    """utime+stime of ``pid`` and its waited-for children (a forking worker's horses)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return float("nan")
    return sum(int(f) for f in fields[11:15]) / TICK  # utime stime cutime cstime


def redis_cpu(info: dict[str, Any]) -> float:
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def commandstats(client: Any) -> dict[str, int]:
    return {k.removeprefix("cmdstat_"): int(v["calls"])
            for k, v in client.info("commandstats").items()}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("tree", type=Path)
    p.add_argument("--simple", action="store_true")
    p.add_argument("--entries", type=int, default=4_000)
    args = p.parse_args()
    tree = args.tree.resolve()

    from benchlib import e2e
    from benchlib.common import bench_config, config_env, make_entries
    from benchlib.procs import Children
    from benchlib.server import BenchRedis

    import batcher
    from batcher.producer import CHUNK_SIZE, BatchStateManager

    for mod in (batcher, e2e):
        assert Path(mod.__file__ or "").resolve().is_relative_to(tree), mod.__file__
    entries = make_entries(args.entries, seed=2)
    with BenchRedis() as server, tempfile.TemporaryDirectory() as log_dir:
        # bench.py's e2e settings: 25 a batch, a tail flushed within a second
        config = bench_config(
            server.url, time_threshold_seconds=1, high_time_threshold_seconds=1,
            urgent_time_threshold_seconds=1, size_threshold=25, enable_adaptive_sizing=False)
        client = server.client()
        client.flushall()
        manager = BatchStateManager(config=config)
        # QueueKeys.counters since issue 16 (.stats before: the same 'stats' hash)
        counters_key = getattr(config.keys, "counters", None) or config.keys.stats
        worker_args = ["-m", "benchlib.procs", "ours-worker",
                       *(["--simple"] if args.simple else [])]
        with Children(Path(log_dir), config_env(config)) as children:
            coord = children.python("coordinator", "-m", "benchlib.procs", "ours-coordinator")
            e2e._wait_coordinator_ready(client, config, children)
            time.sleep(0.5)  # the coordinator's first idle polls out of the figures
            coord0 = proc_cpu(coord.pid)
            cmd0, cpu0 = commandstats(client), redis_cpu(client.info("cpu"))
            start = time.perf_counter()
            workers = [children.python(f"worker{i}", *worker_args) for i in range(e2e.WORKERS)]
            for i in range(0, len(entries), CHUNK_SIZE):
                manager.queue_many(entries[i:i + CHUNK_SIZE])
            first_ack: list[float] = []

            def done() -> int:
                n = int(client.hget(counters_key, "acked") or 0)
                if n and not first_ack:  # the workers' start-up, about
                    first_ack.append(sum(proc_cpu(w.pid) for w in workers))
                return n

            rate = e2e._wait_done(children, done, len(entries), start)
            worker_cpu = sum(proc_cpu(w.pid) for w in workers)
            coord_cpu = proc_cpu(coord.pid) - coord0
            cpu1, cmd1 = redis_cpu(client.info("cpu")), commandstats(client)
            counters = {k.decode(): v.decode() for k, v in
                        client.hgetall(counters_key).items()}
    delta = {k: v - cmd0.get(k, 0) for k, v in cmd1.items() if v - cmd0.get(k, 0)}
    delta.pop("info", None)
    delta.pop("hget", None)  # this script's own polling
    print(json.dumps({
        "tree": str(tree), "simple": args.simple, "entries": args.entries,
        "rate": round(rate, 1), "worker_cpu": round(worker_cpu, 3),
        "worker_cpu_at_first_ack": round(first_ack[0], 3) if first_ack else None,
        "coord_cpu": round(coord_cpu, 3), "redis_cpu": round(cpu1 - cpu0, 3),
        "batches": int(counters.get("batches_processed", 0)), "commands": delta,
    }))


if __name__ == "__main__":
    sys.exit(main())
