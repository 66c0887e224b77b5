"""Ingest: entries/s into Redis, ours (queue_many) against the per-entry Lua reference and RQ."""

from __future__ import annotations

import multiprocessing as mp
import time
from typing import Any

import orjson
import redis
from rq import Queue

from batcher.config import BatchProcessingConfig
from batcher.producer import CHUNK_SIZE, BatchStateManager
from batcher.records import score_of
from benchlib import rq_tasks
from benchlib.common import make_entries

# the naive layout a per-entry script writes: what enqueue.lua must beat with one call a chunk
REFERENCE_LUA = """
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
return 1
"""


def _chunks(entries: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    return [entries[i:i + CHUNK_SIZE] for i in range(0, len(entries), CHUNK_SIZE)]


def ours_once(config: BatchProcessingConfig, entries: list[dict[str, Any]]) -> float:
    """Seconds to queue_many ``entries`` in chunks of 500 from this process."""
    manager = BatchStateManager(config=config)
    chunks = _chunks(entries)
    manager.redis.ping()
    manager.scripts.preload()
    start = time.perf_counter()
    for chunk in chunks:
        manager.queue_many(chunk)
    elapsed = time.perf_counter() - start
    manager.redis.close()
    return elapsed


def _producer(config: BatchProcessingConfig, entries: list[dict[str, Any]],
              barrier: Any, out: Any) -> None:
    manager = BatchStateManager(config=config)
    manager.scripts.preload()
    chunks = _chunks(entries)
    barrier.wait()
    start = time.perf_counter()
    for chunk in chunks:
        manager.queue_many(chunk)
    out.put((start, time.perf_counter()))


def ours_parallel(config: BatchProcessingConfig, count: int, producers: int) -> float:
    """Entries/s of ``producers`` processes, each sending count/producers entries at once."""
    ctx = mp.get_context("fork")
    barrier, out = ctx.Barrier(producers), ctx.Queue()
    share = count // producers
    procs = [
        ctx.Process(target=_producer, args=(
            config, make_entries(share, seed=100 + i, prefix=f"p{i}-"), barrier, out))
        for i in range(producers)
    ]
    for p in procs:
        p.start()
    spans = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    span = float(max(e for _, e in spans) - min(s for s, _ in spans))
    return share * producers / span


def reference_once(client: redis.Redis, config: BatchProcessingConfig,
                   entries: list[dict[str, Any]]) -> float:
    """Seconds for the per-entry ZADD+HSET script, pipelined 500 calls per round trip."""
    script = client.register_script(REFERENCE_LUA)
    keys = [config.keys.pending, config.keys.payloads]
    script(keys=keys, args=["0", "warm", "{}"])
    client.delete(*keys)
    start = time.perf_counter()
    for chunk in _chunks(entries):
        pipe = client.pipeline(transaction=False)
        now_ms = int(time.time() * 1000)
        for e in chunk:
            envelope = orjson.dumps({"id": e["id"], "source": e["source"],
                                     "priority": e["priority"], "payload": e["payload"]})
            script(keys=keys, args=[score_of(e["priority"], now_ms), e["id"], envelope],
                   client=pipe)
        pipe.execute()
    return time.perf_counter() - start


def rq_once(client: redis.Redis, entries: list[dict[str, Any]]) -> float:
    """Seconds for RQ enqueue_many of one job per entry, one pipeline per 500."""
    queue = Queue("bench-ingest", connection=client)
    start = time.perf_counter()
    for chunk in _chunks(entries):
        with client.pipeline() as pipe:
            queue.enqueue_many([Queue.prepare_data(rq_tasks.echo, args=(e,)) for e in chunk],
                               pipeline=pipe)
            pipe.execute()
    return time.perf_counter() - start
