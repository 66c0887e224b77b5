#!/usr/bin/env python3
"""Fetch RSS/Atom/JSON feeds into a queue: a thin wrapper over ``batcher fetch``.

    .venv/bin/python scripts/feed_fetcher.py --feeds feeds.example.toml [--once]

Every option of ``batcher fetch`` applies (``--queue``, ``--redis-url``, ``--base-url``,
``--concurrency``, ``--per-host-limit``, ``--per-host-delay``, ``--timeout``, ``--lease``);
settings come from ``BATCH_*`` as for every command. Any number of these share the feed
schedule in Redis: each feed is fetched once per interval.
"""

from __future__ import annotations

import sys

from batcher.cli import cli

if __name__ == "__main__":
    cli.main(args=["fetch", *sys.argv[1:]], prog_name="feed_fetcher.py")
