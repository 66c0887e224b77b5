"""Read-only commands: ``stats``, ``check``, ``keys`` and ``result``."""

from __future__ import annotations

import shlex
import threading
from collections.abc import Mapping
from typing import Any, cast

import click
import orjson
import redis
from rich.console import Console
from rich.table import Table

from batcher.check import check_queue
from batcher.cli.common import EXIT_CHECK_FAILED, fail, open_queue, queue_options
from batcher.config import BatchProcessingConfig
from batcher.models import PRIORITY_NAMES
from batcher.monitoring.queue_stats import LlmFigures, QueueStats, as_queue_stats
from batcher.redaction import scrub
from batcher.stats import read_queue_stats
from batcher.top import live_view

# key kinds with one key per batch, entry or scheduled feed
PER_ID_KINDS = ("batch", "result", "fetch:feed")
KEYS_SHOWN_PER_KIND = 20
WATCH_SECONDS = 1.0
_INSPECT = {
    "zset": "ZRANGE {key} 0 9 WITHSCORES",
    "hash": "HSCAN {key} 0 COUNT 10",
    "list": "LRANGE {key} 0 9",
    "stream": "XREVRANGE {key} + - COUNT 10",
    "string": "GET {key}",
    "set": "SSCAN {key} 0 COUNT 10",
}


# -- stats -----------------------------------------------------------------------------------

def _ms(value: Any) -> str:
    if value is None:
        return "-"
    return "∞" if value == float("inf") else f"{value:,.0f} ms"


def _rows(stats: QueueStats) -> dict[str, list[tuple[str, str]]]:
    b, p, c, s, h = stats.buffer, stats.performance, stats.counters, stats.sizing, stats.health
    paused = b.paused_until_ms
    classes = ", ".join(f"{PRIORITY_NAMES[i]} {b.by_priority[str(i)]:,}" for i in (2, 1, 0))
    return {
        "buffer": [
            ("pending", f"{b.pending:,} ({classes})"),
            ("delayed", f"{b.delayed:,}"),
            ("bytes", f"{b.bytes:,}"),
            ("utilization", f"{b.utilization:.1%}"),
            ("oldest", _ms(b.oldest_age_ms)),
            ("in flight", f"{b.in_flight_batches:,} batches, {b.in_flight_entries:,} entries"),
            ("dead", f"{b.dead:,}"),
            ("paused until", str(paused) if paused and paused > stats.now_ms else "-"),
            ("paused because", b.paused_reason or "-"),
        ],
        "llm": _llm_rows(stats.llm),
        "performance": [
            ("throughput", f"{p.throughput_eps:,.2f} entries/s"),
            ("processing avg / p50", f"{_ms(p.avg_processing_time_ms)} / "
                                     f"{_ms(p.p50_processing_ms)}"),
            ("processing p95 / p99", f"{_ms(p.p95_processing_ms)} / "
                                     f"{_ms(p.p99_processing_ms)}"),
            ("queue wait avg", _ms(p.avg_queue_wait_ms)),
            ("batches processed / failed", f"{p.batches_processed:,} / {p.batches_failed:,}"),
            ("entries processed", f"{p.entries_processed:,}"),
        ],
        "counters": [(name, f"{value:,}") for name, value in c.items()],
        "flush reasons": [(name, f"{value:,}") for name, value in c.flushes.items()],
        "sizing": [
            ("size threshold", f"{s.size_threshold} (min {s.min}, max {s.max})"),
            ("adjustments", f"{s.adjustments:,}"),
            ("effective deadlines", ", ".join(
                f"{PRIORITY_NAMES[int(k)]} {v:g} s"
                for k, v in sorted(s.effective_thresholds_seconds.items(), reverse=True))),
        ],
        "health": [("status", h.status)] + [("", reason) for reason in h.reasons],
        **_fetch_rows(stats.fetch),
    }


