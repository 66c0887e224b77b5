"""The figures of one queue as typed values: what ``stats``, ``top``, the exporter, the report,
the dashboard and the demo read.

Built in one place, :func:`batcher.stats.read_queue_stats`; :meth:`QueueStats.to_dict` is
the JSON of ``batcher stats --json`` and ``get_detailed_stats()`` (DESIGN §9), field for
field, and :meth:`QueueStats.from_dict` reads such a dict back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass(frozen=True, slots=True)
class BufferFigures:
    pending: int
    delayed: int
    bytes: int
    utilization: float  # the larger of the two below
    utilization_count: float
    utilization_bytes: float
    by_priority: dict[str, int]  # "0" | "1" | "2" -> pending entries
    oldest_age_ms: int
    in_flight_batches: int
    in_flight_entries: int
    dead: int
    paused_until_ms: int
    paused_reason: str | None  # a pause a person must end (QueuePaused); None for a rate limit
    capacity: int
    capacity_bytes: int


@dataclass(frozen=True, slots=True)
class PerformanceFigures:
    throughput_eps: float
    throughput_eps_60s: float
    arrival_eps_60s: float | None  # None: the de-duplication window does not span a minute
    avg_processing_time_ms: float
    p50_processing_ms: float | None
    p95_processing_ms: float | None
    p99_processing_ms: float | None
    recent_p95_processing_ms: float | None
    recent_batches: int
    avg_queue_wait_ms: float
    avg_end_to_end_ms: float
    avg_batch_size: float
    batches_processed: int
    entries_processed: int
    batches_failed: int
    performance_target_ms: float
    throughput_target_eps: float


@dataclass(frozen=True, slots=True)
class LatencySummary:
    """count, exact sum and average, and p50/p95/p99 from the buckets of one histogram."""

    count: int
    sum_ms: float
    avg_ms: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None


@dataclass(frozen=True, slots=True)
class Counters:
    """The stats hash's counters (every process adds to them) and flushes by reason."""

    accepted: int
    duplicates: int
    rejected: int
    acked: int
    redeliveries: int
    dead: int
    expired: int
    requeued: int
    purged: int
    batches_flushed: int
    entries_flushed: int
    retried_entries: int
    retries: int
    rate_limited: int
    lost_dispatches: int
    stale_acks: int
    stale_claims: int
    stale_fails: int
    pauses: int
    dead_rejected: int
    results_dropped: int
    flushes: dict[str, int]  # FlushReason value -> batches

    def items(self) -> list[tuple[str, int]]:
        """The counters by name, in order, without ``flushes``."""
        return [(name, getattr(self, name)) for name in COUNTERS]


COUNTERS = tuple(f.name for f in fields(Counters) if f.name != "flushes")


@dataclass(frozen=True, slots=True)
class SizingFit:
    a_ms: float
    b_ms_per_entry: float


@dataclass(frozen=True, slots=True)
class SizingEvent:
    """One size change from the events stream, newest first."""

    id: str
    ms: int
    type: str
    before: int
    after: int
    mode: str
    evidence: Any  # the controller's figures (decoded JSON), or their text when unreadable


@dataclass(frozen=True, slots=True)
class SizingFigures:
    size_threshold: int
    min: int
    max: int
    adjustments: int
    adaptive: bool
    effective_thresholds_seconds: dict[str, float]  # "0" | "1" | "2" -> seconds
    fit: SizingFit | None
    events: list[SizingEvent]
    history: list[int]  # thresholds in the order they were set


@dataclass(frozen=True, slots=True)
class Health:
    status: str  # healthy | degraded | critical
    reasons: list[str]


@dataclass(frozen=True, slots=True)
class LlmFigures:
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    tokens_per_second: float | None
    tokens_per_entry: float | None
    cost_usd: float
    truncated: int
    refusals: int
    bisections: int


@dataclass(frozen=True, slots=True)
class TrendFigures:
    trend: str  # rising | falling | steady
    last_minute: float | None
    previous_ten_minutes: float | None


@dataclass(frozen=True, slots=True)
class Trends:
    throughput: TrendFigures
    processing_time: TrendFigures


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    name: str
    state: str
    queues: list[str]


@dataclass(frozen=True, slots=True)
class QueueStats:
    """Everything ``detailed_stats`` reports about one queue, read at ``now_ms``."""

    queue: str
    now_ms: int
    buffer: BufferFigures
    performance: PerformanceFigures
    latency: dict[str, LatencySummary]  # keys.HISTOGRAMS
    counters: Counters
    sizing: SizingFigures
    health: Health
    llm: LlmFigures
    trends: Trends
    memory_efficiency: float
    dead_last_minute: int
    workers: list[WorkerInfo] | None  # None: not checked
    events: list[dict[str, Any]]  # the latest events as the stream holds them
    histograms: dict[str, dict[str, int]]  # name -> bucket upper bound -> count
    # batcher.monitoring.feed_status.fetch_summary; None without a fetcher
    fetch: dict[str, Any] | None
    budget: dict[str, Any] | None  # batcher.budget.Budget.show(); None without a budget
    # a sharded queue's shards, one summary each (batcher.monitoring.sharded); None, and not
    # in the JSON at all, for a queue that is not sharded
    shards: list[dict[str, Any]] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of ``batcher stats --json`` (DESIGN §9); a sharded queue's adds
        ``shards``."""
        out = asdict(self)
        if self.shards is None:
            del out["shards"]
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> QueueStats:
        """Read back a :meth:`to_dict` (``get_detailed_stats()``) dict."""
        s = d["sizing"]
        fit = s["fit"]
        trends = d["trends"]
        workers = d["workers"]
        return cls(
            queue=d["queue"], now_ms=d["now_ms"], buffer=BufferFigures(**d["buffer"]),
            performance=PerformanceFigures(**d["performance"]),
            latency={k: LatencySummary(**v) for k, v in d["latency"].items()},
            counters=Counters(**d["counters"]),
            sizing=SizingFigures(**{
                **s, "fit": None if fit is None else SizingFit(**fit),
                "events": [SizingEvent(**e) for e in s["events"]]}),
            health=Health(**d["health"]), llm=LlmFigures(**d["llm"]),
            trends=Trends(TrendFigures(**trends["throughput"]),
                          TrendFigures(**trends["processing_time"])),
            memory_efficiency=d["memory_efficiency"], dead_last_minute=d["dead_last_minute"],
            workers=None if workers is None else [WorkerInfo(**w) for w in workers],
            events=list(d["events"]), histograms=dict(d["histograms"]), fetch=d["fetch"],
            budget=d["budget"], shards=d.get("shards"),
        )


def as_queue_stats(stats: QueueStats | Mapping[str, Any]) -> QueueStats:
    """The public functions that took a ``detailed_stats`` dict still take one."""
    return stats if isinstance(stats, QueueStats) else QueueStats.from_dict(stats)
