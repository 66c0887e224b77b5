"""``batcher coordinator`` (flush loop and reaper) and ``batcher flush`` (one manual pass)."""

from __future__ import annotations

import click
import redis
import structlog

from batcher.cli.common import (
    EXIT_CHECK_FAILED,
    fail,
    open_queue,
    open_queues_waiting,
    queue_options,
    queues_options,
    stop_on_signals,
)
from batcher.multi_queue import CoordinatorGroup

log = structlog.stdlib.get_logger(__name__)


def check_eviction(client: redis.Redis, allow_eviction: bool) -> None:
    """Refuse (exit 1) a server that may evict pending entries, unless allowed."""
    # here, not at the top: batcher.check and batcher.control are the `check` and `flush`
    # commands' modules, whose dataclasses a coordinator's start-up need not build
    from batcher.check import eviction_policy

    policy = eviction_policy(client)
    if policy is None:
        log.warning("redis.eviction_policy_unknown",
                    note="CONFIG GET is not allowed; make sure maxmemory-policy is noeviction")
    elif policy != "noeviction":
        if not allow_eviction:
            fail(f"Redis maxmemory-policy is {policy!r}: it may evict pending entries; set it "
                 "to 'noeviction' or pass --allow-eviction to run anyway", EXIT_CHECK_FAILED)
        log.warning("redis.eviction_allowed", maxmemory_policy=policy)


@click.command("coordinator")
@click.option("--allow-eviction", is_flag=True,
              help="run even when Redis's maxmemory-policy is not noeviction")
@queues_options
def coordinator(allow_eviction: bool, queues: tuple[str, ...], settings_file: str | None,
                redis_url: str | None) -> None:
    """Flush what is due, hand batches to RQ and reap expired leases, until SIGTERM.

    Serves every queue given with --queue (a sharded queue: all its shards), each in a loop
    of its own with its own settings (--settings FILE)."""
    serving = open_queues_waiting(queues, settings_file, redis_url)
    check_eviction(serving.client, allow_eviction)
    names = [c.queue for c in serving.configs]
    stop = stop_on_signals("coordinator.stopping", queues=names)
    if not names:
        log.warning("coordinator.no_queue_yet", patterns=serving.asked,
                    note="looking again every 10 s")
    group = CoordinatorGroup(stop)
    for config in serving.configs:
        group.add(config)
    group.wait(serving.rescan if serving.has_pattern else None)
    if group.failures:
        queue, exc = group.failures[0]
        fail(f"coordinator of queue {queue!r} failed: {type(exc).__name__}: {exc}")


@click.command("flush")
@queue_options
def flush(queue: str | None, redis_url: str | None) -> None:
    """Flush everything pending now (reason 'manual') and dispatch it to the workers."""
    from batcher import control

    config, client = open_queue(queue, redis_url)
    done = control.flush_now(client, config)
    left = done.still_pending
    click.echo(f"flushed batches={done.batches} entries={done.entries}")
    if left:
        # a manual flush ignores the pause and the in-flight cap, so these arrived meanwhile
        click.echo(f"batcher: {left} entries arrived while flushing and are still pending",
                   err=True)


commands = [coordinator, flush]
