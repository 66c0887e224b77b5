"""Figures read back from Redis: the same data for ``stats``, ``top``, the exporter and logs.

:func:`read_queue_stats` reads one queue's keys in two pipelined round trips (plus one for
the RQ workers) into the typed figures of :mod:`batcher.monitoring.queue_stats`;
:func:`detailed_stats` is their dict (DESIGN §9, ``batcher stats --json``). The arithmetic
lives in :mod:`batcher.monitoring.figures`, pure and unit-tested.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import redis

from batcher.backoff import describe_fault
from batcher.budget import Budget
from batcher.config import BatchProcessingConfig
from batcher.keys import HISTOGRAMS, QueueKeys
from batcher.models import PRIORITIES, FlushReason
from batcher.monitoring import figures
from batcher.monitoring.feed_status import fetch_summary
from batcher.monitoring.queue_stats import (
    COUNTERS,
    BufferFigures,
    Counters,
    LatencySummary,
    PerformanceFigures,
    QueueStats,
    SizingEvent,
    SizingFigures,
    SizingFit,
    Trends,
)
from batcher.records import META_FIELDS, BatchRecord, priority_score_range, split_score
from batcher.redaction import scrub_value
from batcher.shards import shard_count
from batcher.sizing import FIELD_FIT_A, FIELD_FIT_B, effective_thresholds_seconds

EVENTS_SHOWN = 20
# events read per call: enough to find the latest sizing events among acks and flushes
EVENTS_SCANNED = 500
SIZING_EVENTS_SHOWN = 10
MINUTE_MS = 60_000

Raw = Mapping[bytes, bytes]


def _int(raw: Raw, key: str) -> int:
    value = raw.get(key.encode())
    return int(float(value)) if value else 0


def _float(raw: Raw, key: str) -> float | None:
    value = raw.get(key.encode())
    return float(value) if value else None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything one ``detailed_stats`` call read, undecoded."""

    now_ms: int
    pending: int
    delayed: int
    state: Raw
    counters: Raw  # the counters hash (keys.counters)
    dead_now: int
    dead_last_minute: int
    seen_last_minute: int
    inflight_ids: list[bytes]
    inflight_entries: int
    throughput: dict[int, int]
    events: list[tuple[bytes, dict[bytes, bytes]]]
    samples: list[bytes]
    by_priority: dict[int, int]
    oldest_enqueued_ms: list[int]
    histograms: dict[str, dict[str, int]]


def _server_ms(client: redis.Redis) -> int:
    sec, usec = client.time()
    return int(sec) * 1000 + int(usec) // 1000


def read_snapshot(client: redis.Redis, keys: QueueKeys, now_ms: int | None = None) -> Snapshot:
    """Read the queue's figures; ``now_ms`` defaults to Redis's clock (the one the scripts use)."""
    now = _server_ms(client) if now_ms is None else now_ms
    pipe = client.pipeline(transaction=False)
    pipe.zcard(keys.pending)
    pipe.zcard(keys.delayed)
    pipe.hgetall(keys.state)
    pipe.hgetall(keys.counters)
    pipe.zcard(keys.dead)
    pipe.zcount(keys.dead, f"({now - MINUTE_MS}", now)
    pipe.zcount(keys.seen, f"({now - MINUTE_MS}", now)
    pipe.zrange(keys.inflight, 0, -1)
    pipe.hgetall(keys.throughput)
    pipe.xrevrange(keys.events, count=EVENTS_SCANNED)
    pipe.lrange(keys.samples, 0, -1)
    for name in HISTOGRAMS:
        pipe.hgetall(keys.hist(name))
    for p in PRIORITIES:
        lo, hi = priority_score_range(p)
        pipe.zcount(keys.pending, lo, hi)
        pipe.zrange(keys.pending, lo, hi, byscore=True, offset=0, num=1, withscores=True)
    (pending, delayed, state, counters, dead_now, dead_minute, seen_minute, inflight, tput,
     events, samples, *rest) = pipe.execute()
    hists, by_prio = rest[:len(HISTOGRAMS)], rest[len(HISTOGRAMS):]
    return Snapshot(
        now_ms=now, pending=pending, delayed=delayed, state=state, counters=counters,
        dead_now=dead_now, dead_last_minute=dead_minute, seen_last_minute=seen_minute,
        inflight_ids=inflight, inflight_entries=_inflight_entries(client, keys, inflight),
        throughput={int(k): int(v) for k, v in tput.items() if k.isdigit()},
        events=events, samples=samples,
        by_priority={p: int(by_prio[2 * i]) for i, p in enumerate(PRIORITIES)},
        oldest_enqueued_ms=[split_score(r[0][1])[1] for r in by_prio[1::2] if r],
        histograms={name: {k.decode(): int(v) for k, v in raw.items()}
                    for name, raw in zip(HISTOGRAMS, hists, strict=True)},
    )


