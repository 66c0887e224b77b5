"""The CLI options no other test reached: each one run through the real command line.

Long-running loops (``--watch``, ``top``, ``exporter``, ``fetch`` without ``--once``) are
stopped by the event or the interrupt they wait for, injected here; nothing sleeps.
"""

from __future__ import annotations

import importlib.metadata
import os
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis as redis_py
from click.testing import CliRunner, Result

from batcher.cli import cli
from batcher.records import BatchRecord
from tests.support.builders import T0, entry, make_scripts
from tests.support.waiting import HANG_GUARD_SECONDS

QUEUE = "opts"
ROOT = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("json_logs")


def run(url: str, *args: str) -> Result:
    return CliRunner().invoke(cli, [*args, "--queue", QUEUE, "--redis-url", url],
                              catch_exceptions=False)


def test_version_prints_the_installed_version() -> None:
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert result.output.rstrip().endswith(f"version {importlib.metadata.version('redis-batcher')}")


def _dead_letters(client: redis_py.Redis, n: int) -> None:
    s = make_scripts(client, queue=QUEUE, max_attempts=1)
    s.enqueue([entry(f"x{i}") for i in range(n)], now_ms=T0)
    assert s.flush("b1", manual=True, now_ms=T0).batch is not None
    assert isinstance(s.claim("b1", 1, now_ms=T0), BatchRecord)
    s.ack("b1", 1, processing_ms=1, started_ms=T0, results={},
          failed={f"x{i}": ("boom", 0) for i in range(n)}, now_ms=T0)


def test_dead_list_limit_shows_n_and_counts_the_rest(
    redis_url: str, real_redis: redis_py.Redis
) -> None:
    _dead_letters(real_redis, 3)
    limited = run(redis_url, "dead", "list", "--limit", "2")
    assert limited.exit_code == 0
    assert sum(f"x{i}" in limited.stdout for i in range(3)) == 2
    assert limited.stdout.endswith("... 1 more (--limit 0 lists all)\n")
    everything = run(redis_url, "dead", "list", "--limit", "0")
    assert all(f"x{i}" in everything.stdout for i in range(3))
    assert "more (--limit 0" not in everything.stdout


def test_keys_limit_shows_n_batch_keys_and_counts_the_rest(
    redis_url: str, real_redis: redis_py.Redis
) -> None:
    s = make_scripts(real_redis, queue=QUEUE, size_threshold=1)
    for i in range(3):
        s.enqueue([entry(f"k{i}")], now_ms=T0 + i)
        assert s.flush(f"b{i}", now_ms=T0 + 10).batch is not None
    limited = run(redis_url, "keys", "--limit", "1")
    assert limited.exit_code == 0
    assert sum(f":batch:b{i}" in limited.stdout for i in range(3)) == 1
    assert "... and 2 more batch:* keys (3 in all; --limit 0 lists them)" in limited.stdout
    everything = run(redis_url, "keys", "--limit", "0")
    assert all(f":batch:b{i}" in everything.stdout for i in range(3))


