"""The exporter scraped over HTTP, ``top`` rendered to text, and their click commands."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator

import httpx
import pytest
import redis as redis_py
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from redis.backoff import NoBackoff
from redis.retry import Retry
from rich.console import Console

from batcher import top as top_module
from batcher.cli import BatcherGroup
from batcher.cli.observe import top
from batcher.exporter import serve_exporter
from batcher.scripts import Scripts
from batcher.top import run_top, top_snapshot
from tests.support.builders import make_config
from tests.support.known_acks import record_known_acks

pytestmark = pytest.mark.real


def _server_ms(client: redis_py.Redis) -> int:
    sec, usec = client.time()
    return int(sec) * 1000 + int(usec) // 1000


@pytest.fixture
def known(real_redis: redis_py.Redis) -> Scripts:
    """Queue ``t`` holding the known acks, timed against the server's clock."""
    scripts = Scripts(real_redis, make_config())
    record_known_acks(scripts, _server_ms(real_redis))
    return scripts


@pytest.fixture
def scrape(real_redis: redis_py.Redis, known: Scripts) -> Iterator[dict[str, list[Sample]]]:
    server, thread = serve_exporter(real_redis, known.config, port=0, check_workers=False)
    try:
        text = httpx.get(f"http://127.0.0.1:{server.server_port}/metrics", timeout=10).text
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    samples: dict[str, list[Sample]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    yield samples


def _value(samples: dict[str, list[Sample]], name: str, **labels: str) -> float:
    found = [s.value for s in samples[name]
             if all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, (name, labels, samples.get(name))
    return found[0]


def test_exporter_serves_latency_histograms_from_our_buckets(
    scrape: dict[str, list[Sample]]
) -> None:
    name = "batcher_batch_processing_seconds"
    buckets = {s.labels["le"]: s.value for s in scrape[f"{name}_bucket"]}
    assert (buckets["0.025"], buckets["0.05"], buckets["0.1"], buckets["0.25"]) == (0, 1, 2, 3)
    assert (buckets["1"], buckets["+Inf"]) == (4, 4)
    assert _value(scrape, f"{name}_count", queue="t") == 4
    assert _value(scrape, f"{name}_sum", queue="t") == pytest.approx(1.22)
    assert _value(scrape, "batcher_entry_queue_wait_seconds_sum", queue="t") == 22.0
    assert _value(scrape, "batcher_entry_end_to_end_seconds_count", queue="t") == 20


def test_exporter_labels_every_figure_with_the_queue(scrape: dict[str, list[Sample]]) -> None:
    assert _value(scrape, "batcher_up", queue="t") == 1
    assert _value(scrape, "batcher_throughput_entries_per_second", queue="t",
                  window="10s") == 0.5
    assert _value(scrape, "batcher_latency_seconds", queue="t", histogram="processing",
                  stat="p95") == 0.9
    assert _value(scrape, "batcher_accepted_total", queue="t") == 20
    assert _value(scrape, "batcher_flushes_total", queue="t", reason="manual") == 4
    assert _value(scrape, "batcher_health_status", queue="t", status="healthy") == 1
    assert _value(scrape, "batcher_memory_efficiency_ratio", queue="t") == 1.0
    assert _value(scrape, "batcher_trend", queue="t", figure="processing_time",
                  direction="rising") == 1
    assert _value(scrape, "batcher_size_threshold_entries", queue="t") == 10
    assert all(s.labels.get("queue") == "t" for group in scrape.values() for s in group)
    assert all(name.startswith("batcher_") for name in scrape)


def test_exporter_reports_down_when_redis_is_unreachable() -> None:
    dead = redis_py.Redis(port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    server, thread = serve_exporter(dead, make_config(), port=0)
    try:
        text = httpx.get(f"http://127.0.0.1:{server.server_port}/metrics", timeout=10).text
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    assert 'batcher_up{queue="t"} 0.0' in text


def test_top_renders_the_figures_once(real_redis: redis_py.Redis, known: Scripts) -> None:
    keys = known.keys
    real_redis.hset(keys.state, "size_threshold", 7)
    for before, after in ((10, 15), (15, 7)):
        real_redis.xadd(keys.events, {"type": "sizing", "before": before, "after": after,
                                      "mode": "fit", "evidence": "{}"})
    text = top_snapshot(real_redis, known.config, check_workers=False)
    assert "queue t  HEALTHY" in text
    assert "processing / batch" in text and "305.0" in text and "980.0" in text
    assert "0.50" in text  # entries/s over 10 s
    assert "size threshold 7 [1..20]" in text
    assert "█▁▁" in text  # 15, 7, then the live 7
    assert "15 -> 7 (fit)" in text
    assert "manual" in text and "(not checked)" in text


class StopAfter(threading.Event):
    """A stop event that is set on its ``n``-th wait, recording each wait's timeout."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n, self.waits = n, list[float | None]()

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(timeout)
        if len(self.waits) >= self.n:
            self.set()
        return self.is_set()


def test_run_top_redraws_every_refresh_until_stopped(
    real_redis: redis_py.Redis, known: Scripts, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = []
    real_read = top_module.read_queue_stats
    monkeypatch.setattr(top_module, "read_queue_stats",
                        lambda *a: reads.append(1) or real_read(*a))
    out = io.StringIO()
    stop = StopAfter(3)
    run_top(real_redis, known.config, 0.1, stop=stop, console=Console(file=out, width=100))
    assert stop.waits == [0.1, 0.1, 0.1]
    assert len(reads) == 3  # the first frame, then one per refresh until the stop
    assert "batcher top" in out.getvalue()


def test_top_command_prints_one_frame(redis_url: str, known: Scripts) -> None:
    result = CliRunner().invoke(top, ["--once", "--queue", "t", "--redis-url", redis_url])
    assert result.exit_code == 0, result.output
    assert "batcher top" in result.output and "queue t" in result.output


def test_top_command_refuses_an_unreachable_redis() -> None:
    # a group of our own: registering ``observe`` in batcher/cli/__init__.py is a separate step
    group = BatcherGroup(name="batcher", commands={"top": top})
    result = CliRunner().invoke(group, ["top", "--once", "--redis-url", "redis://127.0.0.1:1/0"])
    assert result.exit_code == 4
