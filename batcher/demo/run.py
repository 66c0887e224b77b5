"""``batcher demo``: the whole pipeline on sample feeds, ending on its own in under a minute.

Feed server and fake LLM run in this process; fetchers, synthetic producers, a coordinator and two
workers run as separate processes against one Redis (an embedded one unless BATCH_REDIS_URL is set).
"""

from __future__ import annotations

import multiprocessing
import os
import random
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from batcher.config import BatchProcessingConfig, load_config

if TYPE_CHECKING:
    from batcher.monitoring.queue_stats import QueueStats

DEMO_QUEUE = "demo"
DEMO_ENV = {
    "BATCH_QUEUE": DEMO_QUEUE,
    "BATCH_HANDLER": "batcher.llm.handler:summarize",
    "BATCH_TIME_THRESHOLD_SEC": "4",
    "BATCH_HIGH_TIME_THRESHOLD_SEC": "2",
    "BATCH_URGENT_TIME_THRESHOLD_SEC": "1",
    "BATCH_MAX_BUFFER_AGE_SEC": "120",
    "BATCH_SIZE_THRESHOLD": "25",
    "BATCH_MIN_BATCH_SIZE": "5",
    "BATCH_MAX_BATCH_SIZE": "50",
    "BATCH_PERFORMANCE_TARGET_MS": "500",
    "BATCH_REAP_INTERVAL_SEC": "0.5",
    "BATCH_JOB_TIMEOUT_SEC": "30",
    "BATCH_LOG_FORMAT": "json",
}
PRODUCE_SECONDS = 24.0
# the built-in fake LLM slows down this long after the first ack, to show the size follow it
SLOWDOWN_AFTER_FIRST_ACK_SECONDS = 9.0
SLOW_PER_ENTRY_MS = 30.0
TOPICS = ("Kernel", "Database", "Browser", "Cloud", "Compiler", "Security", "Network", "AI")
VERBS = ("releases", "patches", "deprecates", "benchmarks", "ships", "audits", "rewrites")


@dataclass
class Series:
    t: list[float] = field(default_factory=list)
    pending: list[int] = field(default_factory=list)
    slowdown_at: float | None = None
    threshold: list[int] = field(default_factory=list)
    acked: list[int] = field(default_factory=list)


def _quiet_child(log_path: str) -> None:
    """Send a spawned child's logs to the demo's log file, keeping the console for progress."""
    from batcher import logs

    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.dup2(fd, 2)
    logs.configure(json=True)


def _synthetic_producer(log_path: str, seed: int, count: int, seconds: float) -> None:
    """A feed-like producer: bursts of entries with mixed priorities spread over ``seconds``."""
    from batcher.producer import BatchStateManager

    _quiet_child(log_path)
    rng = random.Random(seed)
    pause = seconds / max(1, count / 25)
    # done within ``seconds`` however few the entries (`--entries 50` once slept past the
    # demo's timeout, which then reported an unfinished run)
    deadline = time.monotonic() + seconds
    manager = BatchStateManager()
    sent = 0
    while sent < count:
        burst = min(count - sent, rng.randint(10, 40))  # 25 on average
        entries = []
        for _ in range(burst):
            topic, verb = rng.choice(TOPICS), rng.choice(VERBS)
            pick = rng.random()
            entries.append({
                "id": f"https://wire.example/{seed}/{uuid.uuid4()}",
                "source": "wire",
                "priority": 2 if pick < 0.1 else 1 if pick < 0.3 else 0,
                "payload": {"title": f"{topic} project {verb} version {rng.randint(2, 9)}.0",
                            "link": f"https://wire.example/{seed}/{sent}",
                            "summary": f"{topic} news item {sent} from the wire service."},
            })
        manager.queue_many(entries)
        sent += burst
        if sent < count:
            time.sleep(min(rng.uniform(0.5, 1.5) * pause,
                           max(0.0, deadline - time.monotonic())))


def _fetcher(log_path: str, base_url: str, rounds: int) -> None:
    from batcher.demo.feed_server import SAMPLE_FEEDS_TOML
    from batcher.feeds.fetch import FeedFetcher, load_feeds
    from batcher.producer import BatchStateManager

    _quiet_child(log_path)
    feeds = load_feeds(SAMPLE_FEEDS_TOML, base_url=base_url)
    with FeedFetcher(BatchStateManager(), feeds, per_host_delay_seconds=0.01) as fetcher:
        fetcher.run(threading.Event(), max_rounds=rounds)


def _spawn(target: Any, *args: Any) -> multiprocessing.process.BaseProcess:
    proc = multiprocessing.get_context("spawn").Process(target=target, args=args, daemon=True)
    proc.start()
    return proc


def _cli(args: list[str], env: dict[str, str], log_file: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "batcher", *args], env=env,
                            stdout=log_file, stderr=log_file)


