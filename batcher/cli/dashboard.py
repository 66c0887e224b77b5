"""``batcher dashboard``: the web UI (every queue on the Redis, actions behind a token)."""

from __future__ import annotations

import click

from batcher.cli.common import EXIT_BAD_INPUT, fail, open_queue, queue_options
from batcher.dashboard import DashboardSettings, is_loopback, serve


@click.command("dashboard")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="address to bind; beyond loopback a write token is required")
@click.option("--port", default=8321, show_default=True, type=click.IntRange(1, 65535))
@click.option("--write-token", envvar="BATCHER_DASHBOARD_TOKEN", default=None,
              metavar="TOKEN",
              help="enables pause/resume, flush now, requeue and purge for browsers that "
                   "unlock with it [env: BATCHER_DASHBOARD_TOKEN; default: read-only]")
@click.option("--refresh", "refresh_seconds", default=2.0, show_default=True,
              type=click.FloatRange(min=0.2), help="seconds between page refreshes")
@queue_options
def dashboard(host: str, port: int, write_token: str | None, refresh_seconds: float,
              queue: str | None, redis_url: str | None) -> None:
    """Serve the web dashboard: every queue on the Redis with its health, buffer, charts,
    workers, in-flight batches, dead letters and events. --queue picks the settings
    (capacity, targets) the figures are measured against, as for `batcher stats`."""
    if write_token is not None and len(write_token) < 12:
        fail("--write-token: use at least 12 characters", EXIT_BAD_INPUT)
    if write_token is None and not is_loopback(host):
        fail(f"refusing to listen on {host} without a write token: beyond loopback the "
             "dashboard needs --write-token (or BATCHER_DASHBOARD_TOKEN)", EXIT_BAD_INPUT)
    config, client = open_queue(queue, redis_url)
    mode = "read-write with the token" if write_token else "read-only"
    click.echo(f"dashboard on http://{host}:{port}/ ({mode})", err=True)
    try:
        serve(DashboardSettings(client, config, write_token, int(refresh_seconds * 1000)),
              host, port)
    except OSError as exc:
        fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}", EXIT_BAD_INPUT)


commands = [dashboard]
