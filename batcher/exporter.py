"""``batcher exporter``: Prometheus metrics read from ``read_queue_stats`` on every scrape.

Every metric is named ``batcher_*`` and labelled with ``queue``. Durations are in seconds, as
Prometheus expects; the latency histograms are ack.lua's bucket hashes made cumulative, with
``_sum`` from the exact sums in the stats hash and ``_count`` from the buckets.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any
from wsgiref.simple_server import WSGIServer

import redis
import structlog
from prometheus_client import start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from batcher.config import BatchProcessingConfig
from batcher.connection import same_server
from batcher.monitoring import figures
from batcher.monitoring.queue_stats import QueueStats, as_queue_stats
from batcher.stats import read_queue_stats

log = structlog.stdlib.get_logger(__name__)

DEFAULT_PORT = 9108
HISTOGRAM_METRICS = {
    "processing_ms": ("batcher_batch_processing_seconds", "Handler time per batch."),
    "queue_wait_ms": ("batcher_entry_queue_wait_seconds",
                      "Time from enqueue to the handler's start, per acked entry."),
    "end_to_end_ms": ("batcher_entry_end_to_end_seconds",
                      "Time from enqueue to ack, per acked entry."),
}
_STATUSES = ("healthy", "degraded", "critical")
_TRENDS = ("rising", "steady", "falling")


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else f"{bound / 1000:g}"


def histogram(name: str, doc: str, queue: str, hist: Mapping[str, int],
              sum_ms: float) -> HistogramMetricFamily:
    """A Prometheus histogram (seconds) from one of our bucket hashes (ms upper bound -> count)."""
    family = HistogramMetricFamily(name, doc, labels=["queue"])
    buckets = [(_le(bound), float(count)) for bound, count in figures.cumulative_buckets(hist)]
    family.add_metric([queue], buckets, sum_value=sum_ms / 1000)
    return family


class _Families:
    """Gauges and counters of one scrape, created on first use, each with a ``queue`` label."""

    def __init__(self) -> None:
        self.all: dict[str, Metric] = {}

    def gauge(self, name: str, doc: str, value: float | None, queue: str,
              **labels: str) -> None:
        if value is None:
            return
        family = self.all.get(name)
        if family is None:
            family = self.all[name] = GaugeMetricFamily(name, doc, labels=["queue", *labels])
        family.add_metric([queue, *labels.values()], float(value))  # type: ignore[attr-defined]

    def counter(self, name: str, doc: str, value: float, queue: str, **labels: str) -> None:
        family = self.all.get(name)
        if family is None:
            family = self.all[name] = CounterMetricFamily(name, doc, labels=["queue", *labels])
        family.add_metric([queue, *labels.values()], float(value))  # type: ignore[attr-defined]


def _seconds(ms: float | None) -> float | None:
    return None if ms is None else ms / 1000


def _buffer_metrics(f: _Families, q: str, stats: QueueStats) -> None:
    b = stats.buffer
    f.gauge("batcher_buffer_pending_entries", "Entries pending.", b.pending, q)
    f.gauge("batcher_buffer_delayed_entries", "Entries backing off after a failure.",
            b.delayed, q)
    f.gauge("batcher_buffer_bytes", "Bytes of the pending envelopes.", b.bytes, q)
    f.gauge("batcher_buffer_utilization_ratio",
            "Buffer utilisation, max of count and bytes (0-1).", b.utilization, q)
    f.gauge("batcher_buffer_utilization_count_ratio", "Pending ÷ max_buffer_size.",
            b.utilization_count, q)
    f.gauge("batcher_buffer_utilization_bytes_ratio", "Pending bytes ÷ max_buffer_bytes.",
            b.utilization_bytes, q)
    for p, n in b.by_priority.items():
        f.gauge("batcher_buffer_pending_by_priority_entries", "Entries pending per priority.",
                n, q, priority=p)
    f.gauge("batcher_buffer_oldest_age_seconds", "Age of the oldest pending entry.",
            b.oldest_age_ms / 1000, q)
    f.gauge("batcher_inflight_batches", "Batches flushed and not yet acked.",
            b.in_flight_batches, q)
    f.gauge("batcher_inflight_entries", "Entries in in-flight batches.",
            b.in_flight_entries, q)
    f.gauge("batcher_dead_entries", "Entries in the dead set now.", b.dead, q)
    f.gauge("batcher_dead_last_minute_entries", "Entries dead-lettered in the last minute.",
            stats.dead_last_minute, q)
    reason = b.paused_reason
    f.gauge("batcher_paused", "1 while the queue is paused for a reason a person must fix "
            "(LLM quota, credentials).", int(reason is not None), q, reason=reason or "")


def _llm_metrics(f: _Families, q: str, stats: QueueStats) -> None:
    llm = stats.llm
    if not llm.requests:
        return
    for kind, n in (("prompt", llm.prompt_tokens), ("completion", llm.completion_tokens),
                    ("cached", llm.cached_tokens)):
        f.counter("batcher_llm_tokens", "LLM tokens used, by kind.", n, q, kind=kind)
    f.counter("batcher_llm_requests", "LLM requests answered.", llm.requests, q)
    f.counter("batcher_llm_cost_usd", "Estimated LLM cost (LLM_PRICE_* settings).",
              llm.cost_usd, q)
    f.gauge("batcher_llm_tokens_per_second", "Completion tokens per second of request time.",
            llm.tokens_per_second, q)
    f.gauge("batcher_llm_tokens_per_entry", "Prompt and completion tokens per acked entry.",
            llm.tokens_per_entry, q)


def _performance_metrics(f: _Families, q: str, stats: QueueStats) -> None:
    p = stats.performance
    for window, eps in (("10s", p.throughput_eps), ("60s", p.throughput_eps_60s)):
        f.gauge("batcher_throughput_entries_per_second", "Entries acked per second.", eps, q,
                window=window)
    f.gauge("batcher_arrival_entries_per_second", "Entries accepted per second (60 s).",
            p.arrival_eps_60s, q, window="60s")
    f.gauge("batcher_recent_processing_p95_seconds",
            "p95 handler time of the batches acked in the last minute.",
            _seconds(p.recent_p95_processing_ms), q)
    f.gauge("batcher_avg_batch_size_entries", "Entries acked per processed batch.",
            p.avg_batch_size, q)
    f.counter("batcher_batches_processed", "Batches acked.", p.batches_processed, q)
    f.counter("batcher_batches_failed", "Failed handler calls.", p.batches_failed, q)
    for name, summary in stats.latency.items():
        for stat, ms in (("avg", summary.avg_ms), ("p50", summary.p50_ms),
                         ("p95", summary.p95_ms), ("p99", summary.p99_ms)):
            f.gauge("batcher_latency_seconds", "Latency figures (avg and bucket quantiles).",
                    _seconds(ms), q, histogram=name.removesuffix("_ms"), stat=stat)


def _other_metrics(f: _Families, q: str, stats: QueueStats) -> None:
    c, s, health = stats.counters, stats.sizing, stats.health
    for name, n in c.items():
        f.counter(f"batcher_{name}", f"Cumulative {name.replace('_', ' ')}.", n, q)
    for reason, n in c.flushes.items():
        f.counter("batcher_flushes", "Batches flushed, by reason.", n, q, reason=reason)
    f.gauge("batcher_size_threshold_entries", "The live adaptive size threshold.",
            s.size_threshold, q)
    f.gauge("batcher_size_min_entries", "min_batch_size.", s.min, q)
    f.gauge("batcher_size_max_entries", "max_batch_size.", s.max, q)
    f.counter("batcher_sizing_adjustments", "Size threshold changes.", s.adjustments, q)
    for p, secs in s.effective_thresholds_seconds.items():
        f.gauge("batcher_effective_time_threshold_seconds",
                "Deadline per priority after the adaptive timeout.", secs, q, priority=p)
    for status in _STATUSES:
        f.gauge("batcher_health_status", "1 for the current health status.",
                int(health.status == status), q, status=status)
    f.gauge("batcher_health_reasons", "Health rules firing.", len(health.reasons), q)
    f.gauge("batcher_memory_efficiency_ratio", "accepted ÷ (accepted + rejected).",
            stats.memory_efficiency, q)
    for figure, t in (("throughput", stats.trends.throughput),
                      ("processing_time", stats.trends.processing_time)):
        for direction in _TRENDS:
            f.gauge("batcher_trend", "1 for the current trend (last minute vs the ten before).",
                    int(t.trend == direction), q, figure=figure, direction=direction)
    budget = stats.budget
    if budget:
        for bucket in ("req", "in", "out"):
            b = budget[bucket]
            f.gauge("batcher_budget_limit_per_minute", "A shared budget's limit per minute "
                    "(req: requests, in/out: tokens; 0 = none).", b["limit_per_minute"], q,
                    budget=budget["name"], bucket=bucket)
            f.gauge("batcher_budget_left", "What a shared budget has left now.", b["left"], q,
                    budget=budget["name"], bucket=bucket)
        f.counter("batcher_budget_waits", "Calls that waited for a budget's refill.",
                  budget["waits"], q, budget=budget["name"])
    if stats.workers is not None:
        f.gauge("batcher_workers_live", "RQ workers registered on the queue's RQ queues.",
                len(stats.workers), q)


def _fetch_metrics(f: _Families, q: str, fetch: Mapping[str, Any] | None) -> None:
    if not fetch:
        return
    for name in ("feeds", "due_now", "fetching", "failing", "hosts_backed_off"):
        f.gauge(f"batcher_fetch_{name}", f"Feed schedule: {name.replace('_', ' ')}.",
                fetch[name], q)
    for name, n in fetch["totals"].items():
        f.counter(f"batcher_fetch_{name}", f"Over every feed: {name.replace('_', ' ')}.", n, q)
    # per feed: only the feeds `fetch_summary` shows (failing first, at most FEEDS_SHOWN),
    # so 10,000 feeds never make 10,000 series
    for feed in fetch["feeds_shown"]:
        f.gauge("batcher_fetch_feed_failures", "Failures in a row, per feed (capped set).",
                feed["failures"], q, feed=feed["source"])
        for name in ("fetched", "accepted", "duplicates", "faults", "errors"):
            f.counter(f"batcher_fetch_feed_{name}", f"Per feed (capped set): {name}.",
                      feed[name], q, feed=feed["source"])


def _shard_metrics(f: _Families, q: str, shards: list[dict[str, Any]] | None) -> None:
    # a sharded queue: the queue's series above are the shards' summed; these say which
    # shard runs hot (one series per shard, label shard)
    for shard in shards or ():
        for name in ("pending", "delayed", "utilization", "in_flight_batches", "dead",
                     "size_threshold"):
            f.gauge(f"batcher_shard_{name}", f"Per shard of a sharded queue: {name}.",
                    shard[name], q, shard=shard["queue"])
        for name in ("accepted", "acked", "rejected"):
            f.counter(f"batcher_shard_{name}", f"Per shard of a sharded queue: {name}.",
                      shard[name], q, shard=shard["queue"])


def metric_families(figures: QueueStats | Mapping[str, Any]) -> list[Metric]:
    """Every metric of one queue's figures (a ``detailed_stats`` dict is read too)."""
    stats = as_queue_stats(figures)
    q = stats.queue
    f = _Families()
    f.gauge("batcher_up", "1 when the queue's figures could be read from Redis.", 1, q)
    _buffer_metrics(f, q, stats)
    _performance_metrics(f, q, stats)
    _other_metrics(f, q, stats)
    _llm_metrics(f, q, stats)
    _fetch_metrics(f, q, stats.fetch)
    _shard_metrics(f, q, stats.shards)
    hists = [histogram(name, doc, q, stats.histograms[key], stats.latency[key].sum_ms)
             for key, (name, doc) in HISTOGRAM_METRICS.items()]
    return [*f.all.values(), *hists]


