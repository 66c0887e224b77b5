"""``batcher top``: a live terminal view of one queue, drawn with rich from its figures."""

from __future__ import annotations

import io
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from batcher.config import BatchProcessingConfig
from batcher.keys import HISTOGRAMS
from batcher.models import PRIORITY_NAMES
from batcher.monitoring.queue_stats import QueueStats, as_queue_stats
from batcher.stats import read_queue_stats

SPARK_CHARS = "▁▂▃▄▅▆▇█"
HISTORY_POINTS = 60
BAR_WIDTH = 30
SNAPSHOT_WIDTH = 100
_STATUS_STYLE = {"healthy": "bold green", "degraded": "bold yellow", "critical": "bold red"}
_LATENCY_NAMES = {"processing_ms": "processing / batch", "queue_wait_ms": "queue wait / entry",
                  "end_to_end_ms": "end to end / entry"}


@dataclass
class TopHistory:
    """What ``top`` remembers between refreshes: the size threshold and throughput over time."""

    thresholds: deque[int] = field(default_factory=lambda: deque(maxlen=HISTORY_POINTS))
    throughput: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY_POINTS))

    def record(self, stats: QueueStats) -> QueueStats:
        if not self.thresholds:
            # start from the recorded size changes, so the line has a past on the first frame
            self.thresholds.extend(stats.sizing.history)
        self.thresholds.append(stats.sizing.size_threshold)
        self.throughput.append(stats.performance.throughput_eps)
        return stats


def sparkline(values: list[float] | list[int] | deque[int] | deque[float]) -> str:
    """One block character per value, scaled between the smallest and the largest."""
    points = list(values)
    if not points:
        return ""
    lo, hi = min(points), max(points)
    span = hi - lo
    top = len(SPARK_CHARS) - 1
    return "".join(SPARK_CHARS[0 if span == 0 else round((v - lo) / span * top)] for v in points)


def bar(fraction: float, width: int = BAR_WIDTH) -> str:
    """A bar of ``width`` cells, ``fraction`` (0-1) of them filled."""
    filled = max(0, min(width, round(fraction * width)))
    return "█" * filled + "░" * (width - filled)


def _fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def _header(stats: QueueStats) -> RenderableType:
    status = stats.health.status
    text = Text.assemble(("batcher top", "bold"), f"  queue {stats.queue}  ",
                         (status.upper(), _STATUS_STYLE.get(status, "")))
    for reason in stats.health.reasons:
        text.append(f"\n  - {reason}")
    return text


def _throughput(stats: QueueStats, history: TopHistory) -> RenderableType:
    perf = stats.performance
    table = Table(title="throughput (entries/s)", expand=True)
    for col in ("10 s", "60 s", "arrivals 60 s", "trend", "processed", "efficiency"):
        table.add_column(col, justify="right")
    arrival = perf.arrival_eps_60s
    table.add_row(
        f"{perf.throughput_eps:.2f}", f"{perf.throughput_eps_60s:.2f}",
        "-" if arrival is None else f"{arrival:.2f}", stats.trends.throughput.trend,
        f"{perf.entries_processed} in {perf.batches_processed} batches",
        f"{stats.memory_efficiency:.1%}")
    spark = sparkline(history.throughput)
    return Group(table, Text(f"  throughput {spark}")) if spark else table


def _latency(stats: QueueStats) -> RenderableType:
    table = Table(title="latency (ms)", expand=True)
    table.add_column("")
    for col in ("count", "avg", "p50", "p95", "p99"):
        table.add_column(col, justify="right")
    for name in HISTOGRAMS:
        row = stats.latency[name]
        table.add_row(_LATENCY_NAMES[name], str(row.count), _fmt_ms(row.avg_ms),
                      _fmt_ms(row.p50_ms), _fmt_ms(row.p95_ms), _fmt_ms(row.p99_ms))
    return Group(table, Text(f"  processing time trend: {stats.trends.processing_time.trend}"))


def _buffer(stats: QueueStats) -> RenderableType:
    buf = stats.buffer
    capacity = max(1, buf.capacity)
    table = Table(title="buffer", expand=True, show_header=False)
    table.add_column("what")
    table.add_column("bar")
    table.add_column("n", justify="right")
    for p in ("2", "1", "0"):
        n = buf.by_priority[p]
        table.add_row(PRIORITY_NAMES[int(p)], bar(n / capacity), str(n))
    table.add_row("by count", bar(buf.utilization_count), f"{buf.utilization_count:.1%}")
    table.add_row("by bytes", bar(buf.utilization_bytes), f"{buf.utilization_bytes:.1%}")
    table.add_row("delayed / dead", "", f"{buf.delayed} / {buf.dead}")
    table.add_row("in flight", "", f"{buf.in_flight_batches} batches, "
                                   f"{buf.in_flight_entries} entries")
    table.add_row("oldest", "", f"{buf.oldest_age_ms / 1000:.1f} s")
    if buf.paused_reason:
        table.add_row("paused", "", buf.paused_reason)
    llm = stats.llm
    if llm.requests:
        table.add_row("LLM tokens in / out", "", f"{llm.prompt_tokens:,} / "
                                                f"{llm.completion_tokens:,}")
        table.add_row("LLM tokens/s, /entry", "", f"{llm.tokens_per_second or '-'}, "
                                                 f"{llm.tokens_per_entry or '-'}")
        table.add_row("LLM est. cost", "", f"${llm.cost_usd:,.4f}")
    return table