def _inflight_entries(client: redis.Redis, keys: QueueKeys, ids: Sequence[bytes]) -> int:
    if not ids:
        return 0
    pipe = client.pipeline(transaction=False)
    for b in ids:
        pipe.hmget(keys.batch(b.decode()), META_FIELDS)
    records = (BatchRecord.from_meta(b.decode(), meta)
               for b, meta in zip(ids, pipe.execute(), strict=True))
    return sum(r.size for r in records if r is not None)


def _decode_event(eid: bytes, fields: Mapping[bytes, bytes]) -> dict[str, Any]:
    event: dict[str, Any] = {"id": eid.decode(), "ms": int(eid.split(b"-")[0])}
    event.update({f.decode(): v.decode() for f, v in fields.items()})
    return event


def sizing_events(snap: Snapshot) -> list[SizingEvent]:
    """The latest size changes, newest first, with their evidence decoded."""
    out: list[SizingEvent] = []
    for eid, fields in snap.events:
        if fields.get(b"type") != b"sizing":
            continue
        event = _decode_event(eid, fields)
        evidence: Any = event.get("evidence", "{}")
        try:
            evidence = orjson.loads(evidence)
        except orjson.JSONDecodeError:
            pass
        out.append(SizingEvent(id=event["id"], ms=event["ms"], type="sizing",
                               before=int(event["before"]), after=int(event["after"]),
                               mode=event.get("mode", "?"), evidence=evidence))
        if len(out) == SIZING_EVENTS_SHOWN:
            break
    return out


def _buffer(snap: Snapshot, config: BatchProcessingConfig) -> BufferFigures:
    pending_bytes = _int(snap.state, "bytes")
    by_count = snap.pending / config.max_buffer_size
    by_bytes = pending_bytes / config.max_buffer_bytes
    oldest = snap.oldest_enqueued_ms
    return BufferFigures(
        pending=snap.pending, delayed=snap.delayed, bytes=pending_bytes,
        utilization=round(max(by_count, by_bytes), 4),
        utilization_count=round(by_count, 4), utilization_bytes=round(by_bytes, 4),
        by_priority={str(p): snap.by_priority[p] for p in PRIORITIES},
        oldest_age_ms=(snap.now_ms - min(oldest)) if oldest else 0,
        in_flight_batches=len(snap.inflight_ids), in_flight_entries=snap.inflight_entries,
        dead=snap.dead_now, paused_until_ms=_int(snap.state, "paused_until_ms"),
        paused_reason=paused_reason(snap),
        capacity=config.max_buffer_size, capacity_bytes=config.max_buffer_bytes,
    )


def paused_reason(snap: Snapshot) -> str | None:
    """Why the queue is paused (pause.lua), while the pause lasts; None for a rate limit."""
    raw = snap.state.get(b"paused_reason")
    if not raw or _int(snap.state, "paused_until_ms") <= snap.now_ms:
        return None
    return raw.decode()


def _latency(snap: Snapshot) -> dict[str, LatencySummary]:
    return {
        name: figures.latency_summary(snap.histograms[name],
                                      _float(snap.counters, f"{name}_sum") or 0.0)
        for name in HISTOGRAMS
    }


