"""Redis drops mid-call on the real server: run_batch's claim, ack and fail retries keep every
batch handled and counted exactly once, whether the request or the reply was lost.

A FaultProxy sits between the worker's client and the session's redis-server and cuts the
connection carrying the marked script call, before the server sees it ("request") or after
it ran and replied ("reply"), which is what a network blip looks like from the worker.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis as redis_py

from batcher import processing as tasks
from batcher.config import BatchProcessingConfig
from batcher.connection import connect
from batcher.coordinator import Coordinator
from batcher.models import Batch
from batcher.producer import BatchStateManager
from batcher.scripts import Scripts
from tests.support.invariants import assert_consistent
from tests.support.proxy import FaultProxy, Loss
from tests.support.redis_server import RedisServer
from tests.support.waiting import wait_until

QUEUE = "lossy"
N = 3


@pytest.fixture
def proxy(redis_server: RedisServer, redis_url: str) -> Iterator[FaultProxy]:
    with FaultProxy(redis_server.port) as p:
        yield p


def _config(url: str) -> BatchProcessingConfig:
    # a one-second job lease, so a batch left claimed is reaped within the test
    return BatchProcessingConfig(queue=QUEUE, redis_url=url, log_format="json",
                                 job_timeout_seconds=1, lease_grace_seconds=0)


def _dispatched(client: redis_py.Redis, config: BatchProcessingConfig) -> str:
    BatchStateManager(client, config).queue_many(
        [{"id": f"e{i}", "source": "t", "payload": {"i": i}} for i in range(N)])
    coordinator = Coordinator(client, config)
    coordinator.start()
    coordinator.drain(manual=True)
    (key,) = client.scan_iter(match=f"{config.keys.base}:batch:*")
    return bytes(key).decode().rsplit(":", 1)[1]


class Handler:
    """Counts its calls; answers each entry, or raises when ``fail`` is set."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[list[str]] = []
        self.fail = fail

    def __call__(self, batch: Batch) -> dict[str, Any]:
        self.calls.append([e.id for e in batch.entries])
        if self.fail:
            raise ValueError("boom")
        return {e.id: {"done": e.id} for e in batch.entries}


def _context(url: str, config: BatchProcessingConfig, handler: Handler) -> tasks.WorkerContext:
    client = connect(url)
    return tasks.WorkerContext(config, client, Scripts(client, config), handler)


def _sha(ctx: tasks.WorkerContext, script: str) -> bytes:
    return ctx.scripts._scripts[script].sha.encode()


def _stats(client: redis_py.Redis, config: BatchProcessingConfig) -> dict[str, int]:
    raw: Any = client.hgetall(config.keys.stats)
    return {k.decode(): int(float(v)) for k, v in raw.items()}


@pytest.mark.parametrize("loss", ["request", "reply"])
def test_an_ack_lost_on_the_wire_is_applied_exactly_once(
    loss: Loss, proxy: FaultProxy, redis_url: str, real_redis: redis_py.Redis
) -> None:
    config = _config(redis_url)
    batch_id = _dispatched(real_redis, config)
    handler = Handler()
    ctx = _context(proxy.url, config, handler)
    cut = proxy.lose(_sha(ctx, "ack_results"), loss)  # the ack that carries results

    outcome = tasks.run_batch(ctx, batch_id, 1)

    assert cut.is_set()
    assert len(handler.calls) == 1
    stats = _stats(real_redis, config)
    assert stats["acked"] == N
    if loss == "request":  # the retry was the only ack the server saw
        assert outcome == {"status": "acked", "acked": N}
        assert "stale_acks" not in stats
    else:  # the first ack ran; its retry is refused and counted, not applied again
        assert outcome == {"status": "stale", "acked": 0}
        assert stats["stale_acks"] == 1
    assert real_redis.get(config.keys.result("e1")) == b'{"done":"e1"}'
    assert not real_redis.exists(config.keys.batch(batch_id))
    assert_consistent(real_redis, config.keys)