def run_demo(
    redis_url: str | None = None,
    llm_base_url: str | None = None,
    *,
    synthetic_entries: int = 1200,
    png_path: Path = Path("demo-report.png"),
    timeout_seconds: float = 55.0,
    dashboard_port: int | None = None,
) -> int:
    """Run the demo; return the exit code (0 when every accepted entry was handled)."""
    from rich.console import Console

    console = Console(stderr=False)
    with ExitStack() as stack:
        if not redis_url:
            from batcher.demo.embedded import EmbeddedRedis

            embedded = EmbeddedRedis()
            redis_url = stack.enter_context(embedded)
            console.print(f"[dim]embedded redis-server {embedded.binary} on {redis_url}[/]")
        from batcher.demo.feed_server import serve_feeds
        from batcher.llm.fake import serve_fake_llm

        feed_server, feeds_url = serve_feeds()
        stack.callback(feed_server.stop)
        llm = None
        if not llm_base_url:
            llm, llm_base_url = serve_fake_llm(base_latency_ms=60, per_entry_ms=12, seed=7)
            stack.callback(llm.server_close)
            stack.callback(llm.shutdown)
        # gpt-4o-mini's list prices, so the report's estimated cost reads as a real one would
        prices = {"LLM_PRICE_INPUT_PER_MTOK": "0.15", "LLM_PRICE_OUTPUT_PER_MTOK": "0.60"}
        env = {**prices, **os.environ, **DEMO_ENV, "BATCH_REDIS_URL": redis_url,
               "LLM_BASE_URL": llm_base_url}
        os.environ.update({k: v for k, v in env.items() if k.startswith("BATCH_")})
        config = load_config()
        client = config.redis_client()
        for key in client.scan_iter(match=config.keys.scan_pattern(), count=1000):
            client.delete(key)  # a fresh run on a reused server
        log_path = Path(tempfile.mkdtemp(prefix="batcher-demo-")) / "processes.log"
        log_file = stack.enter_context(log_path.open("ab"))
        console.print(f"[dim]process logs: {log_path}[/]")
        sec, usec = client.time()
        redis_t0_ms = int(sec) * 1000 + int(usec) // 1000
        procs = [_cli(["coordinator", "--allow-eviction"], env, log_file)]
        procs += [_cli(["worker", "--simple"], env, log_file) for _ in range(2)]
        if dashboard_port is not None:
            procs.append(_start_dashboard(console, env, log_file, dashboard_port))
        for p in procs:
            stack.callback(_stop_process, p)
        producers = [_spawn(_fetcher, str(log_path), feeds_url, 2) for _ in range(2)]
        producers += [_spawn(_synthetic_producer, str(log_path), seed, synthetic_entries // 2,
                             PRODUCE_SECONDS) for seed in (1, 2)]
        series, ok = _watch(console, client, config, producers, timeout_seconds, llm,
                            redis_t0_ms)
        console.print()
        from batcher.stats import read_queue_stats

        stats = read_queue_stats(client, config)
        for p in procs if dashboard_port is None else procs[:-1]:
            _stop_process(p)
        raw_samples = cast(list[bytes], client.lrange(config.keys.samples, 0, -1))
        samples = [s.decode().split(":") for s in raw_samples]
        _report(console, stats, series, llm)
        _plot(png_path, series, samples, redis_t0_ms)
        console.print(f"chart: {png_path.resolve()}")
        lost = _lost(stats)
        if not ok or lost:
            console.print(f"[red]demo did not finish cleanly: lost={lost} finished={ok}[/]")
        if dashboard_port is not None:
            _keep_dashboard(console, procs[-1], dashboard_port)
        return 1 if not ok or lost else 0


def _start_dashboard(console: Any, env: dict[str, str], log_file: Any,
                     port: int) -> subprocess.Popen[bytes]:
    token = secrets.token_urlsafe(18)
    proc = _cli(["dashboard", "--port", str(port), "--refresh", "1"],
                {**env, "BATCHER_DASHBOARD_TOKEN": token}, log_file)
    console.print(f"dashboard: [bold]http://127.0.0.1:{port}/queues/{env['BATCH_QUEUE']}[/] "
                  f"(unlock its buttons at /login with token [bold]{token}[/])")
    return proc


def _keep_dashboard(console: Any, proc: subprocess.Popen[bytes], port: int) -> None:
    if proc.poll() is not None:
        console.print(f"[red]the dashboard exited ({proc.returncode}): is port {port} "
                      "taken? (--dashboard-port)[/]")
        return
    console.print(f"dashboard still on http://127.0.0.1:{port}/ with the run's figures "
                  "and dead letters; Ctrl-C to stop")
    def stop(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)  # SIGTERM too ends it cleanly
    try:
        while proc.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


def _stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _lost(stats: QueueStats) -> int:
    c, b = stats.counters, stats.buffer
    held = b.pending + b.delayed + b.in_flight_entries + b.dead + c.acked + c.purged
    return c.accepted - held


