"""``batcher top``: a live terminal view of one queue."""

from __future__ import annotations

import click
import structlog

from batcher.cli.common import (
    EXIT_BAD_INPUT,
    fail,
    open_queue,
    queue_options,
)
from batcher.top import run_top, top_snapshot

log = structlog.stdlib.get_logger(__name__)


@click.command("top")
@click.option("--refresh", "refresh_seconds", default=1.0, show_default=True, type=float,
              help="seconds between redraws")
@click.option("--once", is_flag=True, help="print one frame as plain text and exit")
@queue_options
def top(refresh_seconds: float, once: bool, queue: str | None, redis_url: str | None) -> None:
    """A live view of throughput, latency, the buffer by priority, the size threshold,
    flush reasons and live workers, until Ctrl-C."""
    if refresh_seconds <= 0:
        fail(f"--refresh={refresh_seconds:g}: must be > 0", EXIT_BAD_INPUT)
    config, client = open_queue(queue, redis_url)
    if once:
        click.echo(top_snapshot(client, config), nl=False)
        return
    run_top(client, config, refresh_seconds)


commands = [top]
