"""Pure monitoring figures: percentiles, windows, trends, health rules; and the §9 keys."""

from __future__ import annotations

import io
import re
from dataclasses import replace
from importlib import resources

import fakeredis
import pytest
from rich.console import Console

from batcher.exporter import metric_families
from batcher.monitoring import BatchPerformanceMetrics
from batcher.monitoring import figures as f
from batcher.monitoring.queue_stats import Health, LatencySummary, QueueStats, TrendFigures
from batcher.monitoring.report import performance_report
from batcher.records import BatchRecord
from batcher.stats import detailed_stats, read_queue_stats
from batcher.top import bar, render_top, sparkline
from tests.support.builders import T0, entry, make_config, make_scripts

DESIGN_KEYS = {
    "buffer": {"pending", "delayed", "bytes", "utilization", "by_priority", "oldest_age_ms",
               "in_flight_batches", "in_flight_entries", "dead"},
    "performance": {"throughput_eps", "avg_processing_time_ms", "p50_processing_ms",
                    "p95_processing_ms", "p99_processing_ms", "avg_queue_wait_ms",
                    "batches_processed", "entries_processed", "batches_failed"},
    "counters": {"accepted", "duplicates", "rejected", "acked", "flushes", "redeliveries",
                 "dead", "expired", "requeued", "purged"},
    "sizing": {"size_threshold", "min", "max", "adjustments", "effective_thresholds_seconds"},
    "health": {"status", "reasons"},
}

HEALTHY = f.HealthInput(
    utilization=0.1, early_pressure=0.85, emergency_pressure=0.95,
    recent_p95_processing_ms=100.0, performance_target_ms=2000.0, throughput_eps_60s=50.0,
    throughput_target_eps=10.0, arrival_eps_60s=40.0, backlog=5, size_threshold=25,
    dead_last_minute=0, live_workers=2, in_flight_batches=1)


def test_bucket_bounds_match_ack_lua() -> None:
    source = resources.files("batcher").joinpath("lua/ack.lua").read_text("utf-8")
    match = re.search(r"local bounds = \{([0-9, ]+)\}", source)
    assert match is not None
    assert tuple(int(b) for b in match.group(1).split(",")) == f.BUCKET_BOUNDS_MS


def test_percentile_of_an_empty_histogram_is_none() -> None:
    assert f.percentile({}, 0.5) is None


def test_percentile_interpolates_within_the_bucket_from_zero() -> None:
    assert f.percentile({"5": 4}, 0.5) == 2.5
    assert f.percentile({"100": 4}, 0.5) == 75.0  # the bucket is (50, 100]
    assert f.percentile({"50": 1, "100": 1, "250": 1, "1000": 1}, 0.95) == pytest.approx(900)


def test_percentile_in_the_inf_bucket_is_the_highest_finite_bound() -> None:
    assert f.percentile({"+Inf": 3}, 0.99) == 600000.0


def test_cumulative_buckets_cover_every_bound_and_keep_unknown_ones() -> None:
    buckets = f.cumulative_buckets({"10": 2, "7": 1, "+Inf": 1})
    assert buckets[0] == (5.0, 0) and (7.0, 1) in buckets and (10.0, 3) in buckets
    assert buckets[-1] == (float("inf"), 4)


def test_latency_summary_averages_the_exact_sum() -> None:
    summary = f.latency_summary({"100": 2}, 130)
    assert summary == LatencySummary(count=2, sum_ms=130, avg_ms=65.0, p50_ms=75.0,
                                     p95_ms=97.5, p99_ms=99.5)


def test_throughput_window_includes_now_and_excludes_its_start() -> None:
    per_second = {90: 100, 91: 10, 100: 20}
    assert f.throughput_eps(per_second, 100, 10) == 3.0


@pytest.mark.parametrize(("recent", "baseline", "expected"), [
    (1.2, 1.0, "rising"), (1.05, 1.0, "steady"), (0.8, 1.0, "falling"),
    (1.0, 0.0, "rising"), (0.0, 0.0, "steady"), (None, 1.0, "steady"), (1.0, None, "steady"),
])
def test_trend_compares_the_last_minute_with_the_ten_before(
    recent: float | None, baseline: float | None, expected: str
) -> None:
    assert f.trend(recent, baseline) == expected


def test_processing_trend_splits_samples_by_their_timestamp() -> None:
    now = 1_000_000
    samples = f.parse_samples([b"999000:5:300", b"990000:5:100", b"900000:5:100",
                               b"300000:5:999", b"garbage", "1:x:2"])
    assert len(samples) == 4
    assert f.processing_trend(samples, now) == TrendFigures(
        trend="rising", last_minute=200.0, previous_ten_minutes=100.0)


def test_exact_percentile_is_nearest_rank() -> None:
    assert f.exact_percentile([], 0.95) is None
    assert f.exact_percentile([10.0, 30.0, 20.0], 0.5) == 20.0
    assert f.exact_percentile([10.0, 30.0, 20.0], 0.95) == 30.0


