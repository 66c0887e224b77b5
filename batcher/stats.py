"""Figures read back from Redis: the same data for ``stats``, ``top``, the exporter and logs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import redis

from batcher.config import BatchProcessingConfig
from batcher.keys import HISTOGRAMS, QueueKeys
from batcher.models import FlushReason
from batcher.sizing import effective_thresholds_seconds

COUNTERS = ("accepted", "duplicates", "rejected", "acked", "redeliveries", "dead", "expired",
            "requeued", "purged")


def _int(raw: Mapping[bytes, bytes], key: str) -> int:
    value = raw.get(key.encode())
    return int(float(value)) if value is not None else 0


def percentile(hist: Mapping[str, int], q: float) -> float | None:
    """The upper bound of the bucket holding quantile ``q`` (a conservative estimate)."""
    total = sum(hist.values())
    if total == 0:
        return None
    rank, seen = q * total, 0
    for bound in sorted(hist, key=lambda b: float("inf") if b == "+Inf" else float(b)):
        seen += hist[bound]
        if seen >= rank:
            return float("inf") if bound == "+Inf" else float(bound)
    return None


def read_histograms(client: redis.Redis, keys: QueueKeys) -> dict[str, dict[str, int]]:
    pipe = client.pipeline(transaction=False)
    for name in HISTOGRAMS:
        pipe.hgetall(keys.hist(name))
    return {
        name: {k.decode(): int(v) for k, v in raw.items()}
        for name, raw in zip(HISTOGRAMS, pipe.execute(), strict=True)
    }


def throughput_eps(tput: Mapping[bytes, bytes], now_s: int, window_s: int) -> float:
    total = sum(int(v) for k, v in tput.items()
                if k != b"gc" and now_s - window_s < int(k) <= now_s)
    return total / window_s


def detailed_stats(client: redis.Redis, config: BatchProcessingConfig) -> dict[str, Any]:
    """Buffer, performance, counters, sizing, health and events (DESIGN §9)."""
    k = QueueKeys(config.queue)
    pipe = client.pipeline(transaction=False)
    pipe.time()
    pipe.zcard(k.pending)
    pipe.zcard(k.delayed)
    pipe.hgetall(k.state)
    pipe.hgetall(k.stats)
    pipe.zcard(k.dead)
    pipe.zrange(k.inflight, 0, -1)
    pipe.hgetall(k.throughput)
    pipe.xrevrange(k.events, count=20)
    for p in (0, 1, 2):
        lo = (3 - p) * 10**13
        pipe.zcount(k.pending, lo, lo + 10**13 - 1)
        pipe.zrange(k.pending, lo, lo + 10**13 - 1, byscore=True, offset=0, num=1,
                    withscores=True)
    (now, pending, delayed, state, raw, dead_now, inflight_ids, tput, events,
     *by_prio) = pipe.execute()
    now_ms = int(now[0]) * 1000 + int(now[1]) // 1000
    inflight_entries = 0
    if inflight_ids:
        p2 = client.pipeline(transaction=False)
        for b in inflight_ids:
            p2.hget(k.batch(b.decode()), "n")
        inflight_entries = sum(int(n) for n in p2.execute() if n is not None)
    pending_bytes = _int(state, "bytes")
    util = max(pending / config.max_buffer_size, pending_bytes / config.max_buffer_bytes)
    oldest = [int(float(r[0][1])) % 10**13 for r in by_prio[1::2] if r]
    hists = read_histograms(client, k)
    batches = _int(raw, "batches_processed")
    entries = _int(raw, "acked")
    waits = sum(hists["queue_wait_ms"].values())
    buffer = {
        "pending": pending, "delayed": delayed, "bytes": pending_bytes,
        "utilization": round(util, 4),
        "by_priority": {str(p): by_prio[2 * p] for p in (0, 1, 2)},
        "oldest_age_ms": (now_ms - min(oldest)) if oldest else 0,
        "in_flight_batches": len(inflight_ids), "in_flight_entries": inflight_entries,
        "dead": dead_now, "paused_until_ms": _int(state, "paused_until_ms"),
    }
    performance = {
        "throughput_eps": round(throughput_eps(tput, now_ms // 1000, 10), 2),
        "throughput_eps_60s": round(throughput_eps(tput, now_ms // 1000, 60), 2),
        "avg_processing_time_ms": round(_int(raw, "processing_ms_sum") / batches, 2)
        if batches else 0.0,
        "p50_processing_ms": percentile(hists["processing_ms"], 0.50),
        "p95_processing_ms": percentile(hists["processing_ms"], 0.95),
        "p99_processing_ms": percentile(hists["processing_ms"], 0.99),
        "avg_queue_wait_ms": round(_int(raw, "queue_wait_ms_sum") / waits, 2) if waits else 0.0,
        "avg_end_to_end_ms": round(_int(raw, "end_to_end_ms_sum") / waits, 2) if waits else 0.0,
        "batches_processed": batches, "entries_processed": entries,
        "batches_failed": _int(raw, "batches_failed"),
    }
    counters: dict[str, Any] = {name: _int(raw, name) for name in COUNTERS}
    counters["flushes"] = {r.value: _int(raw, f"flushes:{r.value}") for r in FlushReason}
    thresholds = effective_thresholds_seconds(
        (config.time_threshold_seconds, config.high_time_threshold_seconds,
         config.urgent_time_threshold_seconds) if config.enable_priority_flushing
        else (config.time_threshold_seconds,) * 3,
        util, config.early_flush_pressure, config.enable_adaptive_timeout)
    sizing_stats = {
        "size_threshold": _int(state, "size_threshold") or config.size_threshold,
        "min": config.min_batch_size, "max": config.max_batch_size,
        "adjustments": _int(raw, "sizing_adjustments"),
        "effective_thresholds_seconds": {
            str(p): round(t, 3) for p, t in zip((0, 1, 2), thresholds, strict=True)},
    }
    return {
        "queue": config.queue, "now_ms": now_ms, "buffer": buffer, "performance": performance,
        "counters": counters, "sizing": sizing_stats,
        "health": health(buffer, performance, config),
        "events": [{"id": eid.decode(), **{f.decode(): v.decode() for f, v in e.items()}}
                   for eid, e in events],
        "histograms": hists,
    }


def health(buffer: Mapping[str, Any], perf: Mapping[str, Any],
           config: BatchProcessingConfig) -> dict[str, Any]:
    """healthy / degraded / critical, with the reasons."""
    reasons: list[str] = []
    status = "healthy"
    if buffer["utilization"] >= config.emergency_flush_pressure:
        reasons.append(f"buffer at {buffer['utilization']:.0%}, past the emergency level")
        status = "critical"
    elif buffer["utilization"] >= config.early_flush_pressure:
        reasons.append(f"buffer at {buffer['utilization']:.0%}, past the early-flush level")
        status = "degraded"
    p95 = perf["p95_processing_ms"]
    if p95 is not None and p95 > config.performance_target_ms:
        reasons.append(f"p95 processing {p95:.0f} ms over the {config.performance_target_ms} ms "
                       "target")
        status = "degraded" if status == "healthy" else status
    if buffer["dead"]:
        reasons.append(f"{buffer['dead']} dead-lettered entries")
        status = "degraded" if status == "healthy" else status
    return {"status": status, "reasons": reasons}
