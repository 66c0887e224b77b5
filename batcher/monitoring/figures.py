"""Pure figures: percentiles, throughput windows, trends, health rules. No Redis here.

Everything takes plain mappings and numbers read by :mod:`batcher.stats`, so each rule is
unit-tested on its own.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, cast

from batcher.monitoring.queue_stats import Health, LatencySummary, LlmFigures, TrendFigures

# The upper bounds (ms) of the latency buckets ack.lua counts into, then "+Inf". ack.lua holds
# the same list; a unit test checks that the two agree.
BUCKET_BOUNDS_MS: tuple[int, ...] = (
    5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 120000, 300000, 600000,
)
INF = "+Inf"
# a trend moves when the last minute differs from the ten before it by more than this fraction
TREND_TOLERANCE = 0.10
TREND_RECENT_SECONDS = 60
TREND_BASELINE_SECONDS = 600
# processing over this multiple of the target is critical, over the target degraded
CRITICAL_PROCESSING_FACTOR = 2.0

Trend = Literal["rising", "steady", "falling"]
Status = Literal["healthy", "degraded", "critical"]
_RANK: dict[str, int] = {"healthy": 0, "degraded": 1, "critical": 2}


def _bound(label: str) -> float:
    return math.inf if label == INF else float(label)


def cumulative_buckets(hist: Mapping[str, int]) -> list[tuple[float, int]]:
    """Every bound of :data:`BUCKET_BOUNDS_MS` then +Inf, with the count at or under it."""
    bounds = [float(b) for b in BUCKET_BOUNDS_MS]
    # a bound we do not know (an older ack.lua) still counts, in its place
    bounds += [b for b in (_bound(k) for k in hist) if b not in bounds and b != math.inf]
    out, running = [], 0
    for bound in sorted(bounds):
        running += sum(c for k, c in hist.items() if _bound(k) == bound)
        out.append((bound, running))
    out.append((math.inf, running + hist.get(INF, 0)))
    return out


def percentile(hist: Mapping[str, int], q: float) -> float | None:
    """Quantile ``q`` (0-1) of a bucket histogram, or None when it is empty.

    Linear within the bucket that holds the rank, the lower bound of the first bucket being 0:
    Prometheus's ``histogram_quantile``. A rank in the +Inf bucket returns the highest finite
    bound, the most the buckets can tell.
    """
    buckets = cumulative_buckets(hist)
    total = buckets[-1][1]
    if total == 0:
        return None
    rank = q * total
    lower, below = 0.0, 0
    for bound, count in buckets:
        if count >= rank and count > below:
            if bound == math.inf:
                return lower
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower  # pragma: no cover - the +Inf bucket always holds the total


def latency_summary(hist: Mapping[str, int], sum_ms: float) -> LatencySummary:
    """count, avg (from the exact sum), p50, p95, p99 (from the buckets) of one histogram."""
    count = sum(hist.values())

    def q(x: float) -> float | None:
        value = percentile(hist, x)
        return None if value is None else round(value, 2)

    return LatencySummary(count=count, sum_ms=sum_ms,
                          avg_ms=round(sum_ms / count, 2) if count else 0.0,
                          p50_ms=q(0.50), p95_ms=q(0.95), p99_ms=q(0.99))


def throughput_eps(per_second: Mapping[int, int], now_s: int, window_s: int) -> float:
    """Entries acked per second over the ``window_s`` seconds ending with ``now_s`` (included)."""
    total = sum(n for sec, n in per_second.items() if now_s - window_s < sec <= now_s)
    return total / window_s


def trend(recent: float | None, baseline: float | None,
          tolerance: float = TREND_TOLERANCE) -> Trend:
    """rising / falling when ``recent`` differs from ``baseline`` by more than ``tolerance``.

    No figure for either window (None) is steady: there is nothing to compare.
    """
    if recent is None or baseline is None:
        return "steady"
    if baseline == 0:
        return "rising" if recent > 0 else "steady"
    change = (recent - baseline) / baseline
    if change > tolerance:
        return "rising"
    if change < -tolerance:
        return "falling"
    return "steady"


def throughput_trend(per_second: Mapping[int, int], now_s: int) -> TrendFigures:
    """Entries/s in the last minute against the ten minutes before it."""
    recent = throughput_eps(per_second, now_s, TREND_RECENT_SECONDS)
    baseline = sum(
        n for sec, n in per_second.items()
        if now_s - TREND_RECENT_SECONDS - TREND_BASELINE_SECONDS < sec
        <= now_s - TREND_RECENT_SECONDS
    ) / TREND_BASELINE_SECONDS
    return TrendFigures(trend(recent, baseline), round(recent, 3), round(baseline, 3))


@dataclass(frozen=True, slots=True)
class Sample:
    """One acked batch from the samples list: when, how many entries, how long."""

    ts_ms: int
    n: int
    processing_ms: float


def parse_samples(raw: Iterable[bytes | str]) -> list[Sample]:
    """``ts_ms:n:ms`` items (newest first, as LPUSHed); malformed items are skipped."""
    out: list[Sample] = []
    for item in raw:
        text = item.decode() if isinstance(item, bytes) else item
        parts = text.split(":")
        if len(parts) != 3:
            continue
        try:
            out.append(Sample(int(parts[0]), int(parts[1]), float(parts[2])))
        except ValueError:
            continue
    return out


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def recent_processing(samples: Sequence[Sample], now_ms: int) -> list[float]:
    """Processing ms of the batches acked in the last minute."""
    cutoff = now_ms - TREND_RECENT_SECONDS * 1000
    return [s.processing_ms for s in samples if cutoff < s.ts_ms <= now_ms]


def processing_trend(samples: Sequence[Sample], now_ms: int) -> TrendFigures:
    """Mean processing ms per batch in the last minute against the ten minutes before it."""
    split = now_ms - TREND_RECENT_SECONDS * 1000
    start = split - TREND_BASELINE_SECONDS * 1000
    recent = _mean(recent_processing(samples, now_ms))
    baseline = _mean([s.processing_ms for s in samples if start < s.ts_ms <= split])
    return TrendFigures(trend(recent, baseline), None if recent is None else round(recent, 2),
                        None if baseline is None else round(baseline, 2))


def exact_percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank quantile of exact values (the samples), or None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def memory_efficiency(accepted: int, rejected: int) -> float:
    """accepted ÷ (accepted + rejected): the share of offered entries the buffer took (1.0 idle)."""
    offered = accepted + rejected
    return round(accepted / offered, 4) if offered else 1.0


@dataclass(frozen=True, slots=True)
class HealthInput:
    """What the health rules look at; one snapshot, already read."""

    utilization: float
    early_pressure: float
    emergency_pressure: float
    recent_p95_processing_ms: float | None
    performance_target_ms: float
    throughput_eps_60s: float
    throughput_target_eps: float
    arrival_eps_60s: float | None  # None: unknown (no de-duplication window to count from)
    backlog: int                   # entries waiting: pending + delayed
    size_threshold: int
    dead_last_minute: int
    live_workers: int | None       # None: not checked
    in_flight_batches: int
    paused_reason: str | None = None  # a pause a person must end (LLM quota, credentials)
    paused_for_ms: int = 0
    # (level, reason) of a Redis fault a daemon waits out or waited out lately (backoff.py)
    redis_fault: tuple[str, str] | None = None


def _backlog_growing(h: HealthInput) -> bool:
    if h.backlog == 0:
        return False
    if h.arrival_eps_60s is not None:
        return h.arrival_eps_60s > h.throughput_eps_60s
    # without an arrival rate, a backlog beyond a full batch is taken as growing
    return h.backlog > h.size_threshold


def health(h: HealthInput) -> Health:
    """healthy / degraded / critical and one reason per rule that fired (DESIGN §6).

    Rules: buffer utilisation past the early level (degraded) or the emergency level
    (critical); p95 processing of the last minute over the target (degraded; over twice it,
    critical); throughput under its target while the backlog grows (degraded); entries
    dead-lettered in the last minute (degraded); the queue paused for a reason a person must
    fix, LLM quota or credentials (critical); no live RQ worker (degraded; critical with
    batches in flight, which then wait for nobody); a Redis fault a daemon is waiting out
    (critical) or waited out in the last minute (degraded).
    """
    found: list[tuple[Status, str]] = []
    if h.utilization >= h.emergency_pressure:
        found.append(("critical", f"buffer at {h.utilization:.0%}, past the emergency level "
                                  f"({h.emergency_pressure:.0%})"))
    elif h.utilization >= h.early_pressure:
        found.append(("degraded", f"buffer at {h.utilization:.0%}, past the early-flush level "
                                  f"({h.early_pressure:.0%})"))
    p95 = h.recent_p95_processing_ms
    if p95 is not None and p95 > h.performance_target_ms:
        level: Status = ("critical" if p95 > CRITICAL_PROCESSING_FACTOR * h.performance_target_ms
                         else "degraded")
        found.append((level, f"p95 processing {p95:.0f} ms over the "
                             f"{h.performance_target_ms:.0f} ms target"))
    if h.throughput_eps_60s < h.throughput_target_eps and _backlog_growing(h):
        found.append(("degraded", f"throughput {h.throughput_eps_60s:.2f}/s under the "
                                  f"{h.throughput_target_eps:g}/s target while {h.backlog} "
                                  "entries wait and the backlog grows"))
    if h.dead_last_minute:
        found.append(("degraded", f"{h.dead_last_minute} entries dead-lettered in the last "
                                  "minute"))
    if h.paused_reason:
        found.append(("critical", f"queue paused: {h.paused_reason} (probing again in "
                                  f"{h.paused_for_ms / 1000:.0f} s)"))
    if h.live_workers == 0:
        found.append(("critical" if h.in_flight_batches else "degraded",
                      "no live RQ worker listens on the queue"))
    if h.redis_fault is not None:
        found.append((cast(Status, h.redis_fault[0]), h.redis_fault[1]))
    status: Status = "healthy"
    for level, _ in found:
        if _RANK[level] > _RANK[status]:
            status = level
    return Health(status, [reason for _, reason in found])


def llm_figures(stats: Mapping[bytes, bytes]) -> LlmFigures:
    """Token usage and its estimated cost, from the ``llm_*`` fields the LLM handler adds."""
    def num(name: str) -> float:
        raw = stats.get(name.encode())
        return float(raw) if raw else 0.0

    prompt, completion = num("llm_prompt_tokens"), num("llm_completion_tokens")
    request_s, entries = num("llm_request_ms") / 1000, num("llm_entries")
    return LlmFigures(
        requests=int(num("llm_requests")), prompt_tokens=int(prompt),
        completion_tokens=int(completion), cached_tokens=int(num("llm_cached_tokens")),
        # completion tokens per second of request time: the provider's output speed
        tokens_per_second=round(completion / request_s, 1) if request_s else None,
        tokens_per_entry=round((prompt + completion) / entries, 1) if entries else None,
        cost_usd=round(num("llm_cost_usd"), 6),
        truncated=int(num("llm_truncated")), refusals=int(num("llm_refusals")),
        bisections=int(num("llm_bisections")),
    )
