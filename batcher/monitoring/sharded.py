"""A sharded queue's figures: its shards read one by one, merged, shown as one queue.

Every figure of ``stats``, ``top``, ``check`` and the exporter is computed from one merged
:class:`~batcher.stats.Snapshot` by the code that computes a plain queue's: counts, counters,
per-second throughput and histogram buckets are summed, so rates and percentiles are those of
the whole queue; the capacity is the shards' together, and the utilization (what health and
the effective deadlines go by) the fullest shard's. Each shard also gets a one-line summary
(``shards`` in ``stats --json``), and each merged event names its shard (``queue``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import redis

from batcher.config import BatchProcessingConfig
from batcher.keys import QueueKeys, split_shard
from batcher.monitoring import figures
from batcher.monitoring.queue_stats import QueueStats
from batcher.shards import client_for, shard_configs
from batcher.stats import Snapshot, read_snapshot, stats_of

# state fields that add up across shards; the rest are each shard's own (the first's shown)
_SUMMED_STATE = (b"bytes",)


def discover_shards(client: redis.Redis, queue: str) -> int:
    """How many shards of ``queue`` have keys on the server (1: none, a plain queue)."""
    from batcher.monitoring.reads import discover_queues

    found = [i for q in discover_queues(client)
             if (parts := split_shard(q))[0] == queue and (i := parts[1]) is not None]
    return max(found) + 1 if found else 1


def _number(raw: bytes) -> float | None:
    try:
        return float(raw)
    except ValueError:
        return None


def _as_bytes(value: float) -> bytes:
    return str(int(value) if float(value).is_integer() else value).encode()


def _summed(hashes: Sequence[Mapping[bytes, bytes]]) -> dict[bytes, bytes]:
    totals: dict[bytes, float] = {}
    for raw in hashes:
        for key, value in raw.items():
            number = _number(value)
            if number is not None:
                totals[key] = totals.get(key, 0.0) + number
    return {k: _as_bytes(v) for k, v in totals.items()}


def _state(snaps: Sequence[Snapshot]) -> dict[bytes, bytes]:
    state: dict[bytes, bytes] = {}
    for snap in reversed(snaps):  # the first shard's own fields win
        state.update(snap.state)
    for field in _SUMMED_STATE:
        state[field] = _as_bytes(sum(_number(s.state.get(field, b"0")) or 0.0 for s in snaps))
    thresholds = [n for s in snaps if (n := _number(s.state.get(b"size_threshold", b"")))]
    if thresholds:  # each shard sizes its own batches: show their mean
        state[b"size_threshold"] = _as_bytes(round(sum(thresholds) / len(thresholds)))
    paused = [s.state[b"paused_until_ms"] for s in snaps if b"paused_until_ms" in s.state]
    if paused:
        state[b"paused_until_ms"] = max(paused, key=lambda v: _number(v) or 0.0)
    return state


def _event_key(event: tuple[bytes, Mapping[bytes, bytes]]) -> tuple[int, int]:
    ms, _, seq = event[0].partition(b"-")
    return int(ms), int(seq or 0)


def merge_snapshots(names: Sequence[str], snaps: Sequence[Snapshot]) -> Snapshot:
    """One snapshot of the shards ``names`` read as ``snaps``."""
    events = sorted(((eid, {**fields, b"queue": name.encode()})
                     for name, snap in zip(names, snaps, strict=True)
                     for eid, fields in snap.events), key=_event_key, reverse=True)
    throughput: dict[int, int] = {}
    for snap in snaps:
        for second, n in snap.throughput.items():
            throughput[second] = throughput.get(second, 0) + n
    histograms: dict[str, dict[str, int]] = {}
    for snap in snaps:
        for name, buckets in snap.histograms.items():
            merged = histograms.setdefault(name, {})
            for bound, n in buckets.items():
                merged[bound] = merged.get(bound, 0) + n
    samples = sorted((s for snap in snaps for s in snap.samples), reverse=True)
    return Snapshot(
        now_ms=max(s.now_ms for s in snaps),
        pending=sum(s.pending for s in snaps), delayed=sum(s.delayed for s in snaps),
        state=_state(snaps), counters=_summed([s.counters for s in snaps]),
        dead_now=sum(s.dead_now for s in snaps),
        dead_last_minute=sum(s.dead_last_minute for s in snaps),
        seen_last_minute=sum(s.seen_last_minute for s in snaps),
        inflight_ids=[i for s in snaps for i in s.inflight_ids],
        inflight_entries=sum(s.inflight_entries for s in snaps),
        throughput=throughput, events=events, samples=samples,
        by_priority={p: sum(s.by_priority.get(p, 0) for s in snaps)
                     for p in snaps[0].by_priority},
        oldest_enqueued_ms=[ms for s in snaps for ms in s.oldest_enqueued_ms],
        histograms=histograms,
    )


def _utilization(snap: Snapshot, config: BatchProcessingConfig) -> float:
    pending_bytes = _number(snap.state.get(b"bytes", b"0")) or 0.0
    return max(snap.pending / config.max_buffer_size, pending_bytes / config.max_buffer_bytes)


def shard_summary(name: str, snap: Snapshot, config: BatchProcessingConfig) -> dict[str, Any]:
    """One shard in a line: what differs between shards when one runs hot."""
    def counter(field: str) -> int:
        return int(_number(snap.counters.get(field.encode(), b"0")) or 0)

    return {
        "queue": name, "pending": snap.pending, "delayed": snap.delayed,
        "utilization": round(_utilization(snap, config), 4),
        "in_flight_batches": len(snap.inflight_ids), "dead": snap.dead_now,
        "accepted": counter("accepted"), "acked": counter("acked"),
        "rejected": counter("rejected"),
        "throughput_eps_60s": round(
            figures.throughput_eps(snap.throughput, snap.now_ms // 1000, 60), 3),
        "size_threshold": int(_number(snap.state.get(b"size_threshold", b"0")) or 0),
    }


def read_sharded(client: redis.Redis, config: BatchProcessingConfig, *,
                 now_ms: int | None = None, check_workers: bool = True) -> QueueStats:
    """The figures of the sharded queue ``config.queue`` (``config.shards`` shards)."""
    shards = shard_configs(config)
    names = [c.queue for c in shards]
    snaps = [read_snapshot(client_for(client, c), QueueKeys(c.queue), now_ms) for c in shards]
    n = len(shards)
    # the whole queue holds what its shards hold together
    whole = config.with_overrides(max_buffer_size=config.max_buffer_size * n,
                                  max_buffer_bytes=config.max_buffer_bytes * n)
    return stats_of(client, whole, merge_snapshots(names, snaps),
                    check_workers=check_workers, rq_keys=[QueueKeys(q) for q in names],
                    shards=[shard_summary(q, s, config) for q, s in zip(names, snaps,
                                                                         strict=True)],
                    fullest=max(_utilization(s, config) for s in snaps))