def _performance(snap: Snapshot, latency: Mapping[str, LatencySummary],
                 config: BatchProcessingConfig) -> PerformanceFigures:
    now_s = snap.now_ms // 1000
    batches, entries = _int(snap.counters, "batches_processed"), _int(snap.counters, "acked")
    proc = latency["processing_ms"]
    samples = figures.parse_samples(snap.samples)
    recent = figures.recent_processing(samples, snap.now_ms)
    # arrivals are counted from the de-duplication window, when it spans the last minute
    arrival = (round(snap.seen_last_minute / 60, 3)
               if config.dedupe_window_seconds >= 60 and config.dedupe_max_ids > 0 else None)
    return PerformanceFigures(
        throughput_eps=round(figures.throughput_eps(snap.throughput, now_s, 10), 3),
        throughput_eps_60s=round(figures.throughput_eps(snap.throughput, now_s, 60), 3),
        arrival_eps_60s=arrival,
        avg_processing_time_ms=proc.avg_ms,
        p50_processing_ms=proc.p50_ms, p95_processing_ms=proc.p95_ms,
        p99_processing_ms=proc.p99_ms,
        recent_p95_processing_ms=figures.exact_percentile(recent, 0.95),
        recent_batches=len(recent),
        avg_queue_wait_ms=latency["queue_wait_ms"].avg_ms,
        avg_end_to_end_ms=latency["end_to_end_ms"].avg_ms,
        avg_batch_size=round(entries / batches, 2) if batches else 0.0,
        batches_processed=batches, entries_processed=entries,
        batches_failed=_int(snap.counters, "batches_failed"),
        performance_target_ms=config.performance_target_ms,
        throughput_target_eps=config.throughput_target_eps,
    )


def _counters(snap: Snapshot) -> Counters:
    return Counters(**{name: _int(snap.counters, name) for name in COUNTERS},
                    flushes={r.value: _int(snap.counters, f"flushes:{r.value}")
                             for r in FlushReason})


def _sizing(snap: Snapshot, config: BatchProcessingConfig, util: float) -> SizingFigures:
    normal, high, urgent = config.thresholds_ms()
    thresholds = effective_thresholds_seconds(
        (normal / 1000, high / 1000, urgent / 1000), util, config.early_flush_pressure,
        config.enable_adaptive_timeout)
    events = sizing_events(snap)
    fit_a, fit_b = _float(snap.state, FIELD_FIT_A), _float(snap.state, FIELD_FIT_B)
    return SizingFigures(
        size_threshold=_int(snap.state, "size_threshold") or config.size_threshold,
        min=config.min_batch_size, max=config.max_batch_size,
        adjustments=_int(snap.counters, "sizing_adjustments"),
        adaptive=config.enable_adaptive_sizing,
        effective_thresholds_seconds={
            str(p): round(t, 3) for p, t in zip(PRIORITIES, thresholds, strict=True)},
        fit=None if fit_a is None or fit_b is None
        else SizingFit(a_ms=round(fit_a, 3), b_ms_per_entry=round(fit_b, 3)),
        events=events,
        history=[e.after for e in reversed(events)],
    )


def read_queue_stats(
    client: redis.Redis,
    config: BatchProcessingConfig,
    *,
    now_ms: int | None = None,
    check_workers: bool = True,
) -> QueueStats:
    """Buffer, performance, latency, counters, sizing, health, trends and events (DESIGN §9).

    ``now_ms`` pins the clock (tests); by default Redis's ``TIME``. ``check_workers=False``
    skips the RQ worker look-up (``workers`` is then None and no health rule looks at it).
    Raises ``redis.RedisError`` when Redis cannot be read.
    """
    keys = QueueKeys(config.queue)
    snap = read_snapshot(client, keys, now_ms)
    shards = shard_count(client, config, has_counters=bool(snap.counters))
    if shards > 1:
        from batcher.monitoring.sharded import read_sharded

        return read_sharded(client, config.with_overrides(shards=shards), now_ms=now_ms,
                            check_workers=check_workers)
    return stats_of(client, config, snap, check_workers=check_workers)


