"""``batcher worker``: RQ workers on the queue's three RQ queues, urgent first.

SIGTERM and SIGINT are RQ's warm shutdown: the job in hand finishes (and acks), then the
worker exits; a second signal a second or more later is a cold shutdown. With
``--processes N`` this process only supervises N children (the same command without
``--processes``), forwards SIGTERM/SIGINT to them and exits when all have exited.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import uuid
from types import FrameType
from typing import Any

import click
import redis
import structlog
from rq.serializers import JSONSerializer

from batcher.backoff import Backoff, waitable
from batcher.cli.common import EXIT_BAD_INPUT, fail, open_queue_waiting, queue_options
from batcher.config import BatchProcessingConfig, env_name
from batcher.scripts import Scripts
from workers.job import BatchJob
from workers.worker import worker_class as batch_worker_class

log = structlog.stdlib.get_logger(__name__)

# a worker that quit on a Redis error (not on a signal) is restarted after this long, doubling
RESTART_DELAY_SECONDS = 1.0
MAX_RESTART_DELAY_SECONDS = 10.0


def worker_name() -> str:
    # hostname + pid say where it runs; the suffix keeps a restarted container's pid 1 from
    # colliding with its own dead predecessor, whose registration lives until its TTL
    return f"{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:6]}"


def export_settings(config: BatchProcessingConfig) -> None:
    """Jobs (``workers.tasks.context``) and child processes read the settings from the env."""
    os.environ[env_name("redis_url")] = config.redis_url
    os.environ[env_name("queue")] = config.queue


def warm_up(config: BatchProcessingConfig, client: redis.Redis) -> None:
    """Import the handler and open the job context once, before any fork: a wrong
    BATCH_HANDLER fails at start-up, and forked job horses inherit the imported code."""
    from workers.tasks import context

    try:
        context(config.queue, client)
    except (ImportError, AttributeError, TypeError) as exc:
        fail(f"{env_name('handler')}={config.handler!r}: cannot load the handler: {exc}",
             EXIT_BAD_INPUT)


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


def run_workers(config: BatchProcessingConfig, client: Any, *, burst: bool,
                simple: bool) -> None:
    """Run one RQ worker; restart it after a Redis failure until a signal stops it."""
    worker_class = batch_worker_class(simple)
    backoff = Backoff("worker", queue=config.queue, client=client, state_key=config.keys.state,
                      first=RESTART_DELAY_SECONDS, cap=MAX_RESTART_DELAY_SECONDS)
    early = _EarlyStop()
    while not early.requested.is_set():
        name = worker_name()
        try:
            worker = worker_class(config.keys.rq_queues_by_urgency(), name=name,
                                  connection=client, serializer=JSONSerializer,
                                  job_class=BatchJob)
            early.worker = worker
            log.info("worker.starting", queue=config.queue, name=name,
                     rq_queues=config.keys.rq_queues_by_urgency(), simple=simple, burst=burst)
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
        log.warning("worker.restarting", queue=config.queue, name=name,
                    delay_s=backoff.delay)
        if early.requested.wait(backoff.delay):
            return
        backoff.grow()


def preload_waiting(config: BatchProcessingConfig, client: redis.Redis) -> bool:
    """Load the scripts (a Lua error fails at boot, not on the first batch), waiting out a
    Redis fault; False when a signal came first."""
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM,
                                                                       signal.SIGINT)}
    def preload() -> bool:
        Scripts(client, config).preload()
        return True

    try:
        return bool(Backoff("worker", queue=config.queue).until_done(stop, preload))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def supervise(processes: int, argv: list[str]) -> int:
    """Start ``processes`` children running ``argv``; forward signals; wait for all."""
    children: list[subprocess.Popen[bytes]] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        # RQ ignores a second signal within a second, so a Ctrl-C that reached the children
        # through the terminal's process group and again from here is one warm shutdown
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    # installed before the first child starts, so no signal can slip past them
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for _ in range(processes):
        children.append(subprocess.Popen(argv))
    log.info("worker.supervising", pids=[c.pid for c in children])
    codes = [child.wait() for child in children]
    log.info("worker.children_exited", exit_codes=codes)
    # a child killed by signal N reports -N; the shell convention is 128 + N
    failed = [c if c > 0 else 128 - c for c in codes if c != 0]
    return failed[0] if failed else 0


def child_argv(burst: bool, simple: bool, warm: bool) -> list[str]:
    # the URL goes through the environment (export_settings), not argv: ps shows argv
    argv = [sys.executable, "-m", "batcher.cli", "worker"]
    argv += ["--burst"] if burst else []
    argv += ["--simple"] if simple else []
    argv += [] if warm else ["--no-warm"]
    return argv


@click.command("worker")
@click.option("--burst", is_flag=True, help="exit once the queues are empty")
@click.option("--simple", is_flag=True, help="run jobs in this process (rq SimpleWorker), no fork")
@click.option("--processes", "-n", type=click.IntRange(min=1), default=None,
              help="start N worker processes and supervise them")
@click.option("--warm/--no-warm", default=True, show_default=True,
              help="import the handler before forking, so each job starts warm")
@queue_options
def worker(burst: bool, simple: bool, processes: int | None, warm: bool, queue: str | None,
           redis_url: str | None) -> None:
    """Process batches with the configured handler (BATCH_HANDLER), urgent queue first."""
    config, client = open_queue_waiting(queue, redis_url)
    export_settings(config)
    if processes is not None:
        code = supervise(processes, child_argv(burst, simple, warm))
        click.get_current_context().exit(code)
    if not preload_waiting(config, client):
        return
    if warm:
        warm_up(config, client)
    run_workers(config, client, burst=burst, simple=simple)


commands = [worker]