def _llm_rows(llm: LlmFigures) -> list[tuple[str, str]]:
    if not llm.requests:
        return [("requests", "0")]
    per_s, per_entry = llm.tokens_per_second, llm.tokens_per_entry
    return [
        ("requests", f"{llm.requests:,} ({llm.truncated:,} truncated, "
                     f"{llm.refusals:,} refusals, {llm.bisections:,} bisections)"),
        ("tokens prompt / completion", f"{llm.prompt_tokens:,} / {llm.completion_tokens:,}"),
        ("tokens cached", f"{llm.cached_tokens:,}"),
        ("tokens/s, tokens/entry", f"{'-' if per_s is None else per_s}, "
                                   f"{'-' if per_entry is None else per_entry}"),
        ("estimated cost", f"${llm.cost_usd:,.4f}"),
    ]


def _fetch_rows(fetch: Mapping[str, Any] | None) -> dict[str, list[tuple[str, str]]]:
    if not fetch:
        return {}
    t = fetch["totals"]
    rows = [
        ("feeds", f"{fetch['feeds']:,} ({fetch['due_now']:,} due, {fetch['fetching']:,} "
                  f"fetching, {fetch['failing']:,} failing, {fetch['hosts_backed_off']:,} "
                  "hosts backed off)"),
        ("fetches", f"{t['fetched']:,} fetched, {t['not_modified']:,} not modified, "
                    f"{t['errors']:,} failed"),
        ("entries", f"{t['entries_seen']:,} seen, {t['accepted']:,} accepted, "
                    f"{t['duplicates']:,} duplicates, {t['rejected']:,} rejected, "
                    f"{t['faults']:,} faults"),
    ]
    failing = [f for f in fetch["feeds_shown"] if f["failures"]][:5]
    rows += [(f"  {f['source']}", f"{f['failures']} failures: {f['last_error']}")
             for f in failing]
    return {"feeds (batcher fetch-status)": rows}


def render_stats(figures: QueueStats | Mapping[str, Any]) -> Table:
    """The figures of DESIGN §6 as one table, a section per group."""
    stats = as_queue_stats(figures)
    table = Table(title=f"batcher queue {stats.queue!r}", show_header=False,
                  title_justify="left")
    table.add_column("figure", style="bold")
    table.add_column("value")
    for section, rows in _rows(stats).items():
        table.add_row(f"[underline]{section}[/]", "")
        for name, value in rows:
            table.add_row(f"  {name}", value)
        table.add_section()
    return table


@click.command("stats")
@click.option("--json", "as_json", is_flag=True, help="print get_detailed_stats() as JSON")
@click.option("--watch", is_flag=True, help="refresh every second until Ctrl-C")
@queue_options
def stats(as_json: bool, watch: bool, queue: str | None, redis_url: str | None) -> None:
    """Buffer, performance, counters, flush reasons, sizing and health of the queue."""
    config, client = open_queue(queue, redis_url)
    if as_json and not watch:
        click.echo(orjson.dumps(read_queue_stats(client, config).to_dict(),
                                option=orjson.OPT_INDENT_2).decode())
        return
    if not watch:
        Console().print(render_stats(read_queue_stats(client, config)))
        return
    live_view(lambda: read_queue_stats(client, config), render_stats, WATCH_SECONDS,
              stop=watch_stop())


def watch_stop() -> threading.Event:
    """What ends ``stats --watch`` besides Ctrl-C (a test's stop; none by default)."""
    return threading.Event()


# -- check -----------------------------------------------------------------------------------

@click.command("check")
@queue_options
def check(queue: str | None, redis_url: str | None) -> None:
    """Verify the invariants and preconditions of DESIGN §3; exit 1 naming what broke."""
    config, client = open_queue(queue, redis_url)
    report = check_queue(client, config)
    for name, value in report.facts.items():
        click.echo(scrub(f"{name}={value}"))
    for problem in report.problems:
        click.echo(scrub(f"PROBLEM: {problem}"))
    if not report.ok:
        fail(f"check failed for queue {config.queue!r}: {len(report.problems)} problem(s)",
             EXIT_CHECK_FAILED)
    click.echo(f"ok: queue {config.queue!r} is consistent")