def stats_of(client: redis.Redis, config: BatchProcessingConfig, snap: Snapshot, *,
             check_workers: bool = True, rq_keys: Sequence[QueueKeys] = (),
             shards: list[dict[str, Any]] | None = None,
             fullest: float | None = None) -> QueueStats:
    """The figures of ``snap`` (one queue's, or a sharded queue's shards merged). The RQ
    workers are looked up on ``rq_keys``' RQ queues (default: ``config.queue``'s).
    ``fullest``: a sharded queue's fullest shard's utilization, which is the queue's (a full
    shard rejects its sources' entries however empty the others are)."""
    keys = QueueKeys(config.queue)
    buffer = _buffer(snap, config)
    if fullest is not None:
        buffer = dataclasses.replace(buffer, utilization=round(fullest, 4))
    latency = _latency(snap)
    performance = _performance(snap, latency, config)
    counters = _counters(snap)
    sizing_figures = _sizing(snap, config, buffer.utilization)
    workers = None
    if check_workers:
        from batcher.rq.status import live_workers  # RQ only where its registry is read

        rq_client = config.rq_client_for(client)
        found = {w.name: w for k in (rq_keys or [keys]) for w in live_workers(rq_client, k)}
        workers = sorted(found.values(), key=lambda w: w.name)
    samples = figures.parse_samples(snap.samples)
    health = figures.health(figures.HealthInput(
        utilization=buffer.utilization, early_pressure=config.early_flush_pressure,
        emergency_pressure=config.emergency_flush_pressure,
        recent_p95_processing_ms=performance.recent_p95_processing_ms,
        performance_target_ms=config.performance_target_ms,
        throughput_eps_60s=performance.throughput_eps_60s,
        throughput_target_eps=config.throughput_target_eps,
        arrival_eps_60s=performance.arrival_eps_60s,
        backlog=snap.pending + snap.delayed, size_threshold=sizing_figures.size_threshold,
        dead_last_minute=snap.dead_last_minute,
        live_workers=None if workers is None else len(workers),
        in_flight_batches=buffer.in_flight_batches,
        paused_reason=buffer.paused_reason,
        paused_for_ms=max(0, buffer.paused_until_ms - snap.now_ms),
        redis_fault=describe_fault(snap.state.get(b"redis_fault"), snap.now_ms)))
    stats = QueueStats(
        queue=config.queue, now_ms=snap.now_ms, buffer=buffer, performance=performance,
        latency=latency, counters=counters, sizing=sizing_figures, health=health,
        llm=figures.llm_figures(snap.counters),
        trends=Trends(figures.throughput_trend(snap.throughput, snap.now_ms // 1000),
                      figures.processing_trend(samples, snap.now_ms)),
        memory_efficiency=figures.memory_efficiency(counters.accepted, counters.rejected),
        dead_last_minute=snap.dead_last_minute,
        workers=workers,
        events=[_decode_event(eid, e) for eid, e in snap.events[:EVENTS_SHOWN]],
        histograms=snap.histograms,
        # the shared feed schedule of `batcher fetch`, None when no fetcher used this queue
        fetch=fetch_summary(client, keys, now_ms=snap.now_ms),
        # the shared LLM budget this queue's workers draw from (issue 17), when one is set
        budget=Budget(client, config.budget).show() if config.budget else None,
        shards=shards,
    )
    # scrubbed, every string of it: events, health, pause reasons and fetch errors carry
    # text a handler or a feed raised (batcher.redaction)
    return QueueStats.from_dict(scrub_value(stats.to_dict()))


def detailed_stats(
    client: redis.Redis,
    config: BatchProcessingConfig,
    *,
    now_ms: int | None = None,
    check_workers: bool = True,
) -> dict[str, Any]:
    """:func:`read_queue_stats` as the dict of DESIGN §9 (``batcher stats --json``)."""
    return read_queue_stats(client, config, now_ms=now_ms, check_workers=check_workers).to_dict()
