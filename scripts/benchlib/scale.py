"""Flatness (cost per entry as pending grows) and memory (bytes per pending entry and seen id)."""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Iterator
from typing import Any, cast

import redis

from batcher.config import BatchProcessingConfig
from batcher.producer import CHUNK_SIZE, BatchStateManager
from batcher.scripts import Scripts
from benchlib.common import make_entries, rss_payload

FLUSH_BATCH = 100
ROUNDS_PER_LEVEL = 20
_POOL = 1000
# entries come from this many sources, so flush.lua's fair share plans over 1,000 of them
FLATNESS_SOURCES = 1_000
MEMORY_SOURCES = 100


def flatness_config(base: BatchProcessingConfig) -> BatchProcessingConfig:
    # thresholds far away, so each flush call pops one full size-triggered batch; the seen
    # window as shipped (1 day, capped at dedupe_max_ids = 1M ids), so at the 1M level it
    # holds 1M ids and every chunk also trims 500
    return base.with_overrides(
        size_threshold=FLUSH_BATCH, min_batch_size=FLUSH_BATCH, max_batch_size=FLUSH_BATCH,
        enable_adaptive_sizing=False, time_threshold_seconds=86_400,
        high_time_threshold_seconds=86_400, urgent_time_threshold_seconds=86_400,
        max_buffer_age_seconds=86_400, max_inflight_batches=10_000_000)


class _Entries:
    """Unique ids over a pool of ~1 KB payloads: cheap enough to make a million."""

    def __init__(self, seed: int):
        rng = random.Random(seed)
        self._rng = rng
        self._pool = [rss_payload(rng, n) for n in range(_POOL)]
        self._n = 0

    def chunk(self, size: int = CHUNK_SIZE) -> list[dict[str, Any]]:
        out = []
        for _ in range(size):
            self._n += 1
            out.append({"id": str(uuid.UUID(int=self._rng.getrandbits(128), version=4)),
                        "source": f"feed-{self._n % FLATNESS_SOURCES}", "priority": 0,
                        "payload": self._pool[self._n % _POOL]})
        return out


def _batch_ids(prefix: str) -> Iterator[str]:
    n = 0
    while True:
        n += 1
        yield f"{prefix}{n}"


REFERENCE_LEVEL = 1_000