def test_memory_efficiency_is_accepted_over_offered() -> None:
    assert f.memory_efficiency(0, 0) == 1.0
    assert f.memory_efficiency(95, 5) == 0.95


def test_health_is_healthy_when_no_rule_fires() -> None:
    assert f.health(HEALTHY) == Health(status="healthy", reasons=[])


@pytest.mark.parametrize(("change", "status", "words"), [
    ({"utilization": 0.9}, "degraded", "early-flush level"),
    ({"utilization": 0.96}, "critical", "emergency level"),
    ({"recent_p95_processing_ms": 2500.0}, "degraded", "over the 2000 ms target"),
    ({"recent_p95_processing_ms": 4500.0}, "critical", "over the 2000 ms target"),
    ({"throughput_eps_60s": 2.0, "arrival_eps_60s": 3.0}, "degraded", "backlog grows"),
    ({"throughput_eps_60s": 2.0, "arrival_eps_60s": None, "backlog": 30}, "degraded",
     "backlog grows"),
    ({"dead_last_minute": 3}, "degraded", "3 entries dead-lettered"),
    ({"live_workers": 0, "in_flight_batches": 0}, "degraded", "no live RQ worker"),
    ({"live_workers": 0}, "critical", "no live RQ worker"),
])
def test_each_health_rule_names_its_reason(change: dict[str, object], status: str,
                                           words: str) -> None:
    result = f.health(replace(HEALTHY, **change))  # type: ignore[arg-type]
    assert result.status == status
    assert len(result.reasons) == 1 and words in result.reasons[0]


def test_slow_throughput_without_a_growing_backlog_is_healthy() -> None:
    quiet = replace(HEALTHY, throughput_eps_60s=0.5, arrival_eps_60s=0.5)
    assert f.health(quiet).status == "healthy"
    assert f.health(replace(quiet, backlog=0, arrival_eps_60s=5.0)).status == "healthy"


def test_unchecked_workers_are_no_reason() -> None:
    assert f.health(replace(HEALTHY, live_workers=None)).status == "healthy"


def test_sparkline_and_bar() -> None:
    assert sparkline([]) == ""
    assert sparkline([1, 1]) == "▁▁"
    assert sparkline([0, 7, 14]) == "▁▅█"
    assert bar(0.5, 4) == "██░░" and bar(2.0, 2) == "██"


@pytest.fixture
def empty_stats(fake_redis: fakeredis.FakeRedis) -> dict[str, object]:
    return detailed_stats(fake_redis, make_config(), check_workers=False)


def test_stats_of_an_empty_queue_carry_every_design_key(empty_stats: dict[str, object]) -> None:
    for section, keys in DESIGN_KEYS.items():
        assert keys <= set(empty_stats[section]), section  # type: ignore[arg-type]
    assert isinstance(empty_stats["events"], list)
    assert {"trends", "latency", "memory_efficiency", "workers"} <= set(empty_stats)
    assert empty_stats["performance"]["p95_processing_ms"] is None  # type: ignore[index]


def test_metrics_report_top_and_exporter_accept_empty_stats(
    empty_stats: dict[str, object]
) -> None:
    metrics = BatchPerformanceMetrics.from_stats(empty_stats)
    assert metrics.queue == "t" and metrics.memory_efficiency == 1.0
    assert metrics.last_optimization_ms is None
    assert performance_report(empty_stats)["recommendations"] == []
    console = Console(width=120, color_system=None, record=True, file=io.StringIO())
    console.print(render_top(empty_stats))
    assert console.export_text().startswith("batcher top  queue t  ")
    names = {family.name for family in metric_families(empty_stats)}
    assert {"batcher_up", "batcher_batch_processing_seconds", "batcher_flushes"} <= names


def test_a_stats_dict_reads_back_into_the_same_figures(fake_redis: fakeredis.FakeRedis) -> None:
    # users' scripts and the seed's functions hand the dict around: reading it back must lose
    # nothing, or `stats --json` and top/exporter would disagree
    s = make_scripts(fake_redis)
    s.enqueue([entry(f"e{i}", i % 3) for i in range(6)], now_ms=T0)
    assert s.flush("b1", manual=True, now_ms=T0 + 5).batch is not None
    assert isinstance(s.claim("b1", 1, now_ms=T0 + 6), BatchRecord)
    s.ack("b1", 1, processing_ms=40, started_ms=T0 + 6, results={},
          failed={"e0": ("boom", 1_000)}, now_ms=T0 + 50)
    figures = read_queue_stats(fake_redis, s.config, now_ms=T0 + 60, check_workers=False)
    assert QueueStats.from_dict(figures.to_dict()) == figures
    assert figures.counters.acked == 5 and figures.buffer.delayed == 1
    assert figures.to_dict()["counters"]["acked"] == 5
