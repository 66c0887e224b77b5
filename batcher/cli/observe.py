"""Watching commands: ``top`` (a live terminal view) and ``exporter`` (Prometheus metrics)."""

from __future__ import annotations

import click
import structlog

from batcher.cli.common import (
    EXIT_BAD_INPUT,
    fail,
    open_queue,
    queue_options,
    stop_on_signals,
)
from batcher.exporter import DEFAULT_PORT, serve_exporter
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


@click.command("exporter")
@click.option("--port", default=DEFAULT_PORT, show_default=True, type=click.IntRange(0, 65535),
              help="TCP port of /metrics (0: any free port)")
@click.option("--addr", default="127.0.0.1", show_default=True,
              help="address to bind (0.0.0.0 for every interface)")
@queue_options
def exporter(port: int, addr: str, queue: str | None, redis_url: str | None) -> None:
    """Serve Prometheus metrics (batcher_*, label queue) on /metrics until SIGTERM."""
    config, client = open_queue(queue, redis_url)
    try:
        server, thread = serve_exporter(client, config, port, addr)
    except OSError as exc:
        fail(f"cannot listen on {addr}:{port}: {exc.strerror or exc}", EXIT_BAD_INPUT)
    click.echo(f"serving http://{addr}:{server.server_port}/metrics for queue "
               f"{config.queue!r}", err=True)
    stop = stop_on_signals("exporter.stopping")
    while not stop.wait(1.0):
        pass
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


commands = [top, exporter]
