"""Issue 17's figures: fair share between sources, and a budget shared by 4 workers."""

from __future__ import annotations

import collections
import threading
import time
from typing import Any, cast

import redis

from batcher import budget_guard
from batcher.budget import Budget, BudgetLimits
from batcher.config import BatchProcessingConfig
from batcher.errors import RateLimited
from batcher.fairness import set_weight
from batcher.llm import handler as llm
from batcher.llm.fake import serve_fake_llm
from batcher.llm.provider_limits import ProviderLimits
from batcher.models import Batch, Entry, FlushReason
from batcher.records import BatchRecord
from batcher.scripts import Scripts

FAIR_BATCH = 25
FLOOD, SMALL_SOURCES, SMALL_EACH = 10_000, 10, 20
WEIGHTED_EACH, WEIGHTED_BATCHES = 5_000, 40
WORKERS = 4
ENTRIES_PER_CALL = 10


def _fair_config(base: BatchProcessingConfig) -> BatchProcessingConfig:
    # thresholds far away: every flush is one size-triggered batch of FAIR_BATCH
    return base.with_overrides(
        size_threshold=FAIR_BATCH, min_batch_size=FAIR_BATCH, max_batch_size=FAIR_BATCH,
        enable_adaptive_sizing=False, max_buffer_size=100_000, time_threshold_seconds=86_400,
        high_time_threshold_seconds=86_400, urgent_time_threshold_seconds=86_400,
        max_buffer_age_seconds=86_400, max_inflight_batches=10_000_000)


def _enqueue(scripts: Scripts, source: str, n: int) -> None:
    from batcher.producer import build_envelope

    items = [build_envelope(f"{source}-{i}", source, 0, {"title": f"item {i}"}, index=i,
                            max_entry_bytes=262_144) for i in range(n)]
    for start in range(0, n, 500):
        scripts.enqueue(items[start:start + 500])


def _sources_of(client: redis.Redis, scripts: Scripts, batch_id: str) -> list[str]:
    record = BatchRecord.from_hash(batch_id, cast(dict[bytes, bytes], client.hgetall(
        scripts.keys.batch(batch_id))))
    return [entry_id.rsplit("-", 1)[0] for entry_id in record.envelopes]


def fairness(base: BatchProcessingConfig) -> dict[str, Any]:
    """Small sources behind a flood, and the shares of two sources weighted 3:1."""
    config = _fair_config(base)
    client = redis.Redis.from_url(config.redis_url)
    client.flushall()
    scripts = Scripts(client, config)
    _enqueue(scripts, "flood", FLOOD)
    for k in range(SMALL_SOURCES):
        _enqueue(scripts, f"small{k}", SMALL_EACH)
    left = SMALL_SOURCES * SMALL_EACH
    batches = 0
    while left > 0:
        batches += 1
        scripts.flush(f"f{batches}")
        left -= sum(1 for s in _sources_of(client, scripts, f"f{batches}") if s != "flood")
    client.flushall()
    set_weight(client, config.keys.weights, "heavy", 3)
    _enqueue(scripts, "heavy", WEIGHTED_EACH)
    _enqueue(scripts, "light", WEIGHTED_EACH)
    shares: collections.Counter[str] = collections.Counter()
    for b in range(WEIGHTED_BATCHES):
        scripts.flush(f"w{b}")
        shares.update(_sources_of(client, scripts, f"w{b}"))
    total = sum(shares.values())
    client.flushall()
    heavy_pct = 100 * shares["heavy"] / total
    return {"batch": FAIR_BATCH, "flood": FLOOD, "small_sources": SMALL_SOURCES,
            "small_each": SMALL_EACH, "small_done_after_batches": batches,
            "weighted_entries": total, "heavy_share_pct": round(heavy_pct, 1),
            "light_share_pct": round(100 - heavy_pct, 1),
            "share_error_pct": round(abs(heavy_pct - 75.0), 2)}


def _batch(n: int, start: int) -> Batch:
    entries = [Entry(id=f"b-{i}", source="feed", priority=0, enqueued_ms=0, attempts=0,
                     payload={"title": f"Release {i} of a project ships",
                              "summary": "A paragraph about it. " * 12})
               for i in range(start, start + n)]
    return Batch(queue="bench", id=f"b{start}", attempt=1, reason=FlushReason.SIZE,
                 created_ms=0, entries=entries)


class _Workers:
    """WORKERS threads calling the LLM handler back to back; a RateLimited call waits out its
    retry_after (what the queue's pause does to a real worker)."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.calls = 0
        self.budget_waits = 0
        self._lock = threading.Lock()
        self._next = 0

    def run(self) -> None:
        while not self.stop.is_set():
            with self._lock:
                start, self._next = self._next, self._next + ENTRIES_PER_CALL
            try:
                llm.summarize(_batch(ENTRIES_PER_CALL, start))
                with self._lock:
                    self.calls += 1
            except RateLimited as exc:
                with self._lock:
                    self.budget_waits += 1
                self.stop.wait(exc.retry_after_seconds)


def budget(base: BatchProcessingConfig, phase_seconds: float) -> dict[str, Any]:
    """4 workers share a budget equal to the fake's own limits; halfway the limit is halved
    (``budget set`` and the provider alike). Input tokens per minute admitted by the fake,
    over each phase after its first quarter (the bucket starts full), against the limit."""
    import os

    from batcher import logs

    logs.configure(json=False, level="WARNING")  # one info line per call would drown the run
    tpm, rpm = 60_000.0, 600.0
    limits = ProviderLimits(rpm=rpm, itpm=tpm)
    server, url = serve_fake_llm(base_latency_ms=50, per_entry_ms=5, limits=limits)
    saved = {k: os.environ.get(k) for k in ("LLM_BASE_URL", "LLM_MAX_TOKENS")}
    os.environ["LLM_BASE_URL"] = url
    os.environ.pop("LLM_MAX_TOKENS", None)
    client = redis.Redis.from_url(base.redis_url)
    client.flushall()
    shared = Budget(client, "bench-fake")
    shared.set_limits(BudgetLimits(rpm, tpm, 0))
    budget_guard.bind(shared)
    workers = _Workers()
    threads = [threading.Thread(target=workers.run, daemon=True) for _ in range(WORKERS)]
    try:
        for t in threads:
            t.start()
        full = _phase(limits, phase_seconds, tpm)
        limits.set(rpm, tpm / 2, 0)
        shared.set_limits(BudgetLimits(rpm, tpm / 2, 0))
        halved = _phase(limits, phase_seconds, tpm / 2)
    finally:
        workers.stop.set()
        for t in threads:
            t.join(timeout=30)
        budget_guard.bind(None)
        server.shutdown()
        server.server_close()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return {"workers": WORKERS, "limit_tpm": tpm, "limit_rpm": rpm,
            "phase_seconds": phase_seconds, "calls": workers.calls,
            "budget_waits": workers.budget_waits, "provider_429s": limits.refused,
            "utilization": round(full, 4), "utilization_after_halving": round(halved, 4)}


def _phase(limits: ProviderLimits, seconds: float, tpm: float) -> float:
    """Admitted input tokens per minute ÷ ``tpm`` over the phase's last three quarters."""
    time.sleep(seconds / 4)
    t0, tokens0 = time.monotonic(), limits.input_tokens
    time.sleep(seconds * 3 / 4)
    elapsed = time.monotonic() - t0
    return (limits.input_tokens - tokens0) / elapsed * 60 / tpm
