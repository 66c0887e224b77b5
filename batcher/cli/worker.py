"""``batcher worker``: RQ workers on the queue's three RQ queues, urgent first.

SIGTERM and SIGINT are RQ's warm shutdown: the job in hand finishes (and acks), then the
worker exits; a second signal a second or more later is a cold shutdown. With
``--processes N`` this process only supervises N children (the same command without
``--processes``), forwards SIGTERM/SIGINT to them and exits when all have exited.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from types import FrameType

import click
import redis
import structlog

from batcher.backoff import Backoff
from batcher.cli.common import (
    EXIT_BAD_INPUT,
    Serving,
    fail,
    needs_extra,
    open_queues_waiting,
    queues_options,
)
from batcher.config import BatchProcessingConfig, env_name
from batcher.rq import worker as rq_worker
from batcher.rq.run import run_workers
from batcher.scripts import Scripts

log = structlog.stdlib.get_logger(__name__)

def export_settings(config: BatchProcessingConfig, settings_file: str | None = None) -> None:
    """Jobs (``batcher.processing.context``) and child processes read the settings from the
    env: the URLs, the queue and the settings file, whose per-queue tables each job applies."""
    os.environ[env_name("redis_url")] = config.redis_url
    os.environ[env_name("queue")] = config.queue
    if config.rq_redis_url is not None:
        os.environ[env_name("rq_redis_url")] = config.rq_redis_url
    if settings_file is not None:
        os.environ[env_name("settings_file")] = os.path.abspath(settings_file)


def warm_up(config: BatchProcessingConfig, client: redis.Redis) -> None:
    """Import the handler and open the job context once, before any fork: a wrong
    BATCH_HANDLER fails at start-up, and forked job horses inherit the imported code."""
    from batcher.processing import context

    try:
        context(config.queue, client)
    except (ImportError, AttributeError, TypeError) as exc:
        # the LLM handler without the [llm] extra: say which extra, not just the module
        why = needs_extra("worker", exc) if isinstance(exc, ModuleNotFoundError) else None
        fail(f"{env_name('handler')}={config.handler!r}: cannot load the handler: "
             f"{why or exc}", EXIT_BAD_INPUT)


def preload_waiting(config: BatchProcessingConfig, client: redis.Redis) -> bool:
    """Load the scripts (a Lua error fails at boot, not on the first batch), waiting out a
    Redis fault; False when a signal came first. Scripts are loaded per server, so one
    queue's config loads them for every queue on its Redis."""
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


def wait_for_a_match(serving: Serving) -> bool:
    """A worker given patterns that match no queue yet looks again every RESCAN_SECONDS (as
    the coordinator does) until one does; False when a signal came first."""
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM,
                                                                       signal.SIGINT)}
    log.warning("worker.no_queue_yet", patterns=serving.asked,
                note=f"looking again every {rq_worker.RESCAN_SECONDS:g} s")
    try:
        while not stop.wait(rq_worker.RESCAN_SECONDS):
            try:
                serving.configs = serving.rescan()
            except redis.RedisError as exc:
                log.warning("worker.rescan_failed", error=str(exc))
                continue
            if serving.configs:
                return True
        return False
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


def child_argv(burst: bool, simple: bool, warm: bool, queues: Sequence[str] = ()) -> list[str]:
    # the URL goes through the environment (export_settings), not argv: ps shows argv
    argv = [sys.executable, "-m", "batcher.cli", "worker"]
    for queue in queues:
        argv += ["--queue", queue]
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
@queues_options
def worker(burst: bool, simple: bool, processes: int | None, warm: bool,
           queues: tuple[str, ...], settings_file: str | None, redis_url: str | None) -> None:
    """Process batches with the configured handler (BATCH_HANDLER), urgent queue first.

    Serves every queue given with --queue (a sharded queue: all its shards), taking turns
    between them within each priority, each with its own settings (--settings FILE). A
    pattern's new queues are served as they appear (looked for every 10 s)."""
    serving = open_queues_waiting(queues, settings_file, redis_url)
    # only patterns give no queue; nothing to do for a burst worker, a wait for the others
    if not serving.configs and (burst or not wait_for_a_match(serving)):
        log.info("worker.no_queue", patterns=serving.asked)
        return
    config, client = serving.configs[0], serving.client
    export_settings(config, settings_file)
    if processes is not None:
        argv = child_argv(burst, simple, warm, serving.asked if len(queues) else ())
        code = supervise(processes, argv)
        click.get_current_context().exit(code)
    for url in dict.fromkeys(c.redis_url for c in serving.configs):
        first = next(c for c in serving.configs if c.redis_url == url)
        if not preload_waiting(first, client if url == config.redis_url
                               else first.redis_client(oom_tolerant=True)):
            return
    if warm:
        for each in serving.configs:
            warm_up(each, client)
    run_workers(serving.configs if len(serving.configs) > 1 else config, client,
                burst=burst, simple=simple, rq_client=config.rq_client_for(client),
                rescan=serving.rescan if serving.has_pattern else None)


commands = [worker]
