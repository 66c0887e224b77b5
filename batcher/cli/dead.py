"""``batcher dead list / requeue / purge``: the dead-letter set."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, cast

import click
import orjson
import redis
from rich.console import Console
from rich.table import Table

from batcher.cli.common import open_queue, queue_options
from batcher.config import BatchProcessingConfig
from batcher.scripts import Scripts

CHUNK = 500
LIST_LIMIT = 100


def dead_records(client: redis.Redis, config: BatchProcessingConfig,
                 limit: int) -> Iterator[dict[str, Any]]:
    """Dead entries, oldest death first: id, reason, error, attempts, died_at_ms, envelope."""
    k = config.keys
    start = 0
    while not limit or start < limit:
        stop = start + CHUNK - 1 if not limit else min(start + CHUNK, limit) - 1
        rows = cast(list[tuple[bytes, float]],
                    client.zrange(k.dead, start, stop, withscores=True))
        if not rows:
            return
        raw = cast(list[bytes | None], client.hmget(k.dead_payloads, [i for i, _ in rows]))
        for (entry_id, died_ms), record in zip(rows, raw, strict=True):
            parsed: dict[str, Any] = {}
            if record is not None:
                try:
                    parsed = orjson.loads(record)
                except orjson.JSONDecodeError:
                    parsed = {"error": "(unreadable dead record)"}
            yield {"id": entry_id.decode(), "reason": parsed.get("reason"),
                   "error": parsed.get("error"), "attempts": parsed.get("attempts"),
                   "died_at_ms": int(died_ms), "envelope": parsed.get("envelope")}
        start += CHUNK


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")


def _all_dead_in_chunks(client: redis.Redis, config: BatchProcessingConfig,
                        scripts: Scripts, purge: bool) -> tuple[int, int, int]:
    # each pass removes what it took from the dead set, so the next chunk is again at rank 0
    totals = (0, 0, 0)
    while True:
        ids = [i.decode() for i in cast(list[bytes], client.zrange(config.keys.dead, 0,
                                                                   CHUNK - 1))]
        if not ids:
            return totals
        done = scripts.requeue(ids, purge=purge)
        totals = cast(tuple[int, int, int], tuple(a + b for a, b in zip(totals, done,
                                                                         strict=True)))
        if done[0] + done[1] == 0:  # pragma: no cover - nothing moved: do not spin
            return totals


@click.group("dead")
def dead() -> None:
    """The dead-letter set: entries out of attempts ('failed') or too old ('expired')."""


@dead.command("list")
@click.option("--json", "as_json", is_flag=True, help="a JSON array, envelopes included")
@click.option("--limit", default=LIST_LIMIT, show_default=True, help="at most N (0 = all)")
@queue_options
def list_dead(as_json: bool, limit: int, queue: str | None, redis_url: str | None) -> None:
    """Dead entries: id, reason, error, attempts, when they died."""
    config, client = open_queue(queue, redis_url)
    records = list(dead_records(client, config, limit))
    total = client.zcard(config.keys.dead)
    if as_json:
        click.echo(orjson.dumps(records).decode())
        return
    table = Table(title=f"dead entries of queue {config.queue!r}: {total:,}",
                  title_justify="left")
    for column in ("id", "reason", "error", "attempts", "died at (UTC)"):
        table.add_column(column, overflow="fold")
    for r in records:
        table.add_row(r["id"], str(r["reason"]), str(r["error"]), str(r["attempts"]),
                      _iso(r["died_at_ms"]))
    Console(width=160).print(table)
    if len(records) < total:
        click.echo(f"... {total - len(records):,} more (--limit 0 lists all)")


@dead.command("requeue")
@click.argument("ids", nargs=-1, metavar="[ID]...")
@queue_options
def requeue(ids: tuple[str, ...], queue: str | None, redis_url: str | None) -> None:
    """Back to pending with their original score; no ids = every dead entry."""
    config, client = open_queue(queue, redis_url)
    scripts = Scripts(client, config)
    if ids:
        moved, purged, missing = scripts.requeue(list(ids))
    else:
        moved, purged, missing = _all_dead_in_chunks(client, config, scripts, purge=False)
    # 'purged' here: ids a producer re-sent meanwhile, already pending again
    click.echo(f"requeued={moved} already_pending={purged} missing={missing}")


@dead.command("purge")
@click.argument("ids", nargs=-1, metavar="[ID]...")
@queue_options
def purge(ids: tuple[str, ...], queue: str | None, redis_url: str | None) -> None:
    """Delete dead entries for good (counted in counters.purged); no ids = all of them."""
    config, client = open_queue(queue, redis_url)
    scripts = Scripts(client, config)
    if ids:
        _moved, purged, missing = scripts.requeue(list(ids), purge=True)
    else:
        _moved, purged, missing = _all_dead_in_chunks(client, config, scripts, purge=True)
    click.echo(f"purged={purged} missing={missing}")


commands = [dead]
