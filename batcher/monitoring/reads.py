"""Reads beyond ``detailed_stats`` that more than one view shows: the queues on a server, the
dead set, the batches in flight and one batch's record. ``batcher dead list`` and the
dashboard both read here, so a figure means the same wherever it is shown.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

import orjson
import redis

from batcher.config import BatchProcessingConfig
from batcher.keys import PREFIX, QUEUE_NAME_RE, QueueKeys
from batcher.models import split_score
from batcher.redaction import scrub

CHUNK = 500
SCAN_COUNT = 1000


def discover_queues(client: redis.Redis) -> list[str]:
    """Every queue with a state hash on the server (SCAN, never KEYS), sorted."""
    found: set[str] = set()
    # '{' and '}' are not glob specials; the name between them is checked before use
    for raw in client.scan_iter(match=f"{PREFIX}:{{*}}:state", count=SCAN_COUNT):
        name = cast(bytes, raw).decode()
        queue = name[len(PREFIX) + 2:-len("}:state")]
        if QUEUE_NAME_RE.match(queue):
            found.add(queue)
    return sorted(found)


def dead_records(client: redis.Redis, config: BatchProcessingConfig,
                 limit: int) -> Iterator[dict[str, Any]]:
    """Dead entries, oldest death first: id, reason, error, attempts, died_at_ms, envelope."""
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
            parsed: dict[str, Any] = {}
            if record is not None:
                try:
                    parsed = orjson.loads(record)
                except orjson.JSONDecodeError:
                    parsed = {"error": "(unreadable dead record)"}
            yield {"id": entry_id.decode(), "reason": parsed.get("reason"),
                   "error": _scrubbed(parsed.get("error")), "attempts": parsed.get("attempts"),
                   "died_at_ms": int(died_ms), "envelope": parsed.get("envelope")}
        start += CHUNK


def _scrubbed(error: Any) -> Any:
    # worker-side errors are scrubbed when stored; this covers records written before that
    return scrub(error) if isinstance(error, str) else error


def inflight_batches(client: redis.Redis, keys: QueueKeys,
                     limit: int = 100) -> list[dict[str, Any]]:
    """Batches flushed and not yet acked, earliest lease first: id, lease_ms, status, size."""
    rows = cast(list[tuple[bytes, float]],
                client.zrange(keys.inflight, 0, limit - 1, withscores=True))
    pipe = client.pipeline(transaction=False)
    for batch_id, _ in rows:
        pipe.hmget(keys.batch(batch_id.decode()), "status", "n", "attempt", "reason",
                   "priority", "created_ms")
    out = []
    for (batch_id, lease), meta in zip(rows, pipe.execute() if rows else [], strict=True):
        status, n, attempt, reason, priority, created = (
            None if v is None else v.decode() for v in meta)
        out.append({"id": batch_id.decode(), "lease_ms": int(lease), "status": status,
                    "size": int(n or 0), "attempt": int(attempt or 0), "reason": reason,
                    "priority": int(priority or 0), "created_ms": int(created or 0)})
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
    entries = []
    lines = [line.split(b" ", 2) for line in record.get(b"ix", b"").split(b"\n") if line]
    # best score first: the order the handler gets them in (workers.tasks.build_batch)
    for score, prior, entry_id in sorted((int(float(s)), p, i) for s, p, i in lines):
        priority, enqueued_ms = split_score(score)
        envelope: Any = record.get(b"e:" + entry_id, b"").decode(errors="replace")
        try:
            envelope = orjson.loads(envelope)
        except orjson.JSONDecodeError:
            pass
        entries.append({"id": entry_id.decode(errors="replace"), "priority": priority,
                        "enqueued_ms": enqueued_ms, "prior_attempts": int(prior),
                        "envelope": envelope})
    meta = {k.decode(): v.decode(errors="replace") for k, v in record.items()
            if k != b"ix" and not k.startswith(b"e:")}
    return {"id": batch_id, "lease_ms": None if lease is None else int(lease), "meta": meta,
            "entries": entries}
