"""``batcher weight set / list / reset``: each source's weight in its class's fair share."""

from __future__ import annotations

import click
import orjson

from batcher.cli.common import EXIT_BAD_INPUT, fail, open_queue, queue_options
from batcher.fairness import list_weights, reset_weight, set_weight, source_group


@click.group("weight")
def weight() -> None:
    """Fair share between sources: a source's share of its priority class follows its weight
    (default 1) whenever several sources have entries pending."""


@weight.command("set")
@click.argument("source")
@click.argument("value", type=float)
@queue_options
def set_cmd(source: str, value: float, queue: str | None, redis_url: str | None) -> None:
    """Give SOURCE the weight VALUE (> 0); it applies from the next flush."""
    config, client = open_queue(queue, redis_url)
    try:
        group = set_weight(client, config.keys.weights, source, value)
    except ValueError as exc:
        fail(str(exc), EXIT_BAD_INPUT)
    click.echo(f"weight {group}={value:g}")


@weight.command("reset")
@click.argument("source")
@queue_options
def reset_cmd(source: str, queue: str | None, redis_url: str | None) -> None:
    """SOURCE back to the default weight 1."""
    config, client = open_queue(queue, redis_url)
    removed = reset_weight(client, config.keys.weights, source)
    click.echo(f"weight {source_group(source)}=1 ({'reset' if removed else 'was default'})")


@weight.command("list")
@click.option("--json", "as_json", is_flag=True)
@queue_options
def list_cmd(as_json: bool, queue: str | None, redis_url: str | None) -> None:
    """The sources whose weight is not the default 1."""
    config, client = open_queue(queue, redis_url)
    weights = list_weights(client, config.keys.weights)
    if as_json:
        click.echo(orjson.dumps(weights).decode())
        return
    for group, value in weights.items():
        click.echo(f"{group}\t{value:g}")


commands = [weight]