def _watch(
    console: Any, client: Any, config: BatchProcessingConfig,
    producers: list[multiprocessing.process.BaseProcess], timeout_seconds: float, llm: Any,
    redis_t0_ms: int,
) -> tuple[Series, bool]:
    """Live progress until producers are done and the buffer has drained."""
    from rich.live import Live
    from rich.table import Table

    from batcher.stats import read_queue_stats

    series, first_ack = Series(), None
    with Live(console=console, refresh_per_second=4, transient=False) as live:
        while True:
            stats = read_queue_stats(client, config)
            b, c = stats.buffer, stats.counters
            elapsed = (stats.now_ms - redis_t0_ms) / 1000  # the clock the samples carry
            if first_ack is None and c.acked:
                first_ack = elapsed
            if (llm is not None and series.slowdown_at is None and first_ack is not None
                    and elapsed - first_ack >= SLOWDOWN_AFTER_FIRST_ACK_SECONDS):
                llm.options.per_entry_ms = SLOW_PER_ENTRY_MS
                series.slowdown_at = elapsed
            series.t.append(elapsed)
            series.pending.append(b.pending)
            series.threshold.append(stats.sizing.size_threshold)
            series.acked.append(c.acked)
            grid = Table.grid(padding=(0, 2))
            grid.add_row("elapsed", f"{elapsed:5.1f} s", "accepted", str(c.accepted),
                         "acked", str(c.acked), "duplicates", str(c.duplicates))
            grid.add_row("pending", str(b.pending), "in flight", str(b.in_flight_entries),
                         "size threshold", str(stats.sizing.size_threshold),
                         "throughput", f"{stats.performance.throughput_eps:.1f}/s")
            live.update(grid)
            producing = any(p.is_alive() for p in producers)
            drained = (b.pending + b.delayed + b.in_flight_entries) == 0
            if not producing and drained and c.accepted > 0:
                return series, True
            if elapsed > timeout_seconds:
                return series, False
            time.sleep(0.25)


def _report(console: Any, stats: QueueStats, series: Series, llm: Any) -> None:
    from rich.table import Table

    perf, c = stats.performance, stats.counters
    elapsed = series.t[-1] if series.t else 0.0
    table = Table(title="redis-batcher demo report", show_header=False)
    table.add_row("entries accepted / acked / dead", f"{c.accepted} / {c.acked} / "
                  f"{stats.buffer.dead}")
    table.add_row("duplicates skipped (2 fetchers, same feeds)", str(c.duplicates))
    table.add_row("wall time", f"{elapsed:.1f} s")
    table.add_row("throughput (overall)", f"{c.acked / elapsed:.1f} entries/s" if elapsed
                  else "-")
    table.add_row("batches processed", str(perf.batches_processed))
    table.add_row("processing ms avg / p50 / p95 / p99",
                  f"{perf.avg_processing_time_ms} / {perf.p50_processing_ms} / "
                  f"{perf.p95_processing_ms} / {perf.p99_processing_ms}")
    table.add_row("queue wait avg ms", str(perf.avg_queue_wait_ms))
    table.add_row("flush reasons", ", ".join(f"{k}={v}" for k, v in c.flushes.items() if v))
    table.add_row("size adjustments", ", ".join(f"{e.before}→{e.after}"
                                                for e in reversed(stats.sizing.events))
                  or "none")
    table.add_row("final size threshold", str(stats.sizing.size_threshold))
    if series.slowdown_at is not None:
        table.add_row("fake LLM latency", f"60 ms + 12 ms/entry, then {SLOW_PER_ENTRY_MS:.0f} "
                      f"ms/entry from {series.slowdown_at:.0f} s (target 500 ms)")
    if llm is not None:
        table.add_row("LLM requests", str(llm.requests))
    usage = stats.llm
    if usage.requests:
        table.add_row("LLM tokens prompt / completion / cached",
                      f"{usage.prompt_tokens} / {usage.completion_tokens} / "
                      f"{usage.cached_tokens}")
        table.add_row("LLM tokens/s, tokens/entry, est. cost",
                      f"{usage.tokens_per_second}, {usage.tokens_per_entry}, "
                      f"${usage.cost_usd:.4f}")
    table.add_row("health", f"{stats.health.status} {stats.health.reasons}")
    console.print(table)


def _plot(path: Path, series: Series, samples: list[list[str]], redis_t0_ms: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    axes[0].plot(series.t, series.pending, color="tab:blue")
    axes[0].set_ylabel("pending entries")
    axes[0].set_title("redis-batcher demo: queue depth, size threshold, processing time")
    axes[1].step(series.t, series.threshold, where="post", color="tab:orange")
    axes[1].set_ylabel("size threshold")
    if samples:
        xs = [(int(s[0]) - redis_t0_ms) / 1000 for s in samples]
        points = axes[2].scatter(xs, [float(s[2]) for s in samples],
                                 c=[int(s[1]) for s in samples], cmap="viridis", s=18)
        # one colour bar for all three axes keeps their x scales aligned
        fig.colorbar(points, ax=list(axes), label="entries in batch (bottom)", pad=0.01)
    axes[2].axhline(500, color="tab:red", linestyle=":", linewidth=1)
    axes[2].set_ylabel("processing ms / batch")
    if series.slowdown_at is not None:
        for ax in axes:
            ax.axvline(series.slowdown_at, color="grey", linestyle="--", linewidth=1)
        axes[0].annotate("LLM slows down", (series.slowdown_at, 0), xytext=(4, 4),
                         textcoords="offset points", fontsize=8, color="grey")
    axes[2].set_xlabel("seconds since start")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
