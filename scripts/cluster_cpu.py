#!/usr/bin/env python3
"""Redis CPU per entry: one server against each master of a cluster (issue 18 item 6).

On a 2-core machine a cluster cannot show more throughput than one server: every node
shares the same two cores. What does not depend on the core count is what Redis's single
thread spends on each entry. Each queue's keys share one hash slot, so a queue (or a shard of
one) runs wholly on one master; if that cost per entry is the same on a cluster master as on
a standalone server, N masters carry N times the entries, and the sizing guide follows.

One cycle per queue, driven from this process through the library's own calls (no RQ):
``queue_many`` in chunks of 500, ``flush_many`` pops batches of ``--batch`` entries, then
each batch is claimed and acked with a ~100-byte result per entry. CPU is the server's own
figure (INFO cpu: used_cpu_user + used_cpu_sys) read on the node before and after.

    standalone           one redis-server, one queue
    standalone+replica   the same, feeding one replica (as every cluster master here does)
    cluster              3 masters + 3 replicas (tests/support/redis_cluster.py): one queue on
                         one master, then one queue on each of the 3 masters driven at once
                         (a thread each); each master's CPU divided by its own entries; with
                         --replica-acks 1 every enqueue and ack also WAITs for its replica

    .venv/bin/python scripts/cluster_cpu.py [--entries 20000] [--rounds 3] [--batch 50]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

import redis  # noqa: E402
from benchlib.common import rss_payload  # noqa: E402

from batcher.config import BatchProcessingConfig  # noqa: E402
from batcher.logs import configure  # noqa: E402
from batcher.producer import CHUNK_SIZE, BatchStateManager  # noqa: E402
from batcher.records import BatchRecord, FlushedBatch  # noqa: E402
from batcher.scripts import Scripts  # noqa: E402
from tests.support.redis_cluster import RedisClusterFixture  # noqa: E402
from tests.support.redis_server import RedisServer  # noqa: E402
from tests.support.replica import start_replica  # noqa: E402

RESULT = b'{"summary": "' + b"s" * 80 + b'"}'


def _config(url: str, queue: str, batch: int, replica_acks: int,
            rq_url: str | None) -> BatchProcessingConfig:
    return BatchProcessingConfig(
        queue=queue, redis_url=url, rq_redis_url=rq_url, log_format="json",
        replica_acks=replica_acks, size_threshold=batch, min_batch_size=batch,
        max_batch_size=batch, enable_adaptive_sizing=False, enable_adaptive_timeout=False,
        max_buffer_size=10_000_000, max_buffer_bytes=4_000_000_000,
        max_inflight_batches=10_000_000)


def _cpu_seconds(node: redis.Redis) -> float:
    info: dict[str, Any] = node.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


Phases = tuple[float, float, float]  # µs of server CPU per entry: enqueue, flush, claim+ack


def _cycle(config: BatchProcessingConfig, entries: int, tag: str, node: redis.Redis,
           out: list[Phases]) -> None:
    """Enqueue ``entries``, flush them all into batches, then claim and ack every batch;
    appends the server CPU of each phase on ``node`` (the queue's server) to ``out``."""
    client = config.redis_client()
    producer = BatchStateManager(client, config)
    scripts = Scripts(client, config)
    scripts.preload()
    pool = [rss_payload(random.Random(n), n) for n in range(200)]
    marks = [_cpu_seconds(node)]
    for start in range(0, entries, CHUNK_SIZE):
        producer.queue_many(
            {"id": f"{tag}-{n}", "source": f"feed-{n % 100}", "payload": pool[n % 200]}
            for n in range(start, min(entries, start + CHUNK_SIZE)))
    marks.append(_cpu_seconds(node))
    batches: list[FlushedBatch] = []
    while sum(b.size for b in batches) < entries:
        ids = [f"{tag}-b{len(batches) + i}" for i in range(20)]
        batches += [d.batch for d in scripts.flush_many(ids, manual=True) if d.batch]
    marks.append(_cpu_seconds(node))
    for batch in batches:
        record = scripts.claim(batch.id, batch.attempt, claimant="cpu")
        assert isinstance(record, BatchRecord), record
        results = {line.entry_id: RESULT for line in record.index}
        scripts.ack(batch.id, batch.attempt, processing_ms=1.0,
                    started_ms=int(time.time() * 1000), results=results)
    marks.append(_cpu_seconds(node))
    client.close()
    a, b, c, d = (m * 1e6 / entries for m in marks)
    out.append((b - a, c - b, d - c))


def standalone(args: argparse.Namespace, with_replica: bool) -> list[Phases]:
    """Redis CPU per entry on one server (optionally feeding a replica, as every cluster
    master here does), one figure per round."""
    out: list[Phases] = []
    with RedisServer() as srv:
        replica = start_replica(srv) if with_replica else None
        node = redis.Redis(host="127.0.0.1", port=srv.port)
        try:
            for r in range(args.rounds):
                node.flushall()
                _cycle(_config(srv.url, "cpu", args.batch, 0, None), args.entries, f"s{r}",
                       node, out)
        finally:
            node.close()
            if replica is not None:
                replica.close()
    return out


def cluster(args: argparse.Namespace, replica_acks: int, active: int) -> list[Phases]:
    """Redis CPU per entry on each of ``active`` masters, their queues driven at once (one
    thread each): one figure per master and round."""
    out: list[Phases] = []
    with RedisClusterFixture() as fx, RedisServer() as rq_srv:
        queues = fx.queues_on_distinct_masters(active, prefix="cpu")
        nodes = [fx.owner_of(f"batcher:{{{q}}}:state").client() for q in queues]
        for r in range(args.rounds):
            threads = [threading.Thread(target=_cycle, args=(
                _config(fx.url(), q, args.batch, replica_acks, rq_srv.url), args.entries,
                f"c{r}-{q}", node, out)) for q, node in zip(queues, nodes, strict=True)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        for node in nodes:
            node.close()
    return out


def _line(label: str, figures: list[Phases], base: float | None = None) -> float:
    totals = [sum(f) for f in figures]
    med = statistics.median(totals)
    phases = " ".join(f"{name}={statistics.median(f[i] for f in figures):.1f}"
                      for i, name in enumerate(("enqueue", "flush", "claim_ack")))
    extra = f" vs_standalone_with_replica={med / base:.2f}" if base else ""
    print(f"{label}: redis_cpu_us_per_entry={med:.1f} ({phases}; min {min(totals):.1f} "
          f"max {max(totals):.1f}, n={len(totals)}){extra} "
          f"entries_per_s_per_core={1e6 / med:,.0f}")
    return med


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=20_000, help="entries per queue and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--replica-acks", type=int, nargs="*", default=[0, 1])
    args = parser.parse_args()
    configure(json=True, level="WARNING")

    _line("standalone", standalone(args, with_replica=False))
    base = _line("standalone+replica", standalone(args, with_replica=True))
    for n in args.replica_acks:
        for active in (1, 3):
            _line(f"cluster masters_active={active} replica_acks={n}",
                  cluster(args, n, active), base)

if __name__ == "__main__":
    main()
