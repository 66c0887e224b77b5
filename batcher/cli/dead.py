"""``batcher dead list / requeue / purge``: the dead-letter set."""

from __future__ import annotations

from datetime import UTC, datetime

import click
import orjson
from rich.console import Console
from rich.table import Table

from batcher import control
from batcher.cli.common import open_queue, queue_options
from batcher.monitoring.reads import dead_count, dead_records

LIST_LIMIT = 100


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")


@click.group("dead")
def dead() -> None:
    """The dead-letter set: entries out of attempts ('failed') or too old ('expired')."""


@dead.command("list")
@click.option("--json", "as_json", is_flag=True, help="a JSON array, envelopes included")
@click.option("--limit", default=LIST_LIMIT, show_default=True, help="at most N (0 = all)")
@queue_options
def list_dead(as_json: bool, limit: int, queue: str | None, redis_url: str | None) -> None:
    """Dead entries: id, reason, error, attempts, when they died (a sharded queue's from
    every shard, oldest death first, each naming its shard)."""
    config, client = open_queue(queue, redis_url)
    records = list(dead_records(client, config, limit))
    total = dead_count(client, config)
    if as_json:
        click.echo(orjson.dumps([r.view() for r in records]).decode())
        return
    sharded = any(r.shard is not None for r in records)
    table = Table(title=f"dead entries of queue {config.queue!r}: {total:,}",
                  title_justify="left")
    for column in ("id", *(("shard",) if sharded else ()), "reason", "error", "attempts",
                   "died at (UTC)"):
        table.add_column(column, overflow="fold")
    for r in records:
        table.add_row(r.id, *((str(r.shard),) if sharded else ()), str(r.reason),
                      str(r.error), str(r.attempts), _iso(r.died_at_ms))
    Console(width=160).print(table)
    if len(records) < total:
        click.echo(f"... {total - len(records):,} more (--limit 0 lists all)")


@dead.command("requeue")
@click.argument("ids", nargs=-1, metavar="[ID]...")
@queue_options
def requeue(ids: tuple[str, ...], queue: str | None, redis_url: str | None) -> None:
    """Back to pending with their original score; no ids = every dead entry (of every
    shard of a sharded queue)."""
    config, client = open_queue(queue, redis_url)
    done = control.requeue_dead(client, config, list(ids) or None)
    # 'purged' here: ids a producer re-sent meanwhile, already pending again
    click.echo(f"requeued={done.moved} already_pending={done.purged} missing={done.missing}")


@dead.command("purge")
@click.argument("ids", nargs=-1, metavar="[ID]...")
@queue_options
def purge(ids: tuple[str, ...], queue: str | None, redis_url: str | None) -> None:
    """Delete dead entries for good (counted in counters.purged); no ids = all of them."""
    config, client = open_queue(queue, redis_url)
    done = control.purge_dead(client, config, list(ids) or None)
    click.echo(f"purged={done.purged} missing={done.missing}")


commands = [dead]