def test_stats_watch_redraws_until_interrupted(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from batcher.cli import info

    reads: list[int] = []
    real_read = info.read_queue_stats
    monkeypatch.setattr(info, "read_queue_stats", lambda *a: reads.append(1) or real_read(*a))
    ticks: list[float | None] = []

    class OneSecondTicksThenCtrlC(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            ticks.append(timeout)
            if len(ticks) == 3:
                raise KeyboardInterrupt
            return False

    monkeypatch.setattr(info, "watch_stop", OneSecondTicksThenCtrlC)
    result = run(redis_url, "stats", "--watch")
    assert result.exit_code == 0
    assert ticks == [1.0, 1.0, 1.0]
    assert len(reads) == 3  # the first frame and one per completed tick
    assert "buffer" in result.stdout


def test_top_refresh_is_passed_on_and_must_be_positive(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from batcher.cli import observe

    seen: list[float] = []
    monkeypatch.setattr(observe, "run_top", lambda client, config, refresh: seen.append(refresh))
    assert run(redis_url, "top", "--refresh", "0.25").exit_code == 0
    assert seen == [0.25]
    refused = run(redis_url, "top", "--refresh", "0")
    assert refused.exit_code == 2
    assert "--refresh=0: must be > 0" in refused.stderr


class _ScrapeThenStop(threading.Event):
    """The exporter's stop event: its first wait scrapes /metrics, then it is set."""

    def __init__(self) -> None:
        super().__init__()
        self.port = 0
        self.body = ""

    def wait(self, timeout: float | None = None) -> bool:
        if not self.is_set():
            self.body = httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=30).text
            self.set()
        return True


def test_exporter_command_serves_metrics_until_stopped(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from batcher.cli import exporter as observe

    stop = _ScrapeThenStop()
    real_serve = observe.serve_exporter

    def serve(*args: Any) -> Any:
        server, thread = real_serve(*args)
        stop.port = server.server_port
        return server, thread

    monkeypatch.setattr(observe, "serve_exporter", serve)
    monkeypatch.setattr(observe, "stop_on_signals", lambda event: stop)
    result = run(redis_url, "exporter", "--port", "0")
    assert result.exit_code == 0
    assert f'batcher_up{{queue="{QUEUE}"}} 1.0' in stop.body
    assert f"serving http://127.0.0.1:{stop.port}/metrics" in result.stderr


def test_worker_no_warm_skips_the_warm_up_and_is_passed_to_children(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from batcher.cli import worker

    warmed: list[int] = []
    ran: list[dict[str, Any]] = []
    monkeypatch.setattr(worker, "warm_up", lambda config, client: warmed.append(1))
    monkeypatch.setattr(worker, "run_workers",
                        lambda config, client, **kw: ran.append(
                            {**kw, "rq_client": kw["rq_client"] is client}))
    assert run(redis_url, "worker", "--no-warm", "--burst").exit_code == 0
    # one Redis (no BATCH_RQ_REDIS_URL): RQ's connection is the batcher's client itself
    assert (warmed, ran) == ([], [{"burst": True, "simple": False, "rq_client": True,
                                   "rescan": None}])
    assert run(redis_url, "worker", "--burst").exit_code == 0
    assert warmed == [1]
    assert worker.child_argv(False, True, False)[-2:] == ["--simple", "--no-warm"]
    assert "--no-warm" not in worker.child_argv(False, True, True)


def test_demo_llm_base_url_reaches_the_demo_and_its_exit_code_comes_back(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    import batcher.demo.run

    calls: list[tuple[Any, ...]] = []

    def fake_demo(redis_url: str | None, llm_base_url: str | None, **kw: Any) -> int:
        calls.append((redis_url, llm_base_url, kw["synthetic_entries"]))
        return 3

    monkeypatch.setattr(batcher.demo.run, "run_demo", fake_demo)
    result = CliRunner().invoke(cli, ["demo", "--llm-base-url", "http://127.0.0.1:11434",
                                      "--entries", "5", "--png", str(tmp_path / "r.png")])
    assert result.exit_code == 3
    assert calls == [(None, "http://127.0.0.1:11434", 5)]


def test_fetch_without_once_runs_until_sigterm(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import signal

    from batcher.feeds.runner import ScheduledFetcher

    seen: list[tuple[bool, bool]] = []

    def run_until_stopped(self: Any, stop: threading.Event, once: bool) -> dict[str, Any]:
        os.kill(os.getpid(), signal.SIGTERM)  # what `docker compose stop` sends
        seen.append((once, stop.wait(HANG_GUARD_SECONDS)))
        return {}

    monkeypatch.setattr(ScheduledFetcher, "run", run_until_stopped)
    before = signal.getsignal(signal.SIGTERM)
    result = run(redis_url, "fetch", "--feeds", str(ROOT / "feeds.example.toml"))
    assert result.exit_code == 0
    assert seen == [(False, True)]  # a daemon (not --once), stopped by the signal
    assert signal.getsignal(signal.SIGTERM) is before  # its handler is put back


class _StopWhenDrained(threading.Event):
    """A coordinator's stop event that reads as set once the queue has nothing pending."""

    def __init__(self, client: redis_py.Redis, key: str) -> None:
        super().__init__()
        self.client, self.key = client, key

    def is_set(self) -> bool:
        return super().is_set() or self.client.zcard(self.key) == 0


def test_coordinator_allow_eviction_runs_on_an_evicting_server(
    redis_url: str, real_redis: redis_py.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    from batcher.cli import coordinator as coordinator_cli

    s = make_scripts(real_redis, queue=QUEUE)
    s.enqueue([entry(f"v{i}") for i in range(3)], now_ms=T0)
    stop = _StopWhenDrained(real_redis, s.keys.pending)
    monkeypatch.setattr(coordinator_cli, "stop_on_signals", lambda event, **_: stop)
    real_redis.config_set("maxmemory-policy", "allkeys-lru")
    try:
        refused = run(redis_url, "coordinator")
        left_by_refused = real_redis.zcard(s.keys.pending)
        allowed = run(redis_url, "coordinator", "--allow-eviction")
    finally:
        real_redis.config_set("maxmemory-policy", "noeviction")
    assert (refused.exit_code, left_by_refused) == (1, 3)  # refused: nothing touched
    assert allowed.exit_code == 0, allowed.stderr
    # it ran: its reaper dead-lettered the entries, enqueued in 2023, as too old
    assert real_redis.zcard(s.keys.pending) == 0
    assert real_redis.zcard(s.keys.dead) == 3
