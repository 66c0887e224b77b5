"""Deadline lateness: urgent entries trickled at random; flush time minus each one's deadline.

Read from Redis's own clock on both sides: a flush event's ``ms`` and, per entry, the
enqueued ms inside its score (the batch records stay: no worker acks them here).
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import cast

import redis

from batcher.config import BatchProcessingConfig
from batcher.producer import BatchStateManager
from batcher.records import BatchRecord
from benchlib.common import config_env, make_entries, percentile
from benchlib.procs import Children

URGENT = 2
BYTE_CAP = 1500


def lateness_config(base: BatchProcessingConfig) -> BatchProcessingConfig:
    """0.5 s for urgent entries, and batches of one ~1 KB entry (the byte cap), so every entry
    is flushed by its own deadline: no batch-mate ever rides along early."""
    # no workers run here: a high in-flight cap keeps flushing independent of acks
    return base.with_overrides(
        urgent_time_threshold_seconds=0.5, max_inflight_batches=1_000_000,
        enable_adaptive_sizing=False, size_threshold=1000, max_batch_size=1000,
        max_entry_bytes=BYTE_CAP, max_batch_bytes=BYTE_CAP)


def _wait_started(client: redis.Redis, config: BatchProcessingConfig, children: Children) -> None:
    deadline = time.monotonic() + 30
    while not client.hexists(config.keys.state, "max_buffer_size"):
        children.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError("coordinator did not start")
        time.sleep(0.02)
    time.sleep(0.2)  # into its BLPOP


def run(config: BatchProcessingConfig, count: int, mean_gap_ms: float, seed: int,
        log_dir: Path) -> list[float]:
    """Lateness in ms of each of ``count`` urgent entries (negative: flushed early)."""
    client = redis.Redis.from_url(config.redis_url)
    client.flushall()
    manager = BatchStateManager(config=config)
    rng = random.Random(seed)
    entries = make_entries(count, seed=seed, priority=URGENT)
    threshold_ms = config.thresholds_ms()[URGENT]
    with Children(log_dir, config_env(config)) as children:
        children.python("coordinator-lateness", "-m", "benchlib.procs", "ours-coordinator")
        _wait_started(client, config, children)
        for entry in entries:
            manager.queue_many([entry])
            time.sleep(rng.expovariate(1000 / mean_gap_ms))
        deadline = time.monotonic() + threshold_ms / 1000 + 5
        while client.zcard(config.keys.pending) and time.monotonic() < deadline:
            time.sleep(0.05)
    return _lateness(client, config, threshold_ms, count)


def _lateness(client: redis.Redis, config: BatchProcessingConfig, threshold_ms: int,
              count: int) -> list[float]:
    lateness: list[float] = []
    reasons: dict[bytes, int] = {}
    events = cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange(config.keys.events))
    for _id, fields in events:
        if fields.get(b"type") != b"flush":
            continue
        reasons[fields[b"reason"]] = reasons.get(fields[b"reason"], 0) + 1
        flushed_ms = int(fields[b"ms"])
        batch_id = fields[b"batch"].decode()
        record = BatchRecord.from_hash(batch_id, cast(dict[bytes, bytes], client.hgetall(
            config.keys.batch(batch_id))))
        lateness += [flushed_ms - (line.enqueued_ms + threshold_ms) for line in record.index]
    if len(lateness) != count or set(reasons) != {b"deadline"}:
        raise RuntimeError(f"lateness: {len(lateness)} of {count} entries were flushed, "
                           f"reasons {reasons}")
    return lateness


def figures(lateness: list[float]) -> dict[str, float]:
    ordered = sorted(lateness)
    return {"p50_ms": percentile(ordered, 0.5), "p99_ms": percentile(ordered, 0.99),
            "max_ms": ordered[-1]}