def _sizing(stats: QueueStats, history: TopHistory) -> RenderableType:
    sizing = stats.sizing
    lines = Text()
    lines.append(f"size threshold {sizing.size_threshold} "
                 f"[{sizing.min}..{sizing.max}]  adjustments {sizing.adjustments}\n")
    lines.append(f"  {sparkline(history.thresholds)}\n")
    eff = sizing.effective_thresholds_seconds
    lines.append(f"deadlines s: normal {eff['0']:g}  high {eff['1']:g}  urgent {eff['2']:g}\n")
    for event in sizing.events[:3]:
        lines.append(f"  {event.before} -> {event.after} ({event.mode})\n")
    budget = stats.budget
    if budget:
        lines.append(f"budget {budget['name']}: waits {budget['waits']}\n")
        for bucket, label in (("req", "requests"), ("in", "input tok"), ("out", "output tok")):
            b = budget[bucket]
            if b["limit_per_minute"]:
                left = b["left"] or 0
                lines.append(f"  {label} {bar(max(0.0, left) / b['limit_per_minute'], 10)} "
                             f"{left:,.0f} / {b['limit_per_minute']:,.0f} a minute\n")
    return Panel(lines, title="sizing")


def _flushes_and_workers(stats: QueueStats) -> RenderableType:
    table = Table(title="flushes and workers", expand=True)
    table.add_column("flush reason")
    table.add_column("count", justify="right")
    table.add_column("worker")
    table.add_column("state")
    flushes = list(stats.counters.flushes.items())
    workers = stats.workers
    rows: list[tuple[str, str]]
    if workers is None:
        rows = [("(not checked)", "")]
    elif not workers:
        rows = [("(none alive)", "")]
    else:
        rows = [(w.name, w.state) for w in workers]
    for i in range(max(len(flushes), len(rows))):
        reason, count = flushes[i] if i < len(flushes) else ("", "")
        name, state = rows[i] if i < len(rows) else ("", "")
        table.add_row(reason, str(count), name, state)
    return table


def render_top(figures: QueueStats | Mapping[str, Any],
               history: TopHistory | None = None) -> RenderableType:
    """One frame of ``top`` from a queue's figures (or a ``detailed_stats`` dict) and what
    earlier frames recorded."""
    stats = as_queue_stats(figures)
    history = history or TopHistory()
    if not history.thresholds:
        history.record(stats)
    parts = [_header(stats), _throughput(stats, history), _latency(stats), _buffer(stats),
             _sizing(stats, history), _flushes_and_workers(stats)]
    if stats.shards:
        parts.append(_shards(stats.shards))
    return Group(*parts)


def _shards(shards: list[dict[str, Any]]) -> RenderableType:
    # a sharded queue: the panels above sum its shards; this says which one runs hot
    table = Table(title="shards", expand=True)
    for column in ("shard", "pending", "in flight", "dead", "acked", "eps 60s", "size"):
        table.add_column(column, justify="left" if column == "shard" else "right")
    for s in shards:
        table.add_row(s["queue"], str(s["pending"]), str(s["in_flight_batches"]),
                      str(s["dead"]), str(s["acked"]), f"{s['throughput_eps_60s']:g}",
                      str(s["size_threshold"]))
    return table


def top_snapshot(client: redis.Redis, config: BatchProcessingConfig, *,
                 check_workers: bool = True) -> str:
    """``top`` rendered once to plain text, 100 columns wide. Raises ``redis.RedisError``."""
    history = TopHistory()
    stats = history.record(read_queue_stats(client, config, check_workers=check_workers))
    console = Console(file=io.StringIO(), width=SNAPSHOT_WIDTH, color_system=None,
                      force_terminal=False, record=True)
    console.print(render_top(stats, history))
    return console.export_text()


def live_view(read: Callable[[], QueueStats], render: Callable[[QueueStats], RenderableType],
              refresh_seconds: float, *, stop: threading.Event | None = None,
              console: Console | None = None) -> None:
    """Draw ``render(read())``, then again every ``refresh_seconds`` until ``stop`` is set or
    Ctrl-C: the one live loop of ``top`` and ``stats --watch``.

    The first read raises ``redis.RedisError`` when Redis is unreachable; later failures are
    shown under the last frame and retried, so a Redis restart does not end the session.
    """
    stop = stop or threading.Event()
    stats = read()
    try:
        with Live(render(stats), console=console, auto_refresh=False, screen=False) as live:
            while not stop.wait(refresh_seconds):
                try:
                    stats = read()
                except redis.RedisError as exc:
                    live.update(Group(render(stats),
                                      Text(f"Redis unreachable: {exc}", style="bold red")),
                                refresh=True)
                    continue
                live.update(render(stats), refresh=True)
    except KeyboardInterrupt:
        return


def run_top(
    client: redis.Redis,
    config: BatchProcessingConfig,
    refresh_seconds: float = 1.0,
    *,
    stop: threading.Event | None = None,
    console: Console | None = None,
) -> None:
    """Redraw ``top`` every ``refresh_seconds`` until ``stop`` is set or Ctrl-C (``live_view``)."""
    history = TopHistory()
    live_view(lambda: history.record(read_queue_stats(client, config)),
              lambda stats: render_top(stats, history), refresh_seconds, stop=stop,
              console=console)
