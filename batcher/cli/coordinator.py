"""``batcher coordinator`` (flush loop and reaper) and ``batcher flush`` (one manual pass)."""

from __future__ import annotations

import click
import redis
import structlog

from batcher import control
from batcher.check import eviction_policy
from batcher.cli.common import (
    EXIT_CHECK_FAILED,
    fail,
    open_queue,
    open_queue_waiting,
    queue_options,
    stop_on_signals,
)
from batcher.coordinator import MAX_BLOCK_SECONDS, Coordinator

log = structlog.stdlib.get_logger(__name__)


def check_eviction(client: redis.Redis, allow_eviction: bool) -> None:
    """Refuse (exit 1) a server that may evict pending entries, unless allowed."""
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
@queue_options
def coordinator(allow_eviction: bool, queue: str | None, redis_url: str | None) -> None:
    """Flush what is due, hand batches to RQ and reap expired leases, until SIGTERM."""
    config, client = open_queue_waiting(queue, redis_url)
    check_eviction(client, allow_eviction)
    # a dedicated connection for BLPOP, whose socket timeout outlasts the longest block
    blocking = config.redis_client(blocking_seconds=MAX_BLOCK_SECONDS)
    stop = stop_on_signals("coordinator.stopping")
    Coordinator(client, config, blocking_client=blocking).run(stop)


@click.command("flush")
@queue_options
def flush(queue: str | None, redis_url: str | None) -> None:
    """Flush everything pending now (reason 'manual') and dispatch it to the workers."""
    config, client = open_queue(queue, redis_url)
    done = control.flush_now(client, config)
    left = done.still_pending
    click.echo(f"flushed batches={done.batches} entries={done.entries}")
    if left:
        # a manual flush ignores the pause and the in-flight cap, so these arrived meanwhile
        click.echo(f"batcher: {left} entries arrived while flushing and are still pending",
                   err=True)


commands = [coordinator, flush]
