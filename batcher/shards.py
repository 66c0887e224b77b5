"""Sharded queues: queue ``Q`` with ``shards = N`` is the N queues ``Q~0`` .. ``Q~N-1``.

Each shard is a whole queue of its own (own keys ``batcher:{Q~i}:...``, so its own Cluster
slot, own coordinator loop, own RQ queues). A producer routes an entry by a stable hash of its
source (CRC-32 of the UTF-8 bytes, modulo N), so every entry of one source lands in one shard,
where per-source FIFO order and fair share hold as in any queue. An entry given without a
source is routed by its id instead. The mapping is part of the release contract: a test pins
concrete source -> shard values, and changing N moves most sources to another shard.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import redis

from batcher.config import BatchProcessingConfig
from batcher.connection import same_server
from batcher.errors import BatcherUnavailableError, BufferFullError, ReplicaAckError
from batcher.keys import shard_names
from batcher.models import EnqueueResult

if TYPE_CHECKING:
    from batcher.producer import BatchStateManager


def shard_index(routing_key: str, shards: int) -> int:
    """The shard of ``routing_key`` (a source, else an entry id) among ``shards``: stable
    across processes, hosts and releases (not Python's salted ``hash``)."""
    return zlib.crc32(routing_key.encode()) % shards


def shard_configs(config: BatchProcessingConfig) -> list[BatchProcessingConfig]:
    """One config per shard of ``config.queue`` (``[config]`` when it is not sharded)."""
    if config.shards <= 1:
        return [config]
    return [config.with_overrides(queue=name, shards=1)
            for name in shard_names(config.queue, config.shards)]


def client_for(client: redis.Redis, config: BatchProcessingConfig) -> redis.Redis:
    """The client for one shard's keys beside ``client`` (the queue's): ``client`` itself on
    one server, where it reaches every key; on a Redis Cluster a client pinned to the shard's
    own slot (``connection.same_server``), built once per shard and kept on ``client``."""
    cache: dict[str, redis.Redis] | None = getattr(client, "_batcher_shard_clients", None)
    if cache is None:
        cache = {}
        client._batcher_shard_clients = cache  # type: ignore[attr-defined]
    shard_client = cache.get(config.queue)
    if shard_client is None:
        shard_client = cache[config.queue] = same_server(client, config.keys.state)
    return shard_client


def shard_count(client: redis.Redis, config: BatchProcessingConfig,
                has_counters: bool | None = None) -> int:
    """How many shards ``config.queue`` has: ``config.shards`` when set, else those found on
    the server (SCAN) when the queue itself has no counters (a plain queue that took an
    entry has them; a sharded queue's live in its shards). ``has_counters``: already read."""
    if config.shards > 1:
        return config.shards
    if has_counters is None:
        has_counters = bool(client.exists(config.keys.counters))
    if has_counters:
        return 1
    from batcher.monitoring.sharded import discover_shards

    return discover_shards(client, config.queue)


def queues_of(client: redis.Redis, config: BatchProcessingConfig
              ) -> list[tuple[redis.Redis, BatchProcessingConfig]]:
    """(client, config) of every queue that makes up ``config.queue``: itself, or its shards
    (what an operator's pause, resume, flush or check acts on)."""
    shards = shard_count(client, config)
    if shards == 1:
        return [(client, config)]
    return [(client_for(client, c), c)
            for c in shard_configs(config.with_overrides(shards=shards))]


def enqueue_sharded(shards: Sequence[BatchStateManager], items: Sequence[Mapping[str, Any]],
                    prepared: Sequence[tuple[str, int, bytes]]) -> EnqueueResult:
    """Send each shard its entries of one validated ``queue_many`` call, in the call's order.

    A full shard does not stop the others: the error raised at the end (the first shard's
    kind of ``BufferFullError``) carries the whole call's result. An unreachable shard raises
    at once, its ``unconfirmed_ids`` including every shard not sent yet."""
    groups: dict[int, list[tuple[str, int, bytes]]] = {}
    for item, entry in zip(items, prepared, strict=True):
        source = item.get("source")
        key = source if isinstance(source, str) else entry[0]
        groups.setdefault(shard_index(key, len(shards)), []).append(entry)
    total = EnqueueResult()
    full: BufferFullError | None = None
    order = sorted(groups)
    for n, index in enumerate(order):
        shard = shards[index]
        try:
            total = total + shard._enqueue(groups[index])
        except BufferFullError as exc:  # the other shards may still have room
            total = total + exc.result
            full = full or type(exc)(f"shard {shard.config.queue!r}: {exc}", exc.result)
        except BatcherUnavailableError as exc:
            exc.unconfirmed_ids = [*exc.unconfirmed_ids,
                                   *(e[0] for i in order[n + 1:] for e in groups[i])]
            if isinstance(exc, ReplicaAckError) and isinstance(exc.result, EnqueueResult):
                exc.result = total + exc.result
            raise
    if full is not None:
        raise type(full)(f"{full} ({total.rejected} of {len(items)} rejected in all)", total)
    return total
