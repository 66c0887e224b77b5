"""The performance report and its one-line log summary, from a queue's figures."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import structlog

from batcher.monitoring.metrics import BatchPerformanceMetrics
from batcher.monitoring.queue_stats import QueueStats, as_queue_stats

log = structlog.stdlib.get_logger(__name__)

# the seed's promise: the buffer takes more than 95 % of what it is offered
MEMORY_EFFICIENCY_TARGET = 0.95


def recommendations(figures: QueueStats | Mapping[str, Any]) -> list[str]:
    """What to change, in words, for each figure that is off."""
    stats = as_queue_stats(figures)
    out: list[str] = []
    perf, buffer = stats.performance, stats.buffer
    if stats.memory_efficiency < MEMORY_EFFICIENCY_TARGET:
        out.append("entries are being rejected: raise BATCH_MAX_BUFFER_SIZE / "
                   "BATCH_MAX_BUFFER_BYTES, add workers, or use BATCH_OVERFLOW_POLICY=block")
    p95 = perf.recent_p95_processing_ms
    if p95 is not None and p95 > perf.performance_target_ms:
        out.append("batches take longer than BATCH_PERFORMANCE_TARGET_MS: lower "
                   "BATCH_MAX_BATCH_SIZE or keep BATCH_ENABLE_ADAPTIVE_SIZING on")
    if stats.workers == []:
        out.append("no RQ worker listens on this queue: start `batcher worker`")
    if buffer.dead:
        out.append(f"{buffer.dead} entries are dead-lettered: see `batcher dead list`")
    return out


def performance_report(figures: QueueStats | Mapping[str, Any]) -> dict[str, Any]:
    """Metrics, health, trends, the latest size changes and recommendations of one queue."""
    stats = as_queue_stats(figures)
    as_dict = stats.to_dict()
    return {
        "queue": stats.queue,
        "generated_ms": stats.now_ms,
        "status": stats.health.status,
        "metrics": BatchPerformanceMetrics.from_stats(stats).to_dict(),
        "health": as_dict["health"],
        "trends": as_dict["trends"],
        "latency": as_dict["latency"],
        "memory_efficiency": stats.memory_efficiency,
        "optimisations": as_dict["sizing"]["events"],
        "recommendations": recommendations(stats),
    }


def log_performance_summary(stats: QueueStats | Mapping[str, Any]) -> None:
    """Log one ``performance.summary`` event with the key figures of ``stats``."""
    m = BatchPerformanceMetrics.from_stats(stats)
    log.info(
        "performance.summary", queue=m.queue, status=m.health_status, reasons=m.health_reasons,
        throughput_eps=m.throughput_eps, throughput_eps_60s=m.throughput_eps_60s,
        batches=m.total_batches_processed, entries=m.total_entries_processed,
        avg_batch_size=m.average_batch_size, avg_processing_ms=m.average_processing_time_ms,
        p95_processing_ms=m.p95_processing_time_ms, avg_queue_wait_ms=m.avg_queue_wait_ms,
        avg_end_to_end_ms=m.avg_end_to_end_ms, utilization=m.buffer_utilization,
        memory_efficiency=m.memory_efficiency, size_threshold=m.size_threshold,
        size_adjustments=m.size_optimizations, dead=m.dead_letters,
        throughput_trend=m.throughput_trend, processing_time_trend=m.processing_time_trend,
    )
