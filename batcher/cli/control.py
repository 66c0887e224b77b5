"""``batcher pause`` and ``batcher resume``: stop and restart a queue's flushing."""

from __future__ import annotations

import click

from batcher import control
from batcher.cli.common import open_queue, queue_options


@click.command("pause")
@click.option("--seconds", type=click.FloatRange(min=0, min_open=True), default=None,
              help="resume by itself after this long [default: until `batcher resume`]")
@queue_options
def pause(seconds: float | None, queue: str | None, redis_url: str | None) -> None:
    """Stop flushing the queue; producers keep enqueueing and batches in flight finish.
    An emergency-level buffer still flushes, so a pause never loses entries."""
    config, client = open_queue(queue, redis_url)
    until = control.pause(client, config, seconds)
    when = "until resumed" if until == control.PAUSED_FOREVER_MS else f"until_ms={until}"
    click.echo(f"paused queue={config.queue} {when}")


@click.command("resume")
@queue_options
def resume(queue: str | None, redis_url: str | None) -> None:
    """Flush again at once (clears a pause and any handler rate limit)."""
    config, client = open_queue(queue, redis_url)
    control.resume(client, config)
    click.echo(f"resumed queue={config.queue}")


commands = [pause, resume]
