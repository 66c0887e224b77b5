"""Two `batcher fetch` processes over the same feeds: every entry enqueued once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import redis

from batcher.feed_server import SAMPLE_FEEDS_TOML, serve_feeds

ROOT = Path(__file__).resolve().parents[2]


def test_two_fetcher_processes_enqueue_no_duplicates(
    redis_url: str, real_redis: redis.Redis
) -> None:
    server, base_url = serve_feeds()
    try:
        env = {**os.environ, "BATCH_REDIS_URL": redis_url, "BATCH_QUEUE": "feeds",
               "BATCH_LOG_FORMAT": "json"}
        command = [sys.executable, "-m", "batcher", "fetch", "--feeds", str(SAMPLE_FEEDS_TOML),
                   "--base-url", base_url, "--once", "--per-host-delay", "0"]
        procs = [subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
        outputs = [p.communicate(timeout=60) for p in procs]
    finally:
        server.stop()
    assert [p.returncode for p in procs] == [0, 0], outputs
    pending = {m.decode() for m in real_redis.zrange("batcher:{feeds}:pending", 0, -1)}
    stats = real_redis.hgetall("batcher:{feeds}:stats")
    accepted, duplicates = int(stats[b"accepted"]), int(stats.get(b"duplicates", 0))
    assert accepted == len(pending) > 40
    assert duplicates == accepted  # the second fetcher saw exactly what the first accepted
    # the malformed feed was reported by both, and stopped neither
    assert all("broken_wire" in out + err for out, err in outputs)
