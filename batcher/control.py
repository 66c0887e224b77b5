"""Operator actions on a queue, shared by the CLI and the dashboard: pause, resume, flush now,
requeue and purge dead entries. One implementation, so a button and a command do the same.

A pause is ``paused_until_ms`` in the queue's state hash set far in the future: the field
flush.lua already honours for a handler's rate limit, so no script changes and a pause
survives coordinator restarts. As with a rate limit, an emergency-level buffer still
flushes (a pause must not overflow the buffer and lose entries).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import redis

from batcher.config import BatchProcessingConfig
from batcher.scripts import EVENTS_MAXLEN, Scripts
from batcher.shards import queues_of

# far enough to be "until resumed" (year 2286), small enough for flush.lua's float maths
PAUSED_FOREVER_MS = 10**13 - 1
CHUNK = 500


@dataclass(frozen=True, slots=True)
class FlushSummary:
    """What one manual flush did."""

    batches: int
    entries: int
    still_pending: int


@dataclass(frozen=True, slots=True)
class RequeueSummary:
    """What a requeue or purge did; ``already_pending`` were re-sent by a producer meanwhile."""

    moved: int
    purged: int
    missing: int


def _event(pipe: redis.client.Pipeline, config: BatchProcessingConfig, kind: str,
           **fields: str) -> None:
    entry: dict[Any, Any] = {"type": kind}
    entry.update(fields)
    pipe.xadd(config.keys.events, entry, maxlen=EVENTS_MAXLEN, approximate=True)


def pause(client: redis.Redis, config: BatchProcessingConfig,
          seconds: float | None = None) -> int:
    """Stop flushing the queue (a sharded queue: every shard) until :func:`resume` (or for
    ``seconds``); return the paused-until ms. Producers keep enqueueing; batches in flight
    finish."""
    return max(_pause_one(c, q, seconds) for c, q in queues_of(client, config))


def _pause_one(client: redis.Redis, config: BatchProcessingConfig,
               seconds: float | None) -> int:
    sec, usec = client.time()
    now_ms = int(sec) * 1000 + int(usec) // 1000
    until = PAUSED_FOREVER_MS if seconds is None else now_ms + int(seconds * 1000)
    pipe = client.pipeline(transaction=True)
    pipe.hset(config.keys.state, "paused_until_ms", str(until))
    pipe.hdel(config.keys.state, "paused_reason")  # an operator's pause, not the LLM's
    _event(pipe, config, "pause", until_ms=str(until))
    pipe.execute()
    return until


def resume(client: redis.Redis, config: BatchProcessingConfig) -> None:
    """Flush again at once: clears an operator pause and any rate-limit pause, and wakes the
    coordinator (one wakeup token, as the scripts keep it); a sharded queue's every shard."""
    for shard_client, shard in queues_of(client, config):
        _resume_one(shard_client, shard)


def _resume_one(client: redis.Redis, config: BatchProcessingConfig) -> None:
    k = config.keys
    pipe = client.pipeline(transaction=True)
    pipe.hdel(k.state, "paused_until_ms", "paused_reason")
    pipe.delete(k.wakeup)
    pipe.rpush(k.wakeup, "1")
    _event(pipe, config, "resume")
    pipe.execute()


def paused_until_ms(client: redis.Redis, config: BatchProcessingConfig) -> int:
    """The ms the queue is paused until (0: not paused; may be in the past); a sharded
    queue's latest."""
    until = 0
    for shard_client, shard in queues_of(client, config):
        raw = cast(bytes | None, shard_client.hget(shard.keys.state, "paused_until_ms"))
        until = max(until, int(float(raw)) if raw else 0)
    return until


def flush_now(client: redis.Redis, config: BatchProcessingConfig) -> FlushSummary:
    """Flush everything pending (reason ``manual``, ignoring a pause) and dispatch it to RQ;
    a sharded queue's every shard, the figures summed."""
    from batcher.coordinator import Coordinator  # the coordinator imports RQ: only when used

    batches = entries = left = 0
    for shard_client, shard in queues_of(client, config):
        runner = Coordinator(shard_client, shard)
        runner.start()
        runner.drain(manual=True)
        batches += runner.tally.flushed_batches
        entries += runner.tally.flushed_entries
        left += int(shard_client.zcard(shard.keys.pending))
    return FlushSummary(batches, entries, left)


def _all_dead(client: redis.Redis, config: BatchProcessingConfig, scripts: Scripts,
              purge: bool) -> tuple[int, int, int]:
    # each pass removes what it took from the dead set, so the next chunk is again at rank 0
    moved = purged = missing = 0
    while True:
        ids = [i.decode() for i in cast(list[bytes],
                                        client.zrange(config.keys.dead, 0, CHUNK - 1))]
        if not ids:
            return moved, purged, missing
        m, p, x = scripts.requeue(ids, purge=purge)
        moved, purged, missing = moved + m, purged + p, missing + x
        if m + p == 0:  # pragma: no cover - nothing moved: do not spin
            return moved, purged, missing


def requeue_dead(client: redis.Redis, config: BatchProcessingConfig,
                 ids: list[str] | None = None) -> RequeueSummary:
    """Dead entries back to pending with their original score; ``None`` = all of them (a
    sharded queue's: every shard's). ``purged`` counts ids a producer re-sent meanwhile
    (already pending again)."""
    return _on_every_shard(client, config, ids, purge=False)


def purge_dead(client: redis.Redis, config: BatchProcessingConfig,
               ids: list[str] | None = None) -> RequeueSummary:
    """Delete dead entries for good (counted in ``counters.purged``); ``None`` = all."""
    return _on_every_shard(client, config, ids, purge=True)


def _on_every_shard(client: redis.Redis, config: BatchProcessingConfig,
                    ids: list[str] | None, purge: bool) -> RequeueSummary:
    shards = queues_of(client, config)
    moved = purged = missing = 0
    held = 0  # of the given ids, those some shard holds (an id is dead in one shard at most)
    for shard_client, shard in shards:
        scripts = Scripts(shard_client, shard)
        if ids is None:
            m, p, x = _all_dead(shard_client, shard, scripts, purge)
        else:
            # the id does not name its shard: each shard gets the ids its dead set holds
            mine = ids if len(shards) == 1 else _dead_among(shard_client, shard, ids)
            if not mine:
                continue
            held += len(mine)
            m, p, x = scripts.requeue(mine, purge=purge)
        moved, purged, missing = moved + m, purged + p, missing + x
    if ids is not None and len(shards) > 1:
        missing += len(set(ids)) - held
    return RequeueSummary(moved, purged, missing)


def _dead_among(client: redis.Redis, config: BatchProcessingConfig, ids: list[str]
                ) -> list[str]:
    unique = list(dict.fromkeys(ids))
    scores = client.zmscore(config.keys.dead, unique)
    return [i for i, s in zip(unique, scores, strict=True) if s is not None]
