"""The worker classes of ``batcher worker``: fewer round trips per job, the same guarantees."""

from __future__ import annotations

import pytest
import redis as redis_py
from rq import Queue, SimpleWorker
from rq.exceptions import StopRequested
from rq.serializers import JSONSerializer
from rq.suspension import resume, suspend
from rq.utils import now

from batcher.rq import worker as lean
from batcher.rq.job import BatchJob
from batcher.rq.worker import BatchSimpleWorker
from tests.support.spies import count_round_trips

QUEUE = "lean"


@pytest.fixture(autouse=True)
def _allow_plain_jobs(monkeypatch: pytest.MonkeyPatch) -> None:
    # these tests time RQ's per-job bookkeeping with a trivial job; a batcher worker refuses
    # any job but its own task (batcher/rq/guard.py), so let this one through here
    monkeypatch.setattr(lean.LeanHeartbeats, "allowed_functions",
                        frozenset({"builtins.len", *lean.guard.ALLOWED_FUNCTIONS}))


def _round_trips_per_job(client: redis_py.Redis, worker_class: type[SimpleWorker],
                         monkeypatch: pytest.MonkeyPatch, n: int = 30,
                         job_class: type = BatchJob) -> float:
    client.flushall()
    queue = Queue(QUEUE, connection=client, serializer=JSONSerializer, job_class=job_class)
    for i in range(n):
        queue.enqueue("builtins.len", args=([i],), result_ttl=0)
    worker = worker_class([queue], connection=client, serializer=JSONSerializer,
                          job_class=job_class)
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


