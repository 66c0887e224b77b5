#!/usr/bin/env python3
"""Many fetchers, one fetch per feed per interval: N feeds served locally, K fetcher processes.

    .venv/bin/python scripts/bench_feeds.py                     # 10,000 feeds, 4 x 8 threads
    .venv/bin/python scripts/bench_feeds.py --feeds 300 --fetchers 2 --threads 4   # quick

Each feed is a small RSS 2.0 file with three items: one untitled, undated, description-only;
one whose GUID is the post number "1" (isPermaLink="false", the same in every feed); one
with its own link. All are served by one local HTTP server (batcher.demo.feed_server), which
counts the requests per feed. K `batcher fetch` processes share the schedule in a private
redis-server. The interval is longer than the run, so every feed must be fetched exactly
once: the figures are the feeds fetched twice or missed, the sweep time (launch to the
last feed's first request), CPU per feed (user + sys of the fetcher processes over the
feeds), and the entries accepted and counted duplicate (expected: 3 per feed, 0).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from benchlib.server import BenchRedis  # noqa: E402

from batcher.demo.feed_server import serve_feeds  # noqa: E402

ITEMS_PER_FEED = 3
SETTLE_SECONDS = 3.0  # after the sweep: time for a second fetch to show if one were coming


def write_feeds(directory: Path, n: int, interval_seconds: float) -> Path:
    """``n`` feed files and the feeds.toml that lists them with ``{base}`` urls."""
    lines = []
    for i in range(n):
        name = f"feed{i:05d}.xml"
        items = (f"<item><description>Untitled note of feed {i}: nothing but text.</description>"
                 "</item>"
                 f'<item><title>Post one of feed {i}</title><guid isPermaLink="false">1</guid>'
                 "</item>"
                 f"<item><title>Story {i}</title><link>http://site{i}.example/story</link>"
                 "<pubDate>Fri, 14 Mar 2025 09:00:00 GMT</pubDate></item>")
        (directory / name).write_text(
            f'<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel>'
            f"<title>Feed {i}</title><link>http://site{i}.example/</link>"
            f"<description>d</description>{items}</channel></rss>")
        lines.append(f'[[feeds]]\nurl = "{{base}}/{name}"\nsource = "feed{i:05d}"\n'
                     f"interval_seconds = {interval_seconds}\n")
    toml = directory / "feeds.toml"
    toml.write_text("\n".join(lines))
    return toml


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-feeds-") as tmp, BenchRedis() as server:
        directory = Path(tmp)
        toml = write_feeds(directory, args.feeds, args.interval)
        feed_server, base_url = serve_feeds(directory)
        # a roomy buffer: nothing is rejected, so accepted counts every distinct entry
        env = {**os.environ, "BATCH_REDIS_URL": server.url, "BATCH_QUEUE": "feeds",
               "BATCH_MAX_BUFFER_SIZE": "5000000", "BATCH_MAX_BUFFER_BYTES": str(8 * 1024**3),
               "BATCH_MAX_BUFFER_AGE_SEC": "86400", "BATCH_LOG_FORMAT": "json"}
        command = [sys.executable, "-m", "batcher", "fetch", "--feeds", str(toml),
                   "--base-url", base_url, "--concurrency", str(args.threads),
                   "--per-host-limit", str(args.threads), "--lease", str(args.lease),
                   "--timeout", str(args.timeout)]
        logs = [open(directory / f"fetcher{k}.log", "wb") for k in range(args.fetchers)]  # noqa: SIM115
        started = time.monotonic()
        procs = [subprocess.Popen(command, env=env, cwd=ROOT, stdout=logs[k], stderr=logs[k])
                 for k in range(args.fetchers)]
        kill_at = int(args.kill_one_at * args.feeds) if args.kill_one_at else None
        try:
            first_request, swept = _wait_for_sweep(feed_server, args.feeds, started, procs,
                                                   kill_at)
            if kill_at is not None:  # until the others have taken over what it held
                _wait_for_no_claims(server.client(), args.lease * 3)
            time.sleep(SETTLE_SECONDS)
        except SystemExit:
            for k in range(args.fetchers):
                sys.stderr.write((directory / f"fetcher{k}.log").read_text()[-2000:])
            raise
        finally:
            cpu_seconds = _stop(procs)
            feed_server.stop()
            for log in logs:
                log.close()
        paths = Counter(path for path, _ in feed_server.requests)
        client = server.client()
        stats = client.hgetall("batcher:{feeds}:stats")
        totals = client.hgetall("batcher:{feeds}:fetch:totals")
        fetched = Counter({f"/feed{i:05d}.xml": 0 for i in range(args.feeds)}) + paths
        return {
            "feeds": args.feeds, "fetchers": args.fetchers, "threads": args.threads,
            "sweep_seconds": round(swept, 2),
            "sweep_from_first_request_seconds": round(swept - first_request, 2),
            "feeds_per_second": round(args.feeds / swept, 1),
            "fetched_twice": sum(1 for i in range(args.feeds)
                                 if paths.get(f"/feed{i:05d}.xml", 0) > 1),
            "missed": sum(1 for i in range(args.feeds) if f"/feed{i:05d}.xml" not in paths),
            "requests": sum(fetched.values()),
            "cpu_ms_per_feed": round(cpu_seconds * 1000 / args.feeds, 2),
            "accepted": int(stats.get(b"accepted", 0)),
            "duplicates": int(stats.get(b"duplicates", 0)),
            "expected_entries": args.feeds * ITEMS_PER_FEED,
            "fetch_totals": {k.decode(): int(v) for k, v in totals.items()},
            "killed_one_at": args.kill_one_at, "lease_seconds": args.lease,
            "cpus": os.cpu_count(),
        }


def _wait_for_sweep(feed_server: Any, n: int, started: float,
                    procs: list[subprocess.Popen[bytes]],
                    kill_at: int | None) -> tuple[float, float]:
    first: float | None = None
    seen = 0
    while True:
        requests = feed_server.requests
        if first is None and requests:
            first = time.monotonic() - started
        seen = len({path for path, _ in requests})
        if seen >= n:
            return first or 0.0, time.monotonic() - started
        if kill_at is not None and seen >= kill_at:
            procs[0].kill()  # mid-sweep, feeds in hand: the others take them at lease end
            _reap(procs[0], block=True)
            kill_at = None
        if any(_reap(p, block=False) for p in procs if p.returncode is None):
            raise SystemExit(f"bench_feeds: a fetcher exited early ({seen} of {n} swept)")
        time.sleep(0.05)


def _wait_for_no_claims(client: Any, guard_seconds: float) -> None:
    give_up = time.monotonic() + guard_seconds
    while client.hlen("batcher:{feeds}:fetch:claims"):
        if time.monotonic() > give_up:
            raise SystemExit("bench_feeds: the killed fetcher's feeds were never taken over")
        time.sleep(0.1)


_CPU_SECONDS: dict[int, float] = {}  # pid -> user + sys, of fetchers reaped


def _reap(proc: subprocess.Popen[bytes], *, block: bool) -> bool:
    """Reap ``proc`` if it has exited (wait4, for its CPU time; never Popen.poll)."""
    pid, status, usage = os.wait4(proc.pid, 0 if block else os.WNOHANG)
    if pid == 0:
        return False
    proc.returncode = os.waitstatus_to_exitcode(status)
    _CPU_SECONDS[proc.pid] = usage.ru_utime + usage.ru_stime
    return True


def _stop(procs: list[subprocess.Popen[bytes]]) -> float:
    """SIGTERM every fetcher, reap it, and return their CPU seconds (user + sys)."""
    for proc in procs:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        if proc.returncode is None:
            _reap(proc, block=True)
    return sum(_CPU_SECONDS.get(p.pid, 0.0) for p in procs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--feeds", type=int, default=10_000)
    parser.add_argument("--fetchers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--interval", type=float, default=3600.0,
                        help="each feed's interval: longer than the run")
    parser.add_argument("--lease", type=float, default=120.0)
    parser.add_argument("--timeout", type=float, default=10.0, help="per request")
    parser.add_argument("--kill-one-at", type=float, default=None, metavar="FRACTION",
                        help="SIGKILL one fetcher when this fraction of the feeds is swept")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    result = run(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    # A killed fetcher's fetches that it never recorded are fetched again once their lease
    # lapses: those feeds, and only those, come twice, their entries as duplicates.
    twice_allowed = 2 * args.threads if args.kill_one_at else 0
    ok = (result["fetched_twice"] <= twice_allowed and result["missed"] == 0
          and result["accepted"] == result["expected_entries"]
          and result["duplicates"] <= result["fetched_twice"] * ITEMS_PER_FEED)
    print(f"bench_feeds: {'ok' if ok else 'FAILED'}: {result['feeds']} feeds, "
          f"{result['fetchers']} fetchers x {result['threads']} threads, "
          f"sweep {result['sweep_seconds']} s, {result['fetched_twice']} twice, "
          f"{result['missed']} missed, {result['cpu_ms_per_feed']} ms CPU/feed, "
          f"accepted {result['accepted']} of {result['expected_entries']}, "
          f"duplicates {result['duplicates']}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
