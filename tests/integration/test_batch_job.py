"""BatchJob: RQ's clean-up of a finished batch job, minus RQ's read-backs, leaves the same keys."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis as redis_py
from rq import Queue, SimpleWorker
from rq.job import Job
from rq.serializers import JSONSerializer

from batcher.config import BatchProcessingConfig
from batcher.coordinator import Coordinator
from batcher.producer import BatchStateManager
from workers import tasks
from workers.job import BatchJob

QUEUE = "jobclass"


@pytest.fixture
def config(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[BatchProcessingConfig]:
    # process_batch reads the settings from the environment, as in a worker process
    monkeypatch.setenv("BATCH_REDIS_URL", redis_url)
    monkeypatch.setenv("BATCH_QUEUE", QUEUE)
    monkeypatch.setenv("BATCH_HANDLER", "workers.handlers.echo:handle")
    tasks._CONTEXTS.clear()
    yield BatchProcessingConfig(queue=QUEUE, redis_url=redis_url, log_format="json",
                                handler="workers.handlers.echo:handle")
    tasks._CONTEXTS.clear()


def _rq_keys(client: redis_py.Redis) -> set[str]:
    return {k.decode() for k in client.scan_iter(match="rq:*")
            if not k.startswith((b"rq:worker", b"rq:workers"))}


def _run_batches(client: redis_py.Redis, config: BatchProcessingConfig,
                 job_class: type[Job]) -> set[str]:
    client.flushall()
    BatchStateManager(client, config).queue_many(
        [{"id": f"e{i}", "source": "t", "payload": {"i": i}} for i in range(30)])
    coordinator = Coordinator(client, config)
    coordinator.start()
    coordinator.drain(manual=True)
    worker = SimpleWorker(config.keys.rq_queues_by_urgency(), connection=client,
                          serializer=JSONSerializer, job_class=job_class)
    assert worker.work(burst=True, logging_level="WARNING")
    assert int(client.hget(config.keys.stats, "acked") or 0) == 30
    return _rq_keys(client)


def test_a_finished_batch_job_leaves_what_rqs_own_delete_leaves(
    real_redis: redis_py.Redis, config: BatchProcessingConfig
) -> None:
    with_rq = _run_batches(real_redis, config, Job)
    with_ours = _run_batches(real_redis, config, BatchJob)
    assert with_ours == with_rq
    # and nothing of any job is left: no job hash, execution, result or registry entry
    assert not any(":job:" in k or ":execution" in k or ":results:" in k for k in with_ours)
    for registry in ("started", "finished", "failed"):
        key = f"rq:{registry}:{config.keys.rq_queue(0)}"
        assert real_redis.zcard(key) == 0, key


def test_other_jobs_keep_rqs_clean_up(real_redis: redis_py.Redis) -> None:
    # a job kept after success (result_ttl > 0) goes through RQ's code: it stays, finished
    queue = Queue("plain", connection=real_redis, serializer=JSONSerializer)
    job = queue.enqueue("builtins.len", args=([1, 2],), result_ttl=60)
    worker = SimpleWorker([queue], connection=real_redis, serializer=JSONSerializer,
                          job_class=BatchJob)
    worker.work(burst=True, logging_level="WARNING")
    fetched: Any = BatchJob.fetch(job.id, connection=real_redis, serializer=JSONSerializer)
    assert fetched.get_status() == "finished"
    assert 0 < real_redis.ttl(fetched.key) <= 60