def test_a_batch_job_commits_without_rqs_dependents_round_trips(
    real_redis: redis_py.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    n = 20
    with monkeypatch.context() as patch:  # every job through RQ's own success path
        patch.setattr(lean, "_plain_batch_job", lambda job: False)
        generic = _round_trips_per_job(real_redis, BatchSimpleWorker, monkeypatch, n)
        generic_keys = _bookkeeping(real_redis, n)
    batch = _round_trips_per_job(real_redis, BatchSimpleWorker, monkeypatch, n)
    # no job heartbeat before the commit, no WATCH and read of the (never) dependents
    assert batch <= generic - 3, (generic, batch)
    # and RQ's bookkeeping ends the same: counters, no job left, no registry entry
    assert _bookkeeping(real_redis, n) == generic_keys, generic_keys


def _bookkeeping(client: redis_py.Redis, n: int) -> dict[str, object]:
    # the burst worker has registered its death; its hash outlives it for a minute
    [key] = [k for k in client.keys("rq:worker:*") if client.type(k) == b"hash"]
    worker = client.hgetall(key)
    assert int(worker[b"successful_job_count"]) == n
    assert float(worker[b"total_working_time"]) > 0
    return {
        "keys": sorted(k.decode().split(":")[1] for k in client.keys("rq:*")
                       if not k.startswith(b"rq:worker") and b"pubsub" not in k),
        "started": Queue(QUEUE, connection=client).started_job_registry.count,
        "finished": Queue(QUEUE, connection=client).finished_job_registry.count,
    }


def test_the_state_is_busy_during_a_job_and_idle_once_its_heartbeat_went_out(
    real_redis: redis_py.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = []
    queue = Queue(QUEUE, connection=real_redis, serializer=JSONSerializer, job_class=BatchJob)
    worker = BatchSimpleWorker([queue], connection=real_redis, serializer=JSONSerializer,
                               job_class=BatchJob)
    worker.register_birth()
    original = BatchJob.perform

    def perform(job: BatchJob) -> object:  # what Redis shows while the job runs
        seen.append((real_redis.hget(worker.key, "state"), job.get_status(refresh=True),
                     queue.started_job_registry.count))
        return original(job)

    monkeypatch.setattr(BatchJob, "perform", perform)
    job = queue.enqueue("builtins.len", args=([1],), result_ttl=0)
    worker.execute_job(job, queue)
    assert seen == [(b"busy", "started", 1)]
    worker.heartbeat()  # RQ's loop sends it right after every job: it carries the idle state
    assert real_redis.hget(worker.key, "state") == b"idle"
    assert queue.started_job_registry.count == 0
    worker.register_death()


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


def test_a_batch_jobs_commit_carries_the_heartbeat_and_idle_state_rqs_loop_sends_next(
    real_redis: redis_py.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = Queue(QUEUE, connection=real_redis, serializer=JSONSerializer, job_class=BatchJob)
    worker = BatchSimpleWorker([queue], connection=real_redis, serializer=JSONSerializer,
                               job_class=BatchJob)
    worker.register_birth()
    full = worker.worker_ttl + 60
    real_redis.expire(worker.key, 90)  # as a job's start leaves it (its heartbeat TTL)
    job = queue.enqueue("builtins.len", args=([1],), result_ttl=0)
    worker.execute_job(job, queue)
    # restored and idle when the job's commit returns, before RQ's loop heartbeats
    assert real_redis.ttl(worker.key) > full - 5
    assert real_redis.hget(worker.key, "state") == b"idle"
    with monkeypatch.context() as patch:
        sent = count_round_trips(patch)
        worker.heartbeat()  # the loop's heartbeat after the job: already sent
    assert sent[0] == 0
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


@pytest.mark.parametrize("stopped", [True, False])
def test_a_stop_that_left_replies_unread_does_not_break_the_workers_teardown(
    real_redis: redis_py.Redis, stopped: bool
) -> None:
    """RQ's SIGTERM handler raises StopRequested wherever the signal lands, also between a
    pipeline's send and its replies; that connection goes back to the pool with a reply on
    its way. The teardown must still deregister the worker (it exited 1 with "Wrong number
    of response items from pipeline execution" when a supervisor stopped it at start)."""
    real_redis.flushall()
    queue = Queue(QUEUE, connection=real_redis, serializer=JSONSerializer, job_class=BatchJob)
    worker = BatchSimpleWorker([queue], connection=real_redis, serializer=JSONSerializer,
                               job_class=BatchJob)
    worker.register_birth()
    pool = real_redis.connection_pool
    conn = pool.get_connection()
    # a reply still on its way when the pool hands the connection out again (one already
    # arrived would be caught by redis-py's own check when the connection is taken)
    conn.send_command("BLPOP", "lean:nothing", "0.3")
    pool.release(conn)
    if stopped:
        worker._shutdown_requested_date = now()  # what RQ's request_stop records first
        worker.teardown()
        assert real_redis.hget(worker.key, "death"), "the worker's death was not recorded"
        assert worker.name not in {w.name for w in SimpleWorker.all(connection=real_redis)}
    else:
        # without a stop request nothing is closed: the unread reply breaks the teardown,
        # which is what the fix above guards against (and shows this test can fail)
        with pytest.raises(redis_py.RedisError):
            worker.teardown()


def test_a_worker_given_a_pattern_takes_on_new_queues_and_registers_on_them(
    real_redis: redis_py.Redis,
) -> None:
    from rq import worker_registration

    from batcher.config import load_config
    from batcher.rq.run import make_worker, rq_queue_names

    real_redis.flushall()
    url = "redis://{host}:{port}/0".format(**real_redis.connection_pool.connection_kwargs)
    first, late = (load_config(queue=q, redis_url=url) for q in ("feeds-a", "feeds-b"))
    found: list[object] = [[first]]

    def rescan() -> list[object]:
        answer = found[0]
        if isinstance(answer, Exception):
            raise answer
        return answer  # type: ignore[return-value]

    worker = make_worker(first, real_redis, simple=True, rescan=rescan)  # type: ignore[arg-type]
    worker.rescan_seconds = 0.0  # look at every heartbeat
    worker.register_birth()
    # a blocked dequeue ends in time for the next look
    assert worker.dequeue_timeout == 1
    worker.heartbeat()
    assert worker.queue_names() == rq_queue_names([first])  # nothing new

    found[0] = redis_py.ConnectionError("Redis went away")
    worker.heartbeat()  # a failed look changes nothing; the next one tries again
    assert worker.queue_names() == rq_queue_names([first])

    found[0] = [first, late]
    worker.heartbeat()
    assert worker.queue_names() == [*rq_queue_names([first]), *rq_queue_names([late])]
    # urgent tier first, then high, then normal, each with feeds-a before feeds-b
    assert [q.name for q in worker._ordered_queues] == rq_queue_names([first, late])
    # RQ lists the worker on the new queues (rq info, worker counts per queue) ...
    for name in rq_queue_names([late]):
        assert real_redis.sismember(worker_registration.WORKERS_BY_QUEUE_KEY % name,
                                    worker.key)
    # ... and its hash names every queue it serves
    assert real_redis.hget(worker.key, "queues").decode().split(",") == worker.queue_names()
    worker.register_death()
