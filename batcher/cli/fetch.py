"""``batcher fetch``: a feed-fetching producer (``batcher.fetch.FeedFetcher``) until SIGTERM."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType

import click
import structlog

from batcher.cli.common import open_queue, queue_options
from batcher.fetch import FeedFetcher, load_feeds
from batcher.producer import BatchStateManager

log = structlog.stdlib.get_logger(__name__)


@click.command("fetch")
@click.option("--feeds", "feeds_path", required=True,
              type=click.Path(dir_okay=False, path_type=Path),
              help="TOML file of [[feeds]] tables (url, source, priority, interval_seconds)")
@click.option("--once", is_flag=True, help="fetch every feed once, then exit")
@click.option("--base-url", default=None, metavar="URL",
              help="what {base} in a feed url stands for")
@click.option("--per-host-delay", default=1.0, show_default=True, type=click.FloatRange(min=0),
              help="seconds between two requests to one host")
@queue_options
def fetch(feeds_path: Path, once: bool, base_url: str | None, per_host_delay: float,
          queue: str | None, redis_url: str | None) -> None:
    """Fetch RSS/Atom/JSON feeds on their intervals and enqueue their entries (ids are stable, so
    re-fetched entries are duplicates). Prints per-feed counts when it stops."""
    config, client = open_queue(queue, redis_url)
    feeds = load_feeds(feeds_path, base_url=base_url)
    stop = threading.Event()

    def handle(signum: int, _frame: FrameType | None) -> None:
        log.info("fetch.stopping", signal=signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, handle) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        with FeedFetcher(BatchStateManager(client, config), feeds,
                         per_host_delay_seconds=per_host_delay) as fetcher:
            counters = fetcher.run(stop, max_rounds=1 if once else None)
    finally:
        # an embedding caller (a test runner, the demo) gets its own handlers back
        for signum, old in previous.items():
            signal.signal(signum, old)
    for source, c in counters.items():
        click.echo(f"{source}: fetched={c.fetched} not_modified={c.not_modified} "
                   f"entries={c.entries_seen} accepted={c.accepted} duplicates={c.duplicates} "
                   f"rejected={c.rejected} faults={c.faults} errors={c.errors}")


commands = [fetch]