class BatcherCollector(Collector):
    """Reads ``read_queue_stats`` of each queue on every scrape; ``batcher_up 0`` when it fails."""

    def __init__(self, client: redis.Redis, configs: Sequence[BatchProcessingConfig], *,
                 check_workers: bool = True):
        self.client = client
        self.configs = list(configs)
        self.check_workers = check_workers

    def collect(self) -> Iterator[Metric]:
        for config in self.configs:
            try:
                # on a cluster each queue is read on the master owning its slot
                client = same_server(self.client, config.keys.state)
                stats = read_queue_stats(client, config, check_workers=self.check_workers)
            except redis.RedisError as exc:
                log.warning("exporter.scrape_failed", queue=config.queue, error=str(exc))
                up = GaugeMetricFamily("batcher_up", "1 when the queue's figures could be read "
                                       "from Redis.", labels=["queue"])
                up.add_metric([config.queue], 0.0)
                yield up
                continue
            yield from metric_families(stats)


def serve_exporter(
    client: redis.Redis,
    config: BatchProcessingConfig,
    port: int = DEFAULT_PORT,
    addr: str = "127.0.0.1",
    *,
    check_workers: bool = True,
) -> tuple[WSGIServer, threading.Thread]:
    """Serve ``/metrics`` for ``config.queue`` on ``addr:port`` in a daemon thread.

    Returns the server and its thread (``server.shutdown()`` then ``server.server_close()``
    stop it). Raises ``OSError``
    when the port cannot be bound. Only our collector is registered: no process metrics.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BatcherCollector(client, [config], check_workers=check_workers))
    server, thread = start_http_server(port, addr=addr, registry=registry)
    log.info("exporter.started", queue=config.queue, addr=addr, port=server.server_port)
    return server, thread
