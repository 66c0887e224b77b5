"""End-to-end: first enqueue -> last entry done, worker start-up included, 2 workers each."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from rq import Queue
from rq.registry import FinishedJobRegistry

from batcher.config import BatchProcessingConfig
from batcher.producer import CHUNK_SIZE, BatchStateManager
from benchlib import rq_tasks
from benchlib.common import child_env, config_env
from benchlib.procs import Children

WORKERS = 2
PACK = 25
POLL_SECONDS = 0.005
RQ_QUEUE = "bench-e2e"


def _timeout_seconds(count: int) -> float:
    # generous: plain RQ with forking workers runs ~130 entries/s on the reference machine
    return 120 + count / 40


def _wait_done(children: Children, done: Callable[[], int], count: int, start: float) -> float:
    deadline = start + _timeout_seconds(count)
    next_check = 0.0
    while (n := done()) < count:
        now = time.perf_counter()
        if now > deadline:
            raise RuntimeError(f"end-to-end run timed out: {n} of {count} done")
        if now > next_check:
            children.check_alive()
            next_check = now + 1.0
        time.sleep(POLL_SECONDS)
    return count / (time.perf_counter() - start)


def _wait_coordinator_ready(client: redis.Redis, config: BatchProcessingConfig,
                            children: Children) -> None:
    # Coordinator.start() publishes its limits in the state hash before its first flush
    deadline = time.monotonic() + 60
    while not client.hexists(config.keys.state, "max_inflight_batches"):
        if time.monotonic() > deadline:
            raise RuntimeError("the coordinator did not start within 60 s")
        children.check_alive()
        time.sleep(POLL_SECONDS)


def ours(config: BatchProcessingConfig, entries: list[dict[str, Any]], *, simple: bool,
         log_dir: Path, coordinator_running: bool = True) -> float:
    """Entries/s through our coordinator and 2 RQ workers running process_batch.

    The coordinator is a long-running service, like redis-server: by default it is up before
    the clock starts, and the clock covers the workers' start-up and the producer, as for the
    baselines. ``coordinator_running=False`` starts it with the clock too (start-up ~0.4 s of
    imports on a 2-core machine shared with the workers and the producer).
    """
    client = redis.Redis.from_url(config.redis_url)
    client.flushall()
    stats_key = config.keys.counters
    manager = BatchStateManager(config=config)
    worker_args = ["-m", "benchlib.procs", "ours-worker", *(["--simple"] if simple else [])]
    with Children(log_dir, config_env(config)) as children:
        if coordinator_running:
            children.python("coordinator", "-m", "benchlib.procs", "ours-coordinator")
            _wait_coordinator_ready(client, config, children)
        start = time.perf_counter()
        if not coordinator_running:
            children.python("coordinator", "-m", "benchlib.procs", "ours-coordinator")
        for i in range(WORKERS):
            children.python(f"worker{i}", *worker_args)
        for i in range(0, len(entries), CHUNK_SIZE):
            manager.queue_many(entries[i:i + CHUNK_SIZE])
        return _wait_done(children, lambda: int(client.hget(stats_key, "acked") or 0),
                          len(entries), start)


def rq_baseline(url: str, entries: list[dict[str, Any]], *, simple: bool, pack: int,
                log_dir: Path) -> float:
    """Entries/s of plain RQ: one job per entry (pack=1) or ``pack`` entries per job."""
    client = redis.Redis.from_url(url)
    client.flushall()
    queue = Queue(RQ_QUEUE, connection=client)
    finished = FinishedJobRegistry(RQ_QUEUE, connection=client)
    jobs = math.ceil(len(entries) / pack)
    worker_args = ["-m", "benchlib.procs", "rq-worker", *(["--simple"] if simple else []),
                   RQ_QUEUE]
    with Children(log_dir, child_env({"BENCH_REDIS_URL": url})) as children:
        start = time.perf_counter()
        for i in range(WORKERS):
            children.python(f"rq-worker{i}", *worker_args)
        for i in range(0, len(entries), CHUNK_SIZE):
            chunk = entries[i:i + CHUNK_SIZE]
            if pack == 1:
                datas = [Queue.prepare_data(rq_tasks.echo, args=(e,)) for e in chunk]
            else:
                datas = [Queue.prepare_data(rq_tasks.echo_many, args=(chunk[j:j + pack],))
                         for j in range(0, len(chunk), pack)]
            with client.pipeline() as pipe:
                queue.enqueue_many(datas, pipeline=pipe)
                pipe.execute()
        # done: every job in the finished registry (the timing counts entries)
        rate = _wait_done(children, lambda: int(client.zcard(finished.key)), jobs, start)
        return rate * len(entries) / jobs


def celery_batches(url: str, entries: list[dict[str, Any]], *, pool: str,
                   log_dir: Path) -> float:
    """Entries/s of celery-batches (flush_every=25, flush_interval=1), prefork or solo."""
    client = redis.Redis.from_url(url)
    client.flushall()
    env = child_env({"BENCH_REDIS_URL": url})
    from benchlib import celery_app

    celery_app.app.conf.broker_url = url
    base = [sys.executable, "-m", "celery", "-A", "benchlib.celery_app", "worker", "-l",
            "WARNING", "--without-gossip", "--without-mingle", "--without-heartbeat"]
    with Children(log_dir, env) as children:
        start = time.perf_counter()
        if pool == "prefork":
            children.start("celery-prefork", [*base, "-P", "prefork", "-c", str(WORKERS),
                                              "-n", "prefork@%h"])
        else:
            for i in range(WORKERS):
                children.start(f"celery-solo{i}", [*base, "-P", "solo", "-n", f"solo{i}@%h"])
        with celery_app.app.producer_or_acquire() as producer:
            for entry in entries:
                celery_app.echo_batch.apply_async((entry,), producer=producer)
        return _wait_done(children, lambda: int(client.get(celery_app.DONE_KEY) or 0),
                          len(entries), start)
