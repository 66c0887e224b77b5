"""The seed's seven checks, each against the real server and the library (not mocks).

Initialisation with the optimised defaults, priority queue handling, adaptive sizing, memory
pressure, performance monitoring, timeout optimisation and the global manager.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis as redis_py
from rq import Queue
from structlog.testing import capture_logs

from batcher import processing as tasks
from batcher.config import BatchProcessingConfig
from batcher.coordinator import Coordinator
from batcher.errors import BufferFullError
from batcher.keys import QueueKeys
from batcher.monitoring import BatchPerformanceMetrics
from batcher.presets import (
    configure,
    create_high_performance_batch_manager,
    create_memory_efficient_batch_manager,
    create_optimized_batch_manager,
    get_batch_performance_report,
    get_global_manager,
    log_batch_performance_summary,
    reset_global_manager,
)
from batcher.records import BatchRecord
from batcher.rq.task import process_batch
from batcher.sizing import effective_threshold_factor
from batcher.stats import detailed_stats
from tests.support.builders import T0, entry
from tests.support.known_acks import record_known_acks

pytestmark = pytest.mark.real


@pytest.fixture
def worker_env(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """What an RQ worker process would have: BATCH_* settings and no cached contexts."""
    monkeypatch.setenv("BATCH_REDIS_URL", redis_url)
    monkeypatch.setenv("BATCH_HANDLER", "workers.handlers.echo:handle")
    tasks._CONTEXTS.clear()
    yield
    for ctx in tasks._CONTEXTS.values():
        ctx.client.close()
    tasks._CONTEXTS.clear()


@pytest.fixture
def global_manager() -> Iterator[None]:
    reset_global_manager()
    yield
    reset_global_manager()


def _manager(real_redis: redis_py.Redis, redis_url: str, **overrides: Any) -> Any:
    return create_optimized_batch_manager(
        redis=real_redis, redis_url=redis_url, log_format="json", **overrides)


def _queued_jobs(client: redis_py.Redis, queue: str, priority: int) -> list[tuple[str, int]]:
    """(batch id, attempt) of the jobs waiting on the RQ queue of ``priority``."""
    jobs = Queue(QueueKeys(queue).rq_queue(priority), connection=client).job_ids
    return [(j.rsplit("-", 1)[0], int(j.rsplit("-", 1)[1])) for j in jobs]


# -- 1. initialisation with the optimised defaults ------------------------------------------------

def test_optimized_manager_starts_with_the_seed_defaults(
    real_redis: redis_py.Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATCH_QUEUE", "from-env")
    monkeypatch.setenv("BATCH_SIZE_THRESHOLD", "7")  # the preset names it, so it is not used
    c = _manager(real_redis, redis_url).config
    assert c.queue == "from-env"
    assert (c.size_threshold, c.min_batch_size, c.max_batch_size) == (25, 5, 50)
    assert (c.time_threshold_seconds, c.high_time_threshold_seconds,
            c.urgent_time_threshold_seconds) == (300, 120, 60)
    assert c.enable_adaptive_sizing and c.enable_adaptive_timeout and c.enable_priority_flushing
    assert _manager(real_redis, redis_url, size_threshold=30).config.size_threshold == 30


def test_other_presets_carry_their_documented_numbers(
    real_redis: redis_py.Redis, redis_url: str
) -> None:
    fast = create_high_performance_batch_manager(redis=real_redis, redis_url=redis_url).config
    small = create_memory_efficient_batch_manager(redis=real_redis, redis_url=redis_url).config
    assert (fast.size_threshold, fast.max_batch_size, fast.max_buffer_size) == (100, 200, 10_000)
    assert fast.time_threshold_seconds == 60
    assert (small.max_buffer_size, small.max_buffer_bytes) == (200, 8 * 1024 * 1024)
    assert (small.size_threshold, small.max_batch_bytes) == (10, 256 * 1024)


# -- 2. priority queue handling -------------------------------------------------------------------

def test_urgent_entries_flush_first_and_every_result_comes_back(
    real_redis: redis_py.Redis, redis_url: str, worker_env: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BATCH_QUEUE", "prio")
    manager = _manager(real_redis, redis_url, queue="prio", size_threshold=5)
    for i, priority in enumerate([0, 0, 0, 1, 1, 2, 2]):
        manager.queue_entry({"n": i}, "feed", f"e{i}", priority=priority)
    stats = detailed_stats(real_redis, manager.config, check_workers=False)
    assert stats["buffer"]["by_priority"] == {"0": 3, "1": 2, "2": 2}

    coordinator = Coordinator(real_redis, manager.config)
    coordinator.start()
    coordinator.drain(manual=True)
    urgent, normal = _queued_jobs(real_redis, "prio", 2), _queued_jobs(real_redis, "prio", 0)
    assert len(urgent) == 1 and len(normal) == 1  # 5 best (2 urgent, 2 high, 1 normal), then 2
    first = BatchRecord.from_hash(urgent[0][0], real_redis.hgetall(
        manager.keys.batch(urgent[0][0]))).to_batch("prio")
    assert [e.priority for e in first.entries] == [2, 2, 1, 1, 0]

    for batch_id, attempt in urgent + normal:
        assert process_batch("prio", batch_id, attempt)["status"] == "acked"
    assert [manager.get_result(f"e{i}") for i in range(7)] == [{"n": i} for i in range(7)]
    after = detailed_stats(real_redis, manager.config, check_workers=False)
    assert after["performance"]["entries_processed"] == 7
    assert after["performance"]["batches_processed"] == 2
    assert after["counters"]["flushes"]["manual"] == 2


# -- 3. adaptive sizing ---------------------------------------------------------------------------

def _slow_size_batches(manager: Any, count: int, processing_ms: float) -> None:
    """``count`` size-triggered batches of the live threshold, each taking ``processing_ms``."""
    scripts = manager.scripts
    for b in range(count):
        size = int(real_threshold(manager))
        scripts.enqueue([entry(f"s{b}-{i}") for i in range(size)])
        decision = scripts.flush(f"sz{b}")
        assert decision.batch is not None and decision.batch.reason == "size"
        record = scripts.claim(f"sz{b}", 1)
        assert isinstance(record, BatchRecord) and record.claimed_ms is not None
        scripts.ack(f"sz{b}", 1, processing_ms=processing_ms,
                    started_ms=record.claimed_ms, results={})


def real_threshold(manager: Any) -> int:
    return int(manager.redis.hget(manager.keys.state, "size_threshold"))


def test_slow_batches_shrink_the_size_threshold_and_the_change_is_an_event(
    real_redis: redis_py.Redis, redis_url: str
) -> None:
    manager = _manager(real_redis, redis_url, queue="sizing", performance_target_ms=200)
    coordinator = Coordinator(real_redis, manager.config)
    coordinator.start()
    _slow_size_batches(manager, 10, processing_ms=400)  # 25 entries in 400 ms, goal 180 ms
    decision = coordinator.adjust_size()
    # AIMD: 25 - 25 %, floored
    assert decision is not None and decision.before == 25 and decision.after == 18

    stats = detailed_stats(real_redis, manager.config, check_workers=False)
    assert stats["sizing"]["size_threshold"] == decision.after == real_threshold(manager)
    assert stats["sizing"]["adjustments"] == 1
    event = stats["sizing"]["events"][0]
    assert (event["before"], event["after"]) == (25, decision.after)
    assert event["evidence"] == decision.evidence
    assert stats["sizing"]["history"] == [decision.after]
    metrics = BatchPerformanceMetrics.from_stats(stats)
    assert metrics.size_optimizations == 1 and metrics.last_optimization_ms == event["ms"]


def test_adaptive_sizing_off_freezes_the_size(real_redis: redis_py.Redis, redis_url: str) -> None:
    manager = _manager(real_redis, redis_url, queue="frozen", enable_adaptive_sizing=False)
    coordinator = Coordinator(real_redis, manager.config)
    coordinator.start()
    _slow_size_batches(manager, 10, processing_ms=5000)
    assert coordinator.adjust_size() is None
    assert real_threshold(manager) == 25


# -- 4. memory pressure ---------------------------------------------------------------------------

def test_a_full_buffer_rejects_counts_efficiency_and_flushes_as_emergency(
    real_redis: redis_py.Redis, redis_url: str
) -> None:
    manager = _manager(real_redis, redis_url, queue="pressure", max_buffer_size=20)
    manager.queue_many([{"id": f"p{i}", "source": "s", "payload": {}} for i in range(20)])
    with pytest.raises(BufferFullError) as caught:
        manager.queue_many([{"id": f"x{i}", "source": "s", "payload": {}} for i in range(5)])
    assert caught.value.result.rejected == 5

    stats = detailed_stats(real_redis, manager.config, check_workers=False)
    assert stats["counters"]["accepted"] == 20 and stats["counters"]["rejected"] == 5
    assert stats["memory_efficiency"] == 0.8
    assert stats["buffer"]["utilization"] == stats["buffer"]["utilization_count"] == 1.0
    assert stats["health"]["status"] == "critical"
    assert any("emergency" in r for r in stats["health"]["reasons"])

    coordinator = Coordinator(real_redis, manager.config)
    coordinator.start()
    coordinator.drain()
    after = detailed_stats(real_redis, manager.config, check_workers=False)
    assert after["counters"]["flushes"]["emergency"] == 1
    assert after["buffer"]["pending"] == 0 and after["buffer"]["in_flight_entries"] == 20


# -- 5. performance monitoring --------------------------------------------------------------------

def test_figures_from_a_known_sequence_of_acks_are_exact(
    real_redis: redis_py.Redis, redis_url: str
) -> None:
    manager = _manager(real_redis, redis_url, queue="perf", size_threshold=10,
                       min_batch_size=5)
    now = T0 + 700_000
    record_known_acks(manager.scripts, now)
    stats = detailed_stats(real_redis, manager.config, now_ms=now, check_workers=False)
    perf, lat = stats["performance"], stats["latency"]
    assert (perf["throughput_eps"], perf["throughput_eps_60s"]) == (0.5, 0.167)
    assert perf["arrival_eps_60s"] == 0.167
    assert (perf["batches_processed"], perf["entries_processed"]) == (4, 20)
    assert perf["avg_batch_size"] == 5.0
    # processing 40, 80, 200, 900 ms: buckets 50, 100, 250, 1000
    assert lat["processing_ms"] == {"count": 4, "sum_ms": 1220, "avg_ms": 305.0,
                                    "p50_ms": 100.0, "p95_ms": 900.0, "p99_ms": 980.0}
    assert (perf["avg_processing_time_ms"], perf["p50_processing_ms"],
            perf["p95_processing_ms"], perf["p99_processing_ms"]) == (305.0, 100.0, 900.0, 980.0)
    # waits 100, 300, 1000, 3000 ms five times each; end to end adds the processing time
    assert lat["queue_wait_ms"] == {"count": 20, "sum_ms": 22000, "avg_ms": 1100.0,
                                    "p50_ms": 500.0, "p95_ms": 4500.0, "p99_ms": 4900.0}
    assert lat["end_to_end_ms"]["avg_ms"] == 1405.0 and perf["avg_queue_wait_ms"] == 1100.0
    assert perf["recent_p95_processing_ms"] == 900.0
    assert stats["trends"] == {
        "throughput": {"trend": "rising", "last_minute": 0.167, "previous_ten_minutes": 0.017},
        "processing_time": {"trend": "rising", "last_minute": 550.0,
                            "previous_ten_minutes": 60.0},
    }
    assert stats["memory_efficiency"] == 1.0
    assert stats["health"] == {"status": "healthy", "reasons": []}
    assert [e["type"] for e in stats["events"][:2]] == ["ack", "flush"]


def test_no_live_worker_degrades_health(real_redis: redis_py.Redis, redis_url: str) -> None:
    manager = _manager(real_redis, redis_url, queue="lonely")
    stats = detailed_stats(real_redis, manager.config)
    assert stats["workers"] == []
    assert stats["health"] == {"status": "degraded",
                               "reasons": ["no live RQ worker listens on the queue"]}


# -- 6. timeout optimisation ----------------------------------------------------------------------

def test_a_filling_buffer_brings_deadlines_forward(
    real_redis: redis_py.Redis, redis_url: str
) -> None:
    adaptive = _manager(real_redis, redis_url, queue="adaptive", size_threshold=80,
                        max_batch_size=100, max_buffer_size=100)
    fixed = _manager(real_redis, redis_url, queue="fixed", size_threshold=80,
                     max_batch_size=100, max_buffer_size=100, enable_adaptive_timeout=False)
    for manager in (adaptive, fixed):
        manager.scripts.enqueue([entry(f"t{i}") for i in range(70)], now_ms=T0)
    factor = effective_threshold_factor(0.7, 0.85)  # 1 - 0.75 * (0.2 / 0.35)
    stats = detailed_stats(real_redis, adaptive.config, now_ms=T0, check_workers=False)
    assert stats["sizing"]["effective_thresholds_seconds"] == {
        "0": round(300 * factor, 3), "1": round(120 * factor, 3), "2": round(60 * factor, 3)}
    assert detailed_stats(real_redis, fixed.config, now_ms=T0, check_workers=False)[
        "sizing"]["effective_thresholds_seconds"] == {"0": 300.0, "1": 120.0, "2": 60.0}

    due_ms = T0 + round(300_000 * factor)
    assert adaptive.scripts.flush("early", now_ms=due_ms - 1000).batch is None
    flushed = adaptive.scripts.flush("due", now_ms=due_ms + 1)
    assert flushed.batch is not None and flushed.batch.reason == "deadline"
    assert fixed.scripts.flush("fixed", now_ms=due_ms + 1).batch is None


# -- 7. the global manager ------------------------------------------------------------------------

def test_global_manager_reports_and_logs_its_queue(
    real_redis: redis_py.Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch,
    global_manager: None,
) -> None:
    monkeypatch.setenv("BATCH_REDIS_URL", redis_url)
    monkeypatch.setenv("BATCH_QUEUE", "glob")
    built = get_global_manager()
    assert built is get_global_manager() and built.config.queue == "glob"
    assert built.config.size_threshold == 25
    built.redis.close()

    manager = configure(redis=real_redis, queue="glob2")
    assert get_global_manager() is manager
    manager.queue_entry({"title": "t"}, "rss", "g1", priority=1)
    report = get_batch_performance_report()
    assert report["queue"] == "glob2" and report["metrics"]["queue"] == "glob2"
    assert report["metrics"]["size_threshold"] == 25
    assert report["status"] == "degraded"  # no RQ worker in this test
    assert any("batcher worker" in r for r in report["recommendations"])

    with capture_logs() as logs:
        log_batch_performance_summary()
    summaries = [e for e in logs if e["event"] == "performance.summary"]
    assert len(summaries) == 1
    assert summaries[0]["queue"] == "glob2" and summaries[0]["size_threshold"] == 25
    assert summaries[0]["status"] == "degraded"


def test_coordinator_logs_the_performance_summary_every_report_interval(
    redis_url: str, real_redis: redis_py.Redis
) -> None:
    config = BatchProcessingConfig(redis_url=redis_url, queue="report",
                                   report_interval_seconds=30)
    now = [1000.0]
    coordinator = Coordinator(real_redis, config, clock=lambda: now[0])
    coordinator.start()
    with capture_logs() as logs:
        coordinator.step()  # the first interval has not passed
        now[0] += 29.9
        coordinator.step()
        now[0] += 0.1
        coordinator.step()  # 30 s after start: one report
        coordinator.step()  # the next is 30 s away again
    summaries = [e for e in logs if e["event"] == "performance.summary"]
    assert len(summaries) == 1
    assert summaries[0]["queue"] == "report"