# -- keys ------------------------------------------------------------------------------------

def _kind(config: BatchProcessingConfig, key: str) -> str | None:
    rest = key[len(config.keys.base) + 1:]
    if rest.startswith("fetch:feed:"):  # one per scheduled feed: thousands
        return "fetch:feed"
    head = rest.split(":", 1)[0]
    return head if head in PER_ID_KINDS and ":" in rest else None


def _describe_keys(client: redis.Redis, names: list[str]) -> list[tuple[str, str, int]]:
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.type(name)
    types = [t.decode() if isinstance(t, bytes) else str(t) for t in pipe.execute()]
    pipe = client.pipeline(transaction=False)
    size_of = {"zset": pipe.zcard, "hash": pipe.hlen, "list": pipe.llen, "stream": pipe.xlen,
               "string": pipe.strlen, "set": pipe.scard}
    for name, kind in zip(names, types, strict=True):
        size_of.get(kind, pipe.exists)(name)
    sizes = pipe.execute()
    return [(n, t, int(s)) for n, t, s in zip(names, types, sizes, strict=True) if t != "none"]


@click.command("keys")
@click.option("--limit", default=KEYS_SHOWN_PER_KIND, show_default=True,
              help="batch:* and result:* keys shown per kind (0 = all)")
@queue_options
def keys(limit: int, queue: str | None, redis_url: str | None) -> None:
    """The queue's keys (SCAN), with type, size and the redis-cli command that inspects each
    (a sharded queue's: every shard's)."""
    from batcher.shards import queues_of

    config, client = open_queue(queue, redis_url)
    described: list[tuple[str, str, int]] = []
    per_kind: dict[str, int] = {kind: 0 for kind in PER_ID_KINDS}
    for shard_client, shard in queues_of(client, config):
        shown: list[str] = []
        for raw in shard_client.scan_iter(match=shard.keys.scan_pattern(), count=1000):
            name = cast(bytes, raw).decode()
            kind = _kind(shard, name)
            if kind is not None:
                per_kind[kind] += 1
                if limit and per_kind[kind] > limit:
                    continue
            shown.append(name)
        described += _describe_keys(shard_client, shown)
    table = Table(title=f"keys of queue {config.queue!r} (add -u URL to redis-cli for "
                        "another server)", title_justify="left")
    for column in ("key", "type", "size", "inspect with"):
        table.add_column(column, overflow="fold")
    for name, kind, size in sorted(described):
        inspect = _INSPECT.get(kind, "TYPE {key}").format(key=shlex.quote(name))
        table.add_row(name, kind, f"{size:,}", f"redis-cli {inspect}")
    Console(width=200).print(table)
    for kind, count in per_kind.items():
        if limit and count > limit:
            click.echo(f"... and {count - limit:,} more {kind}:* keys "
                       f"({count:,} in all; --limit 0 lists them)")


# -- result ----------------------------------------------------------------------------------

@click.command("result")
@click.argument("entry_id", metavar="ID")
@queue_options
def result(entry_id: str, queue: str | None, redis_url: str | None) -> None:
    """Print an entry's stored result (JSON); exit 1 when there is none."""
    from batcher.shards import queues_of

    config, client = open_queue(queue, redis_url)
    raw = None
    for shard_client, shard in queues_of(client, config):  # the id does not name its shard
        raw = cast(bytes | None, shard_client.get(shard.keys.result(entry_id)))
        if raw is not None:
            break
    if raw is None:
        fail(f"no result for {entry_id!r} in queue {config.queue!r} (not processed yet, "
             "results not kept, or its TTL ran out)", EXIT_CHECK_FAILED)
    click.echo(raw.decode())


commands = [stats, check, keys, result]
