"""Dead workers and late replies: the reaper's view of RQ jobs, stale acks, retried acks."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis as redis_py
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from batcher import processing as tasks
from batcher.config import BatchProcessingConfig
from batcher.connection import connect
from batcher.coordinator import Coordinator
from batcher.models import Batch
from batcher.producer import BatchStateManager
from batcher.records import BatchRecord
from batcher.rq import job_id
from batcher.rq.dispatch import Dispatcher
from batcher.rq.task import process_batch
from batcher.scripts import Scripts
from tests.support.invariants import assert_consistent
from tests.support.redis_server import free_port
from tests.support.waiting import wait_until

QUEUE = "late"
FAR_FUTURE_MS = 10**15


def _config(url: str, **overrides: Any) -> BatchProcessingConfig:
    return BatchProcessingConfig(queue=QUEUE, redis_url=url, log_format="json", **overrides)


def _redis_ms(client: redis_py.Redis) -> int:
    sec, usec = client.time()
    return int(sec) * 1000 + int(usec) // 1000


def _dispatched(client: redis_py.Redis, config: BatchProcessingConfig, n: int = 3) -> str:
    BatchStateManager(client, config).queue_many(
        [{"id": f"e{i}", "source": "t", "payload": {"i": i}} for i in range(n)])
    coordinator = Coordinator(client, config)
    coordinator.start()
    coordinator.drain(manual=True)
    (key,) = client.scan_iter(match=f"{config.keys.base}:batch:*")
    return bytes(key).decode().rsplit(":", 1)[1]


@pytest.fixture
def worker_env(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("BATCH_REDIS_URL", redis_url)
    monkeypatch.setenv("BATCH_QUEUE", QUEUE)
    monkeypatch.setenv("BATCH_HANDLER", f"{__name__}:superseding_handler")
    tasks._CONTEXTS.clear()
    yield
    for ctx in tasks._CONTEXTS.values():
        ctx.client.close()
    tasks._CONTEXTS.clear()


def superseding_handler(batch: Batch) -> dict[str, Any]:
    """While this call runs, the reaper decides its worker is dead and redelivers the batch."""
    scripts = tasks.context(batch.queue).scripts
    assert scripts.redispatch(batch.id, batch.attempt, job_alive=False,
                              now_ms=FAR_FUTURE_MS).outcome == "redelivered"
    return {e.id: "first" for e in batch.entries}


# -- the reaper's view of a dispatched batch's RQ job ------------------------------------------


def test_a_queued_job_waiting_in_its_list_is_alive(
    real_redis: redis_py.Redis, redis_url: str
) -> None:
    config = _config(redis_url)
    batch_id = _dispatched(real_redis, config)
    assert Dispatcher(real_redis, config).job_alive(batch_id, 1)


def test_a_job_popped_by_a_worker_that_died_before_starting_it_is_gone(
    real_redis: redis_py.Redis, redis_url: str
) -> None:
    config = _config(redis_url)
    batch_id = _dispatched(real_redis, config)
    assert real_redis.lpop(f"rq:queue:{config.keys.rq_queue(0)}") == job_id(batch_id, 1).encode()
    assert not Dispatcher(real_redis, config).job_alive(batch_id, 1)


def test_a_started_job_whose_batch_was_never_claimed_is_gone(
    real_redis: redis_py.Redis, redis_url: str
) -> None:
    config = _config(redis_url)
    batch_id = _dispatched(real_redis, config)
    job = Job.fetch(job_id(batch_id, 1), connection=real_redis, serializer=JSONSerializer)
    job.set_status(JobStatus.STARTED)
    assert not Dispatcher(real_redis, config).job_alive(batch_id, 1)


def test_a_missing_job_is_gone(real_redis: redis_py.Redis, redis_url: str) -> None:
    config = _config(redis_url)
    assert not Dispatcher(real_redis, config).job_alive("nope", 1)


def test_the_reaper_redispatches_a_batch_whose_job_a_dead_worker_popped(
    real_redis: redis_py.Redis, redis_url: str
) -> None:
    config = _config(redis_url, dispatch_lease_seconds=0.2)
    batch_id = _dispatched(real_redis, config)
    real_redis.lpop(f"rq:queue:{config.keys.rq_queue(0)}")
    lease_ms = real_redis.zscore(config.keys.inflight, batch_id) or 0
    wait_until(lambda: _redis_ms(real_redis) > lease_ms, "the lease to expire on Redis's clock")

    assert Coordinator(real_redis, config).reap() == 1

    assert real_redis.hget(config.keys.batch(batch_id), "attempt") == b"2"
    assert Dispatcher(real_redis, config).job_alive(batch_id, 2)
    assert real_redis.hget(config.keys.stats, "lost_dispatches") == b"1"
    assert_consistent(real_redis, config.keys)


def test_the_reaper_leaves_a_lease_that_has_not_ended_alone(
    real_redis: redis_py.Redis, redis_url: str
) -> None:
    # mutation survivors: a reap whose "now" was off (ms x 1001) took every lease as ended
    config = _config(redis_url, dispatch_lease_seconds=60)
    batch_id = _dispatched(real_redis, config)
    real_redis.lpop(f"rq:queue:{config.keys.rq_queue(0)}")  # even with its job gone
    assert Coordinator(real_redis, config).reap() == 0
    assert real_redis.hget(config.keys.batch(batch_id), "attempt") == b"1"
    assert real_redis.hget(config.keys.stats, "lost_dispatches") is None


def test_one_reap_redispatches_every_ended_lease(
    real_redis: redis_py.Redis, redis_url: str
) -> None:
    config = _config(redis_url, dispatch_lease_seconds=0.2, size_threshold=2,
                     min_batch_size=1)
    BatchStateManager(real_redis, config).queue_many(
        [{"id": f"m{i}", "source": "t", "payload": {}} for i in range(4)])
    coordinator = Coordinator(real_redis, config)
    coordinator.start()
    coordinator.drain(manual=True)
    real_redis.delete(f"rq:queue:{config.keys.rq_queue(0)}")  # both jobs lost
    leases = [score for _, score in real_redis.zrange(config.keys.inflight, 0, -1,
                                                     withscores=True)]
    assert len(leases) == 2
    wait_until(lambda: _redis_ms(real_redis) > max(leases), "both leases to end")
    assert Coordinator(real_redis, config).reap() == 2
    assert real_redis.hget(config.keys.stats, "lost_dispatches") == b"2"
    assert_consistent(real_redis, config.keys)


# -- late and retried acks ---------------------------------------------------------------------


def test_a_late_ack_from_a_superseded_attempt_is_refused_counted_and_not_applied(
    real_redis: redis_py.Redis, redis_url: str, worker_env: None
) -> None:
    config = _config(redis_url)
    batch_id = _dispatched(real_redis, config)

    assert process_batch(QUEUE, batch_id, 1) == {"status": "stale", "acked": 0}

    stats = config.keys.stats
    assert real_redis.hget(stats, "stale_acks") == b"1"
    assert real_redis.hget(stats, "acked") is None
    assert not real_redis.exists(config.keys.result("e0"))
    assert real_redis.hget(config.keys.batch(batch_id), "status") == b"dispatched"
    assert_consistent(real_redis, config.keys)

    scripts = Scripts(real_redis, config)
    assert isinstance(scripts.claim(batch_id, 2), BatchRecord)
    assert scripts.ack(batch_id, 2, processing_ms=1, started_ms=0,
                       results={"e0": b'"second"'}).acked == 3
    assert not scripts.ack(batch_id, 1, processing_ms=1, started_ms=0, results={}).ok
    assert real_redis.hget(stats, "acked") == b"3"
    assert real_redis.hget(stats, "stale_acks") == b"2"
    assert real_redis.get(config.keys.result("e0")) == b'"second"'
    assert_consistent(real_redis, config.keys)


def test_a_worker_that_never_reaches_redis_retries_on_its_schedule_then_raises(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the lost-request / lost-reply cases are in test_lost_replies.py; here Redis never answers
    config = _config(f"redis://127.0.0.1:{free_port()}/0")
    client = connect(config.redis_url)
    ctx = tasks.WorkerContext(config, client, Scripts(client, config), lambda batch: {})
    slept: list[float] = []
    monkeypatch.setattr(tasks.time, "sleep", slept.append)
    with pytest.raises(redis_py.ConnectionError):
        tasks.run_batch(ctx, "b1", 1)
    assert slept == list(tasks.ACK_RETRY_DELAYS_SECONDS)
