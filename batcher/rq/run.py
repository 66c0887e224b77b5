"""``batcher worker``'s loop: one RQ worker on the queue's three RQ queues, urgent first,
restarted after a Redis fault until a signal stops it."""

from __future__ import annotations

import os
import signal
import socket
import threading
import uuid
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

import redis
import structlog
from rq.serializers import JSONSerializer

from batcher.backoff import Backoff, waitable
from batcher.config import BatchProcessingConfig
from batcher.rq.job import BatchJob
from batcher.rq.worker import BatchSimpleWorker, BatchWorker

log = structlog.stdlib.get_logger(__name__)

# a worker that quit on a Redis error (not on a signal) is restarted after this long, doubling
RESTART_DELAY_SECONDS = 1.0
MAX_RESTART_DELAY_SECONDS = 10.0


def worker_name() -> str:
    # hostname + pid say where it runs; the suffix keeps a restarted container's pid 1 from
    # colliding with its own dead predecessor, whose registration lives until its TTL
    return f"{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:6]}"


def rq_queue_names(configs: Sequence[BatchProcessingConfig]) -> list[str]:
    """The RQ queues of ``configs``' queues, urgent tier first, in the queues' order within
    each tier (a worker then takes turns between them: ``fair_order``)."""
    by_urgency = [c.keys.rq_queues_by_urgency() for c in configs]
    return [names[tier] for tier in range(3) for names in by_urgency]


Rescan = Callable[[], Sequence[BatchProcessingConfig]]


def make_worker(config: BatchProcessingConfig | Sequence[BatchProcessingConfig],
                client: redis.Redis, *, simple: bool, name: str | None = None,
                rescan: Rescan | None = None) -> BatchSimpleWorker | BatchWorker:
    """An RQ worker on the queues' RQ queues (three each), urgent first, running batch
    jobs. ``rescan`` (a worker given a pattern) names the queues to serve now: the worker
    adds the new ones as it runs."""
    configs = [config] if isinstance(config, BatchProcessingConfig) else list(config)
    worker_class = BatchSimpleWorker if simple else BatchWorker
    worker = worker_class(rq_queue_names(configs), name=name, connection=client,
                          serializer=JSONSerializer, job_class=BatchJob)
    config = configs[0]
    # RQ's own Redis may be lost and replaced while the worker runs (BATCH_RQ_REDIS_URL)
    worker.check_registration = config.rq_apart
    if rescan is not None:
        worker.queue_finder = lambda: rq_queue_names(rescan())
    return worker


class _EarlyStop:
    """Catches SIGTERM/SIGINT until RQ's ``work()`` installs its own handlers.

    A signal that lands while a worker registers (a supervisor stopping its children right
    after starting them) would otherwise kill the process with RQ's registration left behind.
    """

    def __init__(self) -> None:
        self.requested = threading.Event()
        self.worker: Any = None
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        log.info("worker.stop_requested", signal=signal.Signals(signum).name)
        self.requested.set()
        if self.worker is not None:
            # RQ checks this flag before each dequeue, then tears down (deregisters) cleanly
            self.worker._stop_requested = True


def run_workers(config: BatchProcessingConfig | Sequence[BatchProcessingConfig], client: Any,
                *, burst: bool, simple: bool, rq_client: Any = None,
                rescan: Rescan | None = None) -> None:
    """Run one RQ worker for the queues of ``config`` (one or several); restart it after a
    Redis failure until a signal stops it.

    ``client`` is the batcher's Redis; the worker's RQ connection is ``rq_client`` (RQ's own
    Redis, BATCH_RQ_REDIS_URL), by default the same client. ``rescan``: see ``make_worker``.
    """
    configs = [config] if isinstance(config, BatchProcessingConfig) else list(config)
    config = configs[0]
    queues = [c.queue for c in configs]
    queue_field = ",".join(queues)  # the queues, named in every log line of this worker
    backoff = Backoff("worker", queue=queue_field, client=client, state_key=config.keys.state,
                      first=RESTART_DELAY_SECONDS, cap=MAX_RESTART_DELAY_SECONDS)
    early = _EarlyStop()
    while not early.requested.is_set():
        name = worker_name()
        try:
            worker = make_worker(configs, client if rq_client is None else rq_client,
                                 simple=simple, name=name, rescan=rescan)
            early.worker = worker
            log.info("worker.starting", queue=queue_field, name=name,
                     rq_queues=rq_queue_names(configs), simple=simple, burst=burst)
            backoff.succeeded()
            # RQ logs ~4 INFO lines per job; our batch.acked / batch.failed events carry the
            # same facts with the batch's figures, at a fraction of the cost
            worker.work(burst=burst, logging_level="WARNING")
        except redis.RedisError as exc:
            # RQ 3.0 retries only a failed dequeue: a Redis error anywhere else (its
            # constructor, register_birth, heartbeats, the horse monitor's status read, the
            # bookkeeping after a job) ends work(), raised by register_death in its teardown.
            # OOM, READONLY, LOADING, BUSY, MASTERDOWN, a lost connection: wait, start again
            if not waitable(exc):
                raise
            early = _EarlyStop()
            backoff.failed(exc, early.requested)
            if early.requested.is_set():
                return
            continue
        # RQ records the time of a SIGTERM/SIGINT; without one it quit on an error (logged
        # by RQ, who caught it)
        if burst or early.requested.is_set() or worker._shutdown_requested_date is not None:
            return
        early = _EarlyStop()
        log.warning("worker.restarting", queue=queue_field, name=name,
                    delay_s=backoff.delay)
        if early.requested.wait(backoff.delay):
            return
        backoff.grow()
