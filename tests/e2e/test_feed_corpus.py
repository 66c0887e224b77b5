"""Many small, varied, malformed feeds through `batcher fetch` into a real Redis: every
distinct entry accepted, and only the one article two feeds share counted as duplicate."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import redis

from batcher.demo.feed_server import serve_feeds
from tests.support.feed_corpus import KINDS, write_corpus

ROOT = Path(__file__).resolve().parents[2]


def test_every_distinct_entry_of_a_malformed_corpus_is_accepted(
    tmp_path: Path, redis_url: str, real_redis: redis.Redis
) -> None:
    corpus = write_corpus(tmp_path, copies=6)
    server, base_url = serve_feeds(tmp_path)
    try:
        env = {**os.environ, "BATCH_REDIS_URL": redis_url, "BATCH_QUEUE": "corpus",
               "BATCH_LOG_FORMAT": "json"}
        done = subprocess.run(
            [sys.executable, "-m", "batcher", "fetch", "--feeds", str(tmp_path / "feeds.toml"),
             "--base-url", base_url, "--once", "--per-host-delay", "0"],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    finally:
        server.stop()
    assert done.returncode == 0, done.stderr[-3000:]
    stats = real_redis.hgetall("batcher:{corpus}:stats")
    assert len(corpus.names) == 6 * len(KINDS)
    assert int(stats[b"accepted"]) == corpus.distinct
    assert int(stats.get(b"duplicates", 0)) == corpus.shared == 5
    payloads = [orjson.loads(v)["payload"]
                for v in real_redis.hvals("batcher:{corpus}:payloads")]
    text = " ".join(f"{p['title']} {p['summary']}" for p in payloads)
    assert [t for t in corpus.tokens if t not in text] == []
    titles = {p["title"] for p in payloads}
    assert set(corpus.titles.values()) <= titles  # legacy encodings decoded, HTML stripped
    assert "errors=0" in done.stdout and "errors=1" not in done.stdout
