"""``BatchPerformanceMetrics``: the seed's flat summary of a queue's figures."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from batcher.monitoring.queue_stats import QueueStats, as_queue_stats


@dataclass(frozen=True, slots=True)
class BatchPerformanceMetrics:
    """The key figures of one queue, flat, as the seed's report showed them.

    Build it with :meth:`from_stats` from ``BatchStateManager.get_detailed_stats()``; every
    figure is shared by all processes, since it is read from Redis.
    """

    queue: str
    total_batches_processed: int = 0
    total_entries_processed: int = 0
    average_batch_size: float = 0.0
    average_processing_time_ms: float = 0.0
    p95_processing_time_ms: float | None = None
    throughput_eps: float = 0.0
    throughput_eps_60s: float = 0.0
    avg_queue_wait_ms: float = 0.0
    avg_end_to_end_ms: float = 0.0
    p95_end_to_end_ms: float | None = None
    buffer_utilization: float = 0.0
    memory_efficiency: float = 1.0
    size_threshold: int = 0
    size_optimizations: int = 0
    last_optimization_ms: int | None = None
    batches_failed: int = 0
    dead_letters: int = 0
    health_status: str = "healthy"
    health_reasons: list[str] = field(default_factory=list)
    throughput_trend: str = "steady"
    processing_time_trend: str = "steady"

    @classmethod
    def from_stats(cls, figures: QueueStats | Mapping[str, Any]) -> BatchPerformanceMetrics:
        """The metrics of a queue's figures (or a ``detailed_stats`` dict, DESIGN §9)."""
        stats = as_queue_stats(figures)
        perf, buffer, sizing = stats.performance, stats.buffer, stats.sizing
        return cls(
            queue=stats.queue,
            total_batches_processed=perf.batches_processed,
            total_entries_processed=perf.entries_processed,
            average_batch_size=perf.avg_batch_size,
            average_processing_time_ms=perf.avg_processing_time_ms,
            p95_processing_time_ms=perf.p95_processing_ms,
            throughput_eps=perf.throughput_eps,
            throughput_eps_60s=perf.throughput_eps_60s,
            avg_queue_wait_ms=perf.avg_queue_wait_ms,
            avg_end_to_end_ms=perf.avg_end_to_end_ms,
            p95_end_to_end_ms=stats.latency["end_to_end_ms"].p95_ms,
            buffer_utilization=buffer.utilization,
            memory_efficiency=stats.memory_efficiency,
            size_threshold=sizing.size_threshold,
            size_optimizations=sizing.adjustments,
            last_optimization_ms=sizing.events[0].ms if sizing.events else None,
            batches_failed=perf.batches_failed,
            dead_letters=buffer.dead,
            health_status=stats.health.status,
            health_reasons=list(stats.health.reasons),
            throughput_trend=stats.trends.throughput.trend,
            processing_time_trend=stats.trends.processing_time.trend,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
