"""Two `batcher fetch` processes over the same feeds: each feed fetched once, each entry
enqueued once, and `batcher fetch-status` shows every feed's state."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import redis

from batcher.demo.feed_server import SAMPLE_FEEDS_TOML, serve_feeds

ROOT = Path(__file__).resolve().parents[2]


def test_two_fetcher_processes_fetch_each_feed_once(
    redis_url: str, real_redis: redis.Redis
) -> None:
    server, base_url = serve_feeds()
    env = {**os.environ, "BATCH_REDIS_URL": redis_url, "BATCH_QUEUE": "feeds",
           "BATCH_LOG_FORMAT": "json"}
    try:
        command = [sys.executable, "-m", "batcher", "fetch", "--feeds", str(SAMPLE_FEEDS_TOML),
                   "--base-url", base_url, "--once", "--concurrency", "3"]
        procs = [subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
        outputs = [p.communicate(timeout=120) for p in procs]
    finally:
        server.stop()
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert set(Counter(path for path, _ in server.requests).values()) == {1}
    assert len(server.requests) == 11
    pending = {m.decode() for m in real_redis.zrange("batcher:{feeds}:pending", 0, -1)}
    stats = real_redis.hgetall("batcher:{feeds}:stats")
    assert int(stats[b"accepted"]) == len(pending) == 60  # the sample feeds' 60 entries
    assert int(stats.get(b"duplicates", 0)) == 0
    # the malformed feed was reported once, and stopped nothing
    assert sum(("broken_wire" in out + err) for out, err in outputs) == 1
    status = subprocess.run([sys.executable, "-m", "batcher", "fetch-status", "--json"],
                            env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
                            check=True)
    feeds = [json.loads(line) for line in status.stdout.splitlines()]
    assert len(feeds) == 11 and feeds[0]["source"] == "broken_wire"  # failing first
    assert feeds[0]["failures"] == 1 and "malformed" in feeds[0]["last_error"]
    assert sum(f["accepted"] for f in feeds) == len(pending)
    assert all(f["fetched"] == 1 for f in feeds[1:])
