"""The worker classes of ``batcher worker``: fewer round trips per job, the same guarantees."""

from __future__ import annotations

import pytest
import redis as redis_py
from rq import Queue, SimpleWorker
from rq.exceptions import StopRequested
from rq.serializers import JSONSerializer
from rq.suspension import resume, suspend

from tests.support.spies import count_round_trips
from workers import worker as lean
from workers.worker import BatchSimpleWorker

QUEUE = "lean"


def _round_trips_per_job(client: redis_py.Redis, worker_class: type[SimpleWorker],
                         monkeypatch: pytest.MonkeyPatch, n: int = 30) -> float:
    client.flushall()
    queue = Queue(QUEUE, connection=client, serializer=JSONSerializer)
    for i in range(n):
        queue.enqueue("builtins.len", args=([i],), result_ttl=0)
    worker = worker_class([queue], connection=client, serializer=JSONSerializer)
    with monkeypatch.context() as patch:
        sent = count_round_trips(patch)
        assert worker.work(burst=True, logging_level="WARNING")
    assert queue.count == 0
    return sent[0] / n


def test_a_job_costs_fewer_round_trips(
    real_redis: redis_py.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = _round_trips_per_job(real_redis, SimpleWorker, monkeypatch)
    ours = _round_trips_per_job(real_redis, BatchSimpleWorker, monkeypatch)
    # RQ sends three plain heartbeats per job (three round trips each), reads the suspension
    # flag and writes the state twice; ours: one pipelined heartbeat after each job, the
    # flag and the other heartbeats at most once a second, no repeated state write
    assert ours <= plain - 8, (plain, ours)


def test_the_heartbeat_after_a_job_always_restores_the_full_ttl(
    real_redis: redis_py.Redis,
) -> None:
    queue = Queue(QUEUE, connection=real_redis, serializer=JSONSerializer)
    worker = BatchSimpleWorker([queue], connection=real_redis, serializer=JSONSerializer)
    worker.register_birth()
    worker.heartbeat()
    full = worker.worker_ttl + 60
    assert real_redis.ttl(worker.key) > full - 5
    # a job's own heartbeat shortens the TTL (in a forked horse the parent never sees it)
    real_redis.expire(worker.key, 90)
    worker.heartbeat()  # within the second: skipped
    assert real_redis.ttl(worker.key) <= 90
    job = queue.enqueue("builtins.len", args=([1],), result_ttl=0)
    worker.execute_job(job, queue)
    worker.heartbeat()  # the one RQ sends after every job goes out
    assert real_redis.ttl(worker.key) > full - 5
    worker.register_death()


def test_a_suspension_is_seen_within_a_second(
    real_redis: redis_py.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1000.0]
    monkeypatch.setattr(lean.time, "monotonic", lambda: clock[0])
    worker = BatchSimpleWorker([Queue(QUEUE, connection=real_redis)], connection=real_redis)
    worker.check_for_suspension(burst=True)
    suspend(real_redis)
    try:
        worker.check_for_suspension(burst=True)  # read less than a second ago
        clock[0] += lean.SUSPENSION_CHECK_EVERY_SECONDS
        with pytest.raises(StopRequested):
            worker.check_for_suspension(burst=True)
    finally:
        resume(real_redis)
