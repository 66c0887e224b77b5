"""``batcher exporter``: Prometheus metrics of one queue (the ``[exporter]`` extra)."""

from __future__ import annotations

import click

from batcher.cli.common import (
    EXIT_BAD_INPUT,
    fail,
    open_queue,
    queue_options,
    stop_on_signals,
)
from batcher.exporter import DEFAULT_PORT, serve_exporter


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


commands = [exporter]
