"""BatchJob: RQ's clean-up of a finished batch job, minus RQ's read-backs, leaves the same keys."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis as redis_py
from rq import Queue, SimpleWorker
from rq.job import Job
from rq.serializers import JSONSerializer

from batcher import processing as tasks
from batcher.config import BatchProcessingConfig
from batcher.coordinator import Coordinator
from batcher.producer import BatchStateManager
from batcher.rq import worker as lean
from batcher.rq.job import BatchJob
from batcher.rq.worker import BatchSimpleWorker, BatchWorker
from batcher.scripts import Scripts
from tests.support.spies import count_round_trips

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


# -- the claim in the job's start transaction ------------------------------------------------


def _flush_batches_of_5(client: redis_py.Redis, config: BatchProcessingConfig
                        ) -> BatchProcessingConfig:
    """30 entries flushed and dispatched as 6 batch jobs of 5; the settings used."""
    client.flushall()
    tasks._CONTEXTS.clear()
    cfg = config.with_overrides(size_threshold=5, min_batch_size=5, max_batch_size=5)
    BatchStateManager(client, cfg).queue_many(
        [{"id": f"e{i}", "source": "t", "payload": {"i": i}} for i in range(30)])
    coordinator = Coordinator(client, cfg)
    coordinator.start()
    coordinator.drain(manual=True)
    return cfg


def _work_batches(client: redis_py.Redis, config: BatchProcessingConfig,
                  monkeypatch: pytest.MonkeyPatch, before_work: Any = None) -> tuple[int, int]:
    """6 batch jobs through BatchSimpleWorker; (batch jobs, round trips)."""
    cfg = _flush_batches_of_5(client, config)
    tasks.context(cfg.queue, client).scripts.preload()  # no NOSCRIPT reload in the count
    if before_work is not None:
        before_work()
    worker = BatchSimpleWorker(cfg.keys.rq_queues_by_urgency(), connection=client,
                               serializer=JSONSerializer, job_class=BatchJob)
    with monkeypatch.context() as patch:
        sent = count_round_trips(patch)
        assert worker.work(burst=True, logging_level="WARNING")
    return int(client.hget(cfg.keys.stats, "batches_flushed") or 0), sent[0]


def _stat(client: redis_py.Redis, config: BatchProcessingConfig, name: str) -> int:
    return int(client.hget(config.keys.stats, name) or 0)


def test_a_batch_is_claimed_in_its_jobs_start_transaction(
    real_redis: redis_py.Redis, config: BatchProcessingConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    _work_batches(real_redis, config, monkeypatch)  # connections and scripts made once
    with monkeypatch.context() as patch:  # run_batch claims on its own, as in a forked horse
        patch.setattr(lean, "batch_args", lambda job: None)
        jobs, apart = _work_batches(real_redis, config, monkeypatch)
    assert (jobs, _stat(real_redis, config, "acked")) == (6, 30)
    jobs, merged = _work_batches(real_redis, config, monkeypatch)
    assert (jobs, _stat(real_redis, config, "acked")) == (6, 30)
    assert merged == apart - jobs, (apart, merged)
    # claimed once per batch: a second claim of a claimed batch would be refused as stale
    assert _stat(real_redis, config, "stale_claims") == 0
    assert _stat(real_redis, config, "batches_processed") == 6


def test_jobs_an_older_coordinator_queued_under_the_old_task_name_run(
    real_redis: redis_py.Redis, config: BatchProcessingConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a rolling upgrade: the coordinator still names workers.tasks.process_batch
    from batcher.rq import LEGACY_TASK, dispatch

    monkeypatch.setattr(dispatch, "TASK", LEGACY_TASK)
    cfg = _flush_batches_of_5(real_redis, config)
    queued = [Job.fetch(job_id.decode(), connection=real_redis, serializer=JSONSerializer)
              for name in cfg.keys.rq_queues_by_urgency()
              for job_id in real_redis.lrange(f"rq:queue:{name}", 0, -1)]
    assert {job.func_name for job in queued} == {LEGACY_TASK} and len(queued) == 6
    worker = BatchSimpleWorker(cfg.keys.rq_queues_by_urgency(), connection=real_redis,
                               serializer=JSONSerializer, job_class=BatchJob)
    assert worker.work(burst=True, logging_level="WARNING")
    assert _stat(real_redis, cfg, "acked") == 30
    assert _stat(real_redis, cfg, "stale_claims") == 0  # claimed once, in the start


def test_a_claim_that_failed_in_the_start_transaction_is_made_again(
    real_redis: redis_py.Redis, config: BatchProcessingConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    # NOSCRIPT inside the MULTI: the job still starts, and run_batch loads the script, claims
    _work_batches(real_redis, config, monkeypatch, before_work=real_redis.script_flush)
    assert _stat(real_redis, config, "acked") == 30
    assert _stat(real_redis, config, "stale_claims") == 0


def test_a_start_transaction_claim_whose_outcome_was_lost_is_taken_back_by_the_task(
    real_redis: redis_py.Redis, config: BatchProcessingConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each batch is claimed in Redis by its job's start transaction, but the task never sees
    # the outcome (as when that reply is lost): it claims again with the job's claimant token
    # and gets the record back, where any other claim of a claimed batch is refused.
    monkeypatch.setattr(BatchJob, "claimed", property(lambda job: None, lambda job, v: None),
                        raising=False)
    _work_batches(real_redis, config, monkeypatch)
    assert _stat(real_redis, config, "acked") == 30
    assert _stat(real_redis, config, "batches_processed") == 6
    assert _stat(real_redis, config, "stale_claims") == 0


def test_a_refused_early_claim_is_what_the_job_reports(
    real_redis: redis_py.Redis, config: BatchProcessingConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    reports: list[dict[str, Any]] = []
    original = tasks.run_batch

    def run_batch(ctx: tasks.WorkerContext, batch_id: str, attempt: int,
                  claimed: Any = None, claimant: str | None = None) -> dict[str, Any]:
        reports.append(original(ctx, batch_id, attempt, claimed, claimant))
        return reports[-1]

    monkeypatch.setattr(tasks, "run_batch", run_batch)

    def lose_one_batch() -> None:  # as if acked meanwhile by an earlier attempt's worker
        [first, *_] = real_redis.zrange(config.keys.inflight, 0, 0)
        real_redis.delete(config.keys.batch(first.decode()))

    _work_batches(real_redis, config, monkeypatch, before_work=lose_one_batch)
    assert sorted(r["status"] for r in reports) == ["acked"] * 5 + ["gone"]
    assert _stat(real_redis, config, "acked") == 25
    assert _stat(real_redis, config, "stale_claims") == 1  # the one refusal, not one per claim


def test_a_forked_work_horse_claims_in_its_jobs_start_transaction(
    real_redis: redis_py.Redis, config: BatchProcessingConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = _flush_batches_of_5(real_redis, config)

    def claim_again(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("run_batch claimed on its own")

    # the horses inherit this: a job that claims apart from its start fails, and is not acked
    monkeypatch.setattr(Scripts, "claim", claim_again)
    worker = BatchWorker(cfg.keys.rq_queues_by_urgency(), connection=real_redis,
                         serializer=JSONSerializer, job_class=BatchJob)
    assert worker.work(burst=True, logging_level="WARNING")
    assert _stat(real_redis, cfg, "acked") == 30
    assert _stat(real_redis, cfg, "stale_claims") == 0
