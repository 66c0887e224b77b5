"""Builders for script tests: settings, envelopes as a producer sends them, scores, batches."""

from __future__ import annotations

from typing import Any

import orjson
import redis as redis_py

from batcher.config import BatchProcessingConfig
from batcher.fairness import source_group
from batcher.records import BatchRecord, score_of
from batcher.scripts import Scripts

T0 = 1_700_000_000_000  # a fixed "now" (ms) so every score and deadline is predictable

# Small, fast limits; each test overrides what it exercises.
_TEST_DEFAULTS: dict[str, Any] = {
    "queue": "t",
    "redis_url": "redis://localhost:1/0",  # never used: tests hand Scripts a client
    "max_buffer_size": 100,
    "max_buffer_bytes": 1_000_000,
    "size_threshold": 10,
    "min_batch_size": 1,
    "max_batch_size": 20,
    "max_batch_bytes": 100_000,
    "max_entry_bytes": 50_000,
    "time_threshold_seconds": 300,
    "high_time_threshold_seconds": 120,
    "urgent_time_threshold_seconds": 60,
    "max_buffer_age_seconds": 3600,
    "dispatch_lease_seconds": 30,
    "job_timeout_seconds": 180,
    "lease_grace_seconds": 5,
    "max_attempts": 3,
    "result_ttl_seconds": 600,
    "dedupe_window_seconds": 3600,
    "enable_adaptive_timeout": False,
    "log_format": "json",
}


def make_config(**overrides: Any) -> BatchProcessingConfig:
    """Test settings: small limits, adaptive timeout off, ``overrides`` by field name."""
    return BatchProcessingConfig(**{**_TEST_DEFAULTS, **overrides})


def make_scripts(client: redis_py.Redis, **overrides: Any) -> Scripts:
    return Scripts(client, make_config(**overrides))


def envelope(
    entry_id: str, priority: int = 0, payload: Any = None, source: str = "test"
) -> bytes:
    """The exact bytes a producer sends: orjson of {"g","id","source","priority","payload"}."""
    body = {"n": entry_id} if payload is None else payload
    return orjson.dumps({"g": source_group(source), "id": entry_id, "source": source,
                         "priority": priority, "payload": body})


def entry(entry_id: str, priority: int = 0, payload: Any = None,
          source: str = "test") -> tuple[str, int, bytes]:
    """One (id, priority, envelope) triple as ``Scripts.enqueue`` takes it."""
    return entry_id, priority, envelope(entry_id, priority, payload, source)


def score(priority: int, enqueued_ms: int) -> float:
    """The pending score as Redis returns it (a float)."""
    return float(score_of(priority, enqueued_ms))


def batch_entries(record: dict[bytes, bytes] | BatchRecord) -> dict[str, tuple[int, int, bytes]]:
    """A batch record's entries: id -> (score, prior attempts, envelope bytes)."""
    if isinstance(record, BatchRecord):  # as Scripts.claim parsed it
        assert len(record.index) == len(record.envelopes), "ix and e: fields differ"
        return {line.entry_id: (line.score, line.prior_attempts, record.envelopes[line.entry_id])
                for line in record.index}
    out: dict[str, tuple[int, int, bytes]] = {}
    for line in record[b"ix"].split(b"\n"):
        raw_score, prior, entry_id = line.split(b" ", 2)
        out[entry_id.decode()] = (int(raw_score), int(prior), record[b"e:" + entry_id])
    assert len(out) == sum(1 for f in record if f.startswith(b"e:")), "ix and e: fields differ"
    return out


def batch_order(record: dict[bytes, bytes]) -> list[str]:
    """The batch's entry ids in the order a handler gets them: best score first."""
    entries = batch_entries(record)
    return sorted(entries, key=lambda i: entries[i][0])


def read_batch(client: redis_py.Redis, scripts: Scripts, batch_id: str) -> dict[bytes, bytes]:
    record: Any = client.hgetall(scripts.keys.batch(batch_id))
    return dict(record)


def members(client: redis_py.Redis, key: str) -> list[str]:
    """A sorted set's members, lowest score first, decoded."""
    raw: Any = client.zrange(key, 0, -1)
    return [m.decode() for m in raw]


def stat(client: redis_py.Redis, scripts: Scripts, name: str) -> int:
    value = client.hget(scripts.keys.stats, name)
    return 0 if value is None else int(value)


def state_int(client: redis_py.Redis, scripts: Scripts, name: str) -> int:
    value = client.hget(scripts.keys.state, name)
    return 0 if value is None else int(value)


def events(
    client: redis_py.Redis, scripts: Scripts, kind: str | None = None
) -> list[dict[str, str]]:
    """The events stream, oldest first, decoded; only ``kind`` when given."""
    out = []
    stream: Any = client.xrange(scripts.keys.events)
    for _id, fields in stream:
        item = {k.decode(): v.decode() for k, v in fields.items()}
        if kind is None or item.get("type") == kind:
            out.append(item)
    return out


def pending_ids(client: redis_py.Redis, scripts: Scripts) -> list[str]:
    return members(client, scripts.keys.pending)


def dead_record(client: redis_py.Redis, scripts: Scripts, entry_id: str) -> bytes:
    """The raw dead-letter record (JSON composed by Lua) of one entry."""
    raw: Any = client.hget(scripts.keys.dead_payloads, entry_id)
    assert raw is not None, f"{entry_id} is not dead"
    return bytes(raw)


# Envelopes whose bytes a JSON round trip would change: cjson turns [] into {}, rounds big
# integers, may escape '/' or unicode; the last one holds the marker requeue.lua looks for.
AWKWARD_PAYLOADS: dict[str, Any] = {
    "empty-list": [],
    "empty-object": {},
    "big-int": {"n": 12345678901234567890, "l": [[], {}, [{}]]},
    "unicode": {"t": "héllo wörld — 日本語 🚀", "url": "https://example.com/a/b?x=1"},
    "marker": {"text": ',"envelope":{"fake":1}} and "quotes" \\ backslash'},
}