class _Queue:
    """One queue under test: its producer, its scripts, a round of enqueue + flush timed."""

    def __init__(self, config: BatchProcessingConfig, client: redis.Redis, source: _Entries,
                 ids: Iterator[str]):
        self.config, self.client, self.source, self.ids = config, client, source, ids
        self.manager = BatchStateManager(config=config)
        self.scripts = Scripts(self.manager.redis, config)
        self.scripts.preload()
        self._filler = 0

    def fill(self, level: int) -> None:
        while (have := int(self.client.zcard(self.config.keys.pending))) < level:
            self.manager.queue_many(self.source.chunk(min(CHUNK_SIZE, level - have)))

    def match_seen(self, other: _Queue) -> None:
        """Grow this queue's seen set to the size of ``other``'s, with older ids of its own.

        The seen set's size follows traffic, not the buffer: a day of it fills the set to
        its cap whether 1k or 1M entries are pending. Held at the same size (and trimming at
        the cap alike), the two queues of a round differ only in how many entries pend.
        """
        key = self.config.keys.seen
        missing = int(self.client.zcard(other.config.keys.seen)) - int(self.client.zcard(key))
        old_ms = int(time.time() * 1000) - 60_000  # inside the window, older than any new id
        pipe = self.client.pipeline(transaction=False)
        for start in range(0, max(missing, 0), 10_000):
            pipe.zadd(key, {f"seen-{self._filler + i:031d}": old_ms
                            for i in range(start, min(start + 10_000, missing))})
            if len(pipe) >= 10:
                pipe.execute()
        pipe.execute()
        self._filler += max(missing, 0)

    def round(self) -> tuple[float, float]:
        """Seconds of one queue_many of 500, and of 500/FLUSH_BATCH flush.lua calls."""
        chunk = self.source.chunk()
        t0 = time.perf_counter()
        self.manager.queue_many(chunk)
        enq = time.perf_counter() - t0
        fl, popped = 0.0, []
        for _ in range(CHUNK_SIZE // FLUSH_BATCH):
            batch_id = next(self.ids)
            t0 = time.perf_counter()
            decision = self.scripts.flush(batch_id)
            fl += time.perf_counter() - t0
            if decision.batch is None or decision.batch.size != FLUSH_BATCH:
                raise RuntimeError(f"flatness: flush popped {decision}")
            popped.append(batch_id)
        self.client.delete(*(self.config.keys.batch(b) for b in popped))
        self.client.zrem(self.config.keys.inflight, *popped)
        return enq, fl


def flatness(config: BatchProcessingConfig, levels: list[int], repeat: int
             ) -> dict[str, dict[int, list[float]]]:
    """µs per entry of enqueue (queue_many of 500) and of flush (flush.lua, 100 per call).

    Every round at a level is paired with a round on a second queue of the same server held
    at REFERENCE_LEVEL pending ("…_ref_us"), so a level's cost and the 1k cost it is divided
    by are taken in the same seconds: measured one after the other, the machine's drift
    over the minutes a 1M fill takes would land in the ratio. The second queue's seen set is
    kept as large as the first's (see _Queue.match_seen), so only the pending count differs.
    """
    client = redis.Redis.from_url(config.redis_url)
    client.flushall()
    source, ids = _Entries(seed=11), _batch_ids("flat")
    main = _Queue(config, client, source, ids)
    ref = _Queue(config.with_overrides(queue=config.queue + "-ref"), client, source, ids)
    ref.fill(REFERENCE_LEVEL)
    kinds = ("enqueue_us", "flush_us", "enqueue_ref_us", "flush_ref_us")
    out: dict[str, dict[int, list[float]]] = {k: {} for k in kinds}
    n = ROUNDS_PER_LEVEL * CHUNK_SIZE
    for level in levels:
        main.fill(level)
        ref.match_seen(main)
        for key in out:
            out[key][level] = []
        for _ in range(repeat):
            totals = [0.0] * 4
            for _ in range(ROUNDS_PER_LEVEL):
                enq, fl = main.round()
                enq_ref, fl_ref = ref.round()
                for i, t in enumerate((enq, fl, enq_ref, fl_ref)):
                    totals[i] += t
            for key, total in zip(kinds, totals, strict=True):
                out[key][level].append(total / n * 1e6)
    # a million entries take the server seconds to free: not on this client's socket timeout
    client.flushall(asynchronous=True)
    return out


def jemalloc_size(n: int) -> int:
    """jemalloc's size class for an allocation of ``n`` bytes (4 classes per doubling)."""
    if n <= 16:
        return 8 if n <= 8 else 16
    if n <= 128:
        return -(-n // 16) * 16
    step = 1 << (n - 1).bit_length() - 3
    return -(-n // step) * step


def sds_alloc(length: int) -> int:
    header = 3 if length < 256 else 5 if length < 65_536 else 9
    return jemalloc_size(length + header + 1)


def _usage(client: redis.Redis, keys: list[str]) -> dict[str, int]:
    out = {}
    for key in keys:
        used = client.memory_usage(key, samples=0)
        if used:
            out[key.rsplit(":", 1)[-1]] = int(used)
    return out


def memory(config: BatchProcessingConfig, count: int) -> dict[str, Any]:
    """Bytes of Redis memory per pending entry beyond its envelope; bytes per seen id."""
    client = redis.Redis.from_url(config.redis_url)
    entries = make_entries(count, seed=21)
    for n, item in enumerate(entries):
        item["source"] = f"feed-{n % MEMORY_SOURCES}"
    out: dict[str, Any] = {"entries": count, "id_chars": len(entries[0]["id"])}
    for label, window in (("pending", 0), ("seen", 86_400)):
        client.flushall()
        cfg = config.with_overrides(dedupe_window_seconds=window, dedupe_max_ids=10_000_000)
        manager = BatchStateManager(config=cfg)
        for i in range(0, count, CHUNK_SIZE):
            manager.queue_many(entries[i:i + CHUNK_SIZE])
        by_key = _usage(client, cfg.keys.fixed())
        lists = client.scan_iter(match=f"{cfg.keys.source_prefix}*", count=1000)
        by_key["source_lists"] = sum(_usage(client, [k.decode() for k in lists]).values())
        if label == "pending":
            envelope_bytes = int(client.hget(cfg.keys.state, "bytes") or 0)
            out["avg_envelope_bytes"] = envelope_bytes / count
            out["by_key"] = by_key
            out["pending_bytes_per_entry"] = (sum(by_key.values()) - envelope_bytes) / count
            # what no layout can avoid: the allocator's size class for each stored envelope
            lengths = [len(v) for v in cast(list[bytes], client.hvals(cfg.keys.payloads))]
            rounding = sum(sds_alloc(n) - n for n in lengths) / count
            out["envelope_allocator_bytes_per_entry"] = rounding
            out["pending_bytes_per_entry_excluding_envelope_allocation"] = (
                out["pending_bytes_per_entry"] - rounding)
        else:
            out["seen_bytes_per_id"] = by_key.get("seen", 0) / count
    client.flushall()
    return out
