"""``batcher fetch``: feed fetchers on a schedule shared in Redis; ``batcher fetch-status``."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import click
import orjson
import structlog

from batcher.cli.common import open_queue, open_queue_waiting, queue_options
from batcher.monitoring.feed_status import all_urls, feed_states
from batcher.producer import BatchStateManager

log = structlog.stdlib.get_logger(__name__)


@click.command("fetch")
@click.option("--feeds", "feeds_path", required=True,
              type=click.Path(dir_okay=False, path_type=Path),
              help="TOML file of [[feeds]] tables (url, source, priority, interval_seconds)")
@click.option("--once", is_flag=True, help="fetch the feeds due now, then exit")
@click.option("--base-url", default=None, metavar="URL",
              help="what {base} in a feed url stands for")
@click.option("--concurrency", default=8, show_default=True, type=click.IntRange(1, 256),
              help="feeds fetched at once by this process")
@click.option("--per-host-limit", default=2, show_default=True, type=click.IntRange(1, 256),
              help="requests in flight to one host from this process")
@click.option("--per-host-delay", default=0.0, show_default=True, type=click.FloatRange(min=0),
              help="seconds between two requests to one host from this process")
@click.option("--timeout", "timeout_seconds", default=10.0, show_default=True,
              type=click.FloatRange(min=0.1), help="seconds one request may take")
@click.option("--lease", "lease_seconds", default=120.0, show_default=True,
              type=click.FloatRange(min=1),
              help="seconds a claimed feed stays this process's; a killed fetcher's feeds "
                   "are fetched by another after it (must exceed --timeout)")
@click.option("--prune", is_flag=True,
              help="drop scheduled feeds that are not in this file (else they stay scheduled)")
@queue_options
def fetch(feeds_path: Path, once: bool, base_url: str | None, concurrency: int,
          per_host_limit: int, per_host_delay: float, timeout_seconds: float,
          lease_seconds: float, prune: bool, queue: str | None, redis_url: str | None) -> None:
    """Fetch RSS/Atom/JSON feeds and enqueue their entries. Any number of these processes
    share one schedule in Redis: each feed is fetched once per interval, with its ETag and
    Last-Modified. Prints this process's per-feed counts when it stops."""
    if lease_seconds <= timeout_seconds * 2:
        raise click.BadParameter(f"must exceed twice --timeout ({timeout_seconds}s)",
                                 param_hint="--lease")
    # the [feeds] extra (httpx, feedparser): fetch-status, beside, reads Redis only
    from batcher.feeds.fetch import FeedFetcher, load_feeds
    from batcher.feeds.runner import ScheduledFetcher
    from batcher.feeds.schedule import FetchSchedule

    feeds = load_feeds(feeds_path, base_url=base_url)
    # a daemon waits for Redis (no crash loop under a supervisor); --once is a command
    config, client = (open_queue(queue, redis_url) if once
                      else open_queue_waiting(queue, redis_url))
    stop = threading.Event()

    def handle(signum: int, _frame: FrameType | None) -> None:
        log.info("fetch.stopping", signal=signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, handle) for s in (signal.SIGTERM, signal.SIGINT)}
    schedule = FetchSchedule(client, config.queue, lease_seconds=lease_seconds)
    try:
        schedule.register(feeds)
        if prune:
            dropped = schedule.prune(feeds)
            log.info("fetch.pruned", count=len(dropped), urls=dropped[:5])
        with FeedFetcher(BatchStateManager(client, config), feeds, timeout_seconds=timeout_seconds,
                         per_host_delay_seconds=per_host_delay) as fetcher:
            runner = ScheduledFetcher(fetcher, schedule, concurrency=concurrency,
                                      per_host_limit=per_host_limit)
            counters = runner.run(stop, once=once)
    finally:
        # an embedding caller (a test runner, the demo) gets its own handlers back
        for signum, old in previous.items():
            signal.signal(signum, old)
    for source, c in counters.items():
        if c.fetched or c.not_modified or c.errors:
            click.echo(f"{source}: fetched={c.fetched} not_modified={c.not_modified} "
                       f"entries={c.entries_seen} accepted={c.accepted} "
                       f"duplicates={c.duplicates} rejected={c.rejected} faults={c.faults} "
                       f"errors={c.errors}")


def _row(f: dict[str, Any]) -> str:
    due_in = f["next_due_in_s"]
    due = ("fetching" if f["fetching"] else "-" if due_in is None
           else "now" if due_in <= 0 else f"{due_in:.0f}s")
    error = f"  {f['last_error']}" if f["last_error"] else ""
    return (f"{f['source'][:32]:32} {f['last_status']:12} {f['last_http_status'] or '-':>4} "
            f"{due:>9} {f['failures']:>4} {f['fetched']:>6} {f['not_modified']:>6} "
            f"{f['entries_seen']:>7} {f['accepted']:>7} {f['duplicates']:>6} {f['faults']:>6} "
            f"{f['errors']:>6}{error}")


@click.command("fetch-status")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per feed, a line each")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(min=0),
              help="feeds shown, failing ones first (0: all)")
@queue_options
def fetch_status(as_json: bool, limit: int, queue: str | None, redis_url: str | None) -> None:
    """Each scheduled feed: last status, next due, failures in a row, and its counts over
    every fetcher (fetched, not modified, entries, accepted, duplicates, faults, errors)."""
    config, client = open_queue(queue, redis_url)
    urls = all_urls(client, config.keys)
    feeds = feed_states(client, config.keys, urls[:limit] if limit else urls)
    if as_json:
        for feed in feeds:
            click.echo(orjson.dumps(feed).decode())
        return
    click.echo(f"{len(urls)} feeds scheduled on queue {config.queue!r}"
               + (f", {len(feeds)} shown" if len(feeds) < len(urls) else ""))
    click.echo(f"{'feed':32} {'last':12} {'http':>4} {'next due':>9} {'fail':>4} "
               f"{'fetchd':>6} {'304s':>6} {'entries':>7} {'accptd':>7} {'dups':>6} "
               f"{'faults':>6} {'errors':>6}")
    for feed in feeds:
        click.echo(_row(feed))


commands = [fetch, fetch_status]