@pytest.mark.parametrize("loss", ["request", "reply"])
def test_a_failure_lost_on_the_wire_is_recorded_exactly_once(
    loss: Loss, proxy: FaultProxy, redis_url: str, real_redis: redis_py.Redis
) -> None:
    config = _config(redis_url)
    batch_id = _dispatched(real_redis, config)
    ctx = _context(proxy.url, config, Handler(fail=True))
    cut = proxy.lose(_sha(ctx, "fail"), loss)

    outcome = tasks.run_batch(ctx, batch_id, 1)

    assert cut.is_set()
    stats = _stats(real_redis, config)
    assert stats["batches_failed"] == 1
    assert stats.get("stale_fails", 0) == (1 if loss == "reply" else 0)
    assert outcome == {"status": "failed", "outcome": "retrying" if loss == "request"
                       else "stale"}
    assert real_redis.hget(config.keys.batch(batch_id), "status") == b"retrying"
    assert_consistent(real_redis, config.keys)


def test_a_claim_whose_request_was_lost_is_retried_and_the_batch_handled_once(
    proxy: FaultProxy, redis_url: str, real_redis: redis_py.Redis
) -> None:
    config = _config(redis_url)
    batch_id = _dispatched(real_redis, config)
    handler = Handler()
    ctx = _context(proxy.url, config, handler)
    cut = proxy.lose(_sha(ctx, "claim"), "request")

    assert tasks.run_batch(ctx, batch_id, 1) == {"status": "acked", "acked": N}

    assert cut.is_set() and len(handler.calls) == 1
    assert _stats(real_redis, config)["acked"] == N
    assert_consistent(real_redis, config.keys)


def test_a_claim_whose_reply_was_lost_is_taken_back_by_its_retry_and_acked_once(
    proxy: FaultProxy, redis_url: str, real_redis: redis_py.Redis
) -> None:
    # The claim ran but its reply never came back; the retry carries the same claimant token,
    # so claim.lua hands the record back and this same attempt runs the batch. Before, the
    # retry was refused as already claimed and the batch waited out its lease for the reaper.
    config = _config(redis_url).with_overrides(job_timeout_seconds=180, lease_grace_seconds=5)
    batch_id = _dispatched(real_redis, config)
    handler = Handler()
    ctx = _context(proxy.url, config, handler)
    cut = proxy.lose(_sha(ctx, "claim"), "reply")

    assert tasks.run_batch(ctx, batch_id, 1) == {"status": "acked", "acked": N}

    assert cut.is_set() and len(handler.calls) == 1
    stats = _stats(real_redis, config)
    assert stats["acked"] == N and stats["batches_processed"] == 1
    assert "stale_claims" not in stats and "redeliveries" not in stats
    # acked by attempt 1, the one the claim's lease was for: no reaper was involved
    (ack,) = [fields for _id, fields in real_redis.xrange(config.keys.events)
              if fields[b"type"] == b"ack"]
    assert (ack[b"attempt"], ack[b"n"]) == (b"1", str(N).encode())
    assert not real_redis.exists(config.keys.batch(batch_id))
    assert real_redis.zcard(config.keys.inflight) == 0
    assert_consistent(real_redis, config.keys)


def test_a_claim_whose_reply_was_lost_is_refused_to_another_worker(
    proxy: FaultProxy, redis_url: str, real_redis: redis_py.Redis
) -> None:
    # A worker that lost the reply and died: another worker's claim of the same attempt (a
    # new token) is refused, so the batch waits for the reaper and is handled once.
    config = _config(redis_url)
    batch_id = _dispatched(real_redis, config)
    handler = Handler()
    ctx = _context(proxy.url, config, handler)
    cut = proxy.lose(_sha(ctx, "claim"), "reply")
    with pytest.raises(redis_py.ConnectionError):  # the first worker gives up at once
        ctx.scripts.claim(batch_id, 1, claimant="worker-a")
    assert cut.is_set()

    assert tasks.run_batch(ctx, batch_id, 1, claimant="worker-b") == {"status": "stale"}
    assert handler.calls == []
    assert real_redis.hget(config.keys.batch(batch_id), "status") == b"claimed"
    assert _stats(real_redis, config)["stale_claims"] == 1

    lease_ms = real_redis.zscore(config.keys.inflight, batch_id) or 0
    wait_until(lambda: _redis_ms(real_redis) > lease_ms, "the job lease to end")
    assert Coordinator(real_redis, config).reap() == 1
    assert tasks.run_batch(ctx, batch_id, 2) == {"status": "acked", "acked": N}
    assert len(handler.calls) == 1
    assert _stats(real_redis, config)["acked"] == N
    assert_consistent(real_redis, config.keys)


def _redis_ms(client: redis_py.Redis) -> int:
    sec, usec = client.time()
    return int(sec) * 1000 + int(usec) // 1000
