"""Reads beyond ``detailed_stats`` that more than one view shows: the queues on a server, the
dead set, the batches in flight and one batch's record. ``batcher dead list`` and the
dashboard both read here, so a figure means the same wherever it is shown.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
from collections.abc import Iterator
from typing import Any, cast

import orjson
import redis

from batcher.config import BatchProcessingConfig
from batcher.connection import scan_all
from batcher.keys import PREFIX, QUEUE_NAME_RE, SHARD_NAME_RE, QueueKeys
from batcher.records import ENVELOPE_PREFIX, INDEX, META_FIELDS, BatchRecord, DeadRecord
from batcher.redaction import scrub
from batcher.shards import queues_of

CHUNK = 500
SCAN_COUNT = 1000


def discover_queues(client: redis.Redis) -> list[str]:
    """Every queue with a state hash on the server, or on any master of a cluster (SCAN,
    never KEYS), sorted."""
    found: set[str] = set()
    # '{' and '}' are not glob specials; the name between them is checked before use
    for raw in scan_all(client, f"{PREFIX}:{{*}}:state", SCAN_COUNT):
        name = raw.decode()
        queue = name[len(PREFIX) + 2:-len("}:state")]
        if QUEUE_NAME_RE.match(queue) or SHARD_NAME_RE.match(queue):
            found.add(queue)
    return sorted(found)


def dead_records(client: redis.Redis, config: BatchProcessingConfig,
                 limit: int) -> Iterator[DeadRecord]:
    """Dead entries, oldest death first (at most ``limit``, 0 = all); a sharded queue's from
    every shard, merged by time of death, each naming its shard."""
    shards = queues_of(client, config)
    if len(shards) == 1:
        yield from _dead_of(client, config, limit)
        return
    merged = heapq.merge(*(_dead_of(c, shard, limit, tag=True) for c, shard in shards),
                         key=lambda dead: dead.died_at_ms)
    yield from itertools.islice(merged, limit or None)


def dead_count(client: redis.Redis, config: BatchProcessingConfig) -> int:
    """How many entries are dead: every shard's of a sharded queue."""
    return sum(int(c.zcard(shard.keys.dead)) for c, shard in queues_of(client, config))


def _dead_of(client: redis.Redis, config: BatchProcessingConfig, limit: int,
             tag: bool = False) -> Iterator[DeadRecord]:
    k = config.keys
    start = 0
    while not limit or start < limit:
        stop = start + CHUNK - 1 if not limit else min(start + CHUNK, limit) - 1
        rows = cast(list[tuple[bytes, float]],
                    client.zrange(k.dead, start, stop, withscores=True))
        if not rows:
            return
        raw = cast(list[bytes | None], client.hmget(k.dead_payloads, [i for i, _ in rows]))
        for (entry_id, died_ms), record in zip(rows, raw, strict=True):
            dead = DeadRecord.parse(entry_id.decode(), int(died_ms), record)
            yield dataclasses.replace(dead, error=_scrubbed(dead.error),
                                      shard=config.queue if tag else None)
        start += CHUNK


def _scrubbed(error: str | None) -> str | None:
    # worker-side errors are scrubbed when stored; this covers records written before that
    return scrub(error) if isinstance(error, str) else error


def inflight_batches(client: redis.Redis, keys: QueueKeys,
                     limit: int = 100) -> list[dict[str, Any]]:
    """Batches flushed and not yet acked, earliest lease first: id, lease_ms, status, size."""
    rows = cast(list[tuple[bytes, float]],
                client.zrange(keys.inflight, 0, limit - 1, withscores=True))
    pipe = client.pipeline(transaction=False)
    for batch_id, _ in rows:
        pipe.hmget(keys.batch(batch_id.decode()), META_FIELDS)
    out = []
    for (batch_id, lease), meta in zip(rows, pipe.execute() if rows else [], strict=True):
        record = BatchRecord.from_meta(batch_id.decode(), meta)
        if record is None:
            out.append({"id": batch_id.decode(), "lease_ms": int(lease), "status": None,
                        "size": 0, "attempt": 0, "reason": None, "priority": 0,
                        "created_ms": 0})
            continue
        out.append({"id": record.id, "lease_ms": int(lease), "status": record.status,
                    "size": record.size, "attempt": record.attempt, "reason": record.reason,
                    "priority": record.priority, "created_ms": record.created_ms})
    return out


def batch_detail(client: redis.Redis, keys: QueueKeys, batch_id: str) -> dict[str, Any] | None:
    """One batch's record: meta fields, lease, and its entries (best score first, as the
    handler gets them) with the calls each had before this batch; None when the batch is
    gone (acked or never existed)."""
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(keys.batch(batch_id))
    pipe.zscore(keys.inflight, batch_id)
    record, lease = cast(tuple[dict[bytes, bytes], float | None], pipe.execute())
    if not record:
        return None
    batch = BatchRecord.from_hash(batch_id, record)
    entries = []
    # best score first: the order the handler gets them in (BatchRecord.to_batch)
    for line in batch.entries_best_first():
        envelope: Any = batch.envelopes.get(line.entry_id, b"").decode(errors="replace")
        try:
            envelope = orjson.loads(envelope)
        except orjson.JSONDecodeError:
            pass
        entries.append({"id": line.entry_id, "priority": line.priority,
                        "enqueued_ms": line.enqueued_ms, "prior_attempts": line.prior_attempts,
                        "envelope": envelope})
    index, prefix = INDEX.encode(), ENVELOPE_PREFIX.encode()
    meta = {k.decode(): v.decode(errors="replace") for k, v in record.items()
            if k != index and not k.startswith(prefix)}
    return {"id": batch_id, "lease_ms": None if lease is None else int(lease), "meta": meta,
            "entries": entries}
