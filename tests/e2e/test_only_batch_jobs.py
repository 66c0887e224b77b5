"""Only batch jobs: a ``batcher worker`` refuses any other RQ job, never importing or calling it."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis as redis_py
from rq import Queue
from rq.job import Job
from rq.registry import FailedJobRegistry
from rq.serializers import JSONSerializer

from batcher.config import load_config
from batcher.coordinator import Coordinator
from batcher.keys import QueueKeys
from batcher.producer import BatchStateManager
from batcher.rq import TASK
from tests.e2e.test_cli_processes import Batcher, _env, procs  # noqa: F401 - fixture

QUEUE = "proc"
KEYS = QueueKeys(QUEUE)


@pytest.mark.parametrize("mode", ["forking", "simple"])
def test_a_job_naming_os_system_is_refused_and_real_batches_go_on(
    redis_url: str, real_redis: redis_py.Redis, procs: Batcher, tmp_path: Path,  # noqa: F811
    mode: str,
) -> None:
    marker = tmp_path / "pwned"
    # what an attacker with Redis write access pushes: ahead of the real batches, on the urgent
    # queue the worker reads first, and on the normal one
    evil = []
    for rq_queue in (KEYS.rq_queue(2), KEYS.rq_queue(0)):
        queue = Queue(rq_queue, connection=real_redis, serializer=JSONSerializer)
        evil.append(queue.enqueue("os.system", args=(f"touch {marker}",)))
    config = load_config(queue=QUEUE, redis_url=redis_url)
    BatchStateManager(real_redis, config).queue_many(
        [{"id": f"r{i}", "payload": {"n": i}} for i in range(6)])
    coordinator = Coordinator(real_redis, config)
    coordinator.start()
    coordinator.drain(manual=True)

    args = ["worker", "--burst"] + (["--simple"] if mode == "simple" else [])
    proc = procs.start(*args, env=_env(redis_url))
    code = proc.wait(timeout=120)
    stderr = procs.stderr(proc)
    assert code == 0, stderr

    assert not marker.exists()
    for job in evil:
        registry = FailedJobRegistry(job.origin, connection=real_redis,
                                     serializer=JSONSerializer)
        assert job.id in registry.get_job_ids()
        stored = Job.fetch(job.id, connection=real_redis, serializer=JSONSerializer)
        assert stored.get_status() == "failed"
        assert stored.latest_result().exc_string == "refused: not a batcher job: os.system"
    assert stderr.count('"worker.job_refused"') == 2, stderr
    # the real batches were processed all the same
    assert int(real_redis.hget(KEYS.stats, "acked") or 0) == 6, stderr
    assert real_redis.zcard(KEYS.pending) == 0


def test_a_refused_job_leaves_the_sender_no_callback_or_retry(
    real_redis: redis_py.Redis, tmp_path: Path
) -> None:
    # in-process: the guard stops a job whose callbacks or arguments could reach code too
    from rq import Callback

    from batcher.rq.job import BatchJob
    from batcher.rq.worker import BatchSimpleWorker

    queue = Queue(KEYS.rq_queue(0), connection=real_redis, serializer=JSONSerializer,
                  job_class=BatchJob)
    with_callback = queue.enqueue(TASK, args=(QUEUE, "b", 1),
                                  on_failure=Callback("os.getcwd"))
    bad_args = queue.enqueue(TASK, args=(QUEUE, "b"),
                             kwargs={"x": 1})
    worker = BatchSimpleWorker([queue], connection=real_redis, serializer=JSONSerializer,
                               job_class=BatchJob)
    worker.work(burst=True, logging_level="WARNING")
    registry = FailedJobRegistry(queue.name, connection=real_redis, serializer=JSONSerializer)
    assert set(registry.get_job_ids()) == {with_callback.id, bad_args.id}
    reasons = {Job.fetch(j.id, connection=real_redis, serializer=JSONSerializer)
               .latest_result().exc_string
               for j in (with_callback, bad_args)}
    assert reasons == {"refused: a batcher job with callbacks: failure_callback_name",
                       "refused: a batcher job's arguments must be (queue, batch_id, attempt)"}
