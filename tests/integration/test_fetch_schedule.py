"""The shared feed schedule: fetch_claim.lua / fetch_release.lua on fakeredis and the real
server, and fetchers on it against a local feed server."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator

import pytest
import redis as redis_py
from click.testing import CliRunner

from batcher.cli import cli
from batcher.config import BatchProcessingConfig
from batcher.demo.feed_server import SAMPLE_FEEDS_DIR, FeedServer, serve_feeds
from batcher.exporter import metric_families
from batcher.feeds.fetch import FeedConfig, FeedFetcher, FetchReport
from batcher.feeds.runner import ScheduledFetcher
from batcher.feeds.schedule import BackoffPolicy, FetchSchedule, host_of
from batcher.keys import QueueKeys
from batcher.monitoring.feed_status import feed_states, fetch_summary
from batcher.stats import detailed_stats
from tests.support.list_sink import ListSink

NOW = 1_700_000_000_000
FEEDS = ["atom_dev_blog.xml", "rss20_tech_daily.xml", "rss10_science_wire.rdf",
         "rss20_cloud_ops.xml", "atom_ai_research.xml"]


def _feeds(base: str = "http://h.example", names: list[str] = FEEDS) -> list[FeedConfig]:
    return [FeedConfig(url=f"{base}/{n}", source=n, interval_seconds=60) for n in names]


def test_a_due_feed_is_claimed_once_until_its_lease_lapses(redis: redis_py.Redis) -> None:
    a = FetchSchedule(redis, "q", lease_seconds=30, token="a")
    b = FetchSchedule(redis, "q", lease_seconds=60, token="b")
    a.register(_feeds())
    first = a.claim(3, now_ms=NOW)
    assert len(first.feeds) == 3 and first.next_due_ms == 0  # two still due
    assert len(b.claim(10, now_ms=NOW).feeds) == 2
    assert b.claim(10, now_ms=NOW + 29_999).feeds == []
    lapsed = b.claim(10, now_ms=NOW + 30_000)  # a died: its feeds are b's now
    assert sorted(c.feed.url for c in lapsed.feeds) == sorted(c.feed.url for c in first.feeds)
    # a's late release changes nothing; b's sets the next due time
    assert a.defer([(first.feeds[0].feed.url, 5)]) == 0
    assert b.defer([(first.feeds[0].feed.url, 60_000)]) == 1
    assert redis.zscore(a.keys.fetch_due, first.feeds[0].feed.url) > NOW + 30_000


def test_register_keeps_a_known_feeds_due_time(redis: redis_py.Redis) -> None:
    schedule = FetchSchedule(redis, "q", token="a")
    schedule.register(_feeds())
    claimed = schedule.claim(10, now_ms=NOW).feeds
    schedule.defer([(c.feed.url, 60_000) for c in claimed])
    schedule.register(_feeds())  # a restarted fetcher
    assert schedule.claim(10, now_ms=NOW).feeds == []
    assert claimed[0].feed.interval_seconds == 60 and claimed[0].validators == (None, None)


def test_prune_drops_feeds_no_longer_in_the_file(redis: redis_py.Redis) -> None:
    schedule = FetchSchedule(redis, "q", token="a")
    schedule.register(_feeds())
    kept = _feeds()[:3]
    assert sorted(schedule.prune(kept)) == sorted(f.url for f in _feeds()[3:])
    assert sorted(c.feed.url for c in schedule.claim(10).feeds) == sorted(f.url for f in kept)
    assert not redis.exists(schedule.keys.fetch_feed(_feeds()[4].url))


def test_claim_survives_script_flush_and_record_runs_in_a_pipeline(
    redis: redis_py.Redis,
) -> None:
    schedule = FetchSchedule(redis, "q", token="a")
    schedule.register(_feeds())
    redis.script_flush()
    claimed = schedule.claim(1).feeds[0]
    redis.script_flush()
    report = FetchReport(source=claimed.feed.source, url=claimed.feed.url, status="fetched",
                         http_status=200, entries_seen=4, accepted=3, duplicates=1,
                         validators=('"v1"', "Fri, 14 Mar 2025 09:00:00 GMT"))
    assert schedule.record(claimed, report, now_ms=NOW)
    again = FetchSchedule(redis, "q", token="b")
    redis.zadd(schedule.keys.fetch_due, {claimed.feed.url: 0})
    reclaimed = [c for c in again.claim(10).feeds if c.feed.url == claimed.feed.url][0]
    assert reclaimed.validators == ('"v1"', "Fri, 14 Mar 2025 09:00:00 GMT")
    [state] = feed_states(redis, schedule.keys, [claimed.feed.url], NOW)
    assert (state["fetched"], state["accepted"], state["duplicates"]) == (1, 3, 1)
    assert state["last_status"] == "fetched" and state["failures"] == 0


def test_failures_back_off_the_feed_and_429_backs_off_the_host(redis: redis_py.Redis) -> None:
    schedule = FetchSchedule(redis, "q", token="a", backoff=BackoffPolicy(host_base_seconds=30))
    schedule.register(_feeds())
    claimed = schedule.claim(1, now_ms=NOW).feeds[0]
    refused = FetchReport(source="s", url=claimed.feed.url, status="failed", http_status=429,
                          error="HTTP 429", retry_after_seconds=120)
    schedule.record(claimed, refused, now_ms=NOW)
    host = host_of(claimed.feed.url)
    assert int(redis.hget(schedule.keys.fetch_host_until, host)) == NOW + 120_000
    next_claim = schedule.claim(10, now_ms=NOW)
    assert all(c.host_until_ms == NOW + 120_000 for c in next_claim.feeds)
    summary = fetch_summary(redis, schedule.keys, now_ms=NOW)
    assert summary is not None and summary["failing"] == 1 and summary["totals"]["errors"] == 1
    assert summary["feeds_shown"][0]["url"] == claimed.feed.url  # failing first
    config = BatchProcessingConfig(queue="q")
    stats = detailed_stats(redis, config, now_ms=NOW, check_workers=False)
    assert stats["fetch"]["feeds"] == len(FEEDS) and stats["fetch"]["hosts_backed_off"] == 1
    families = {m.name: m for m in metric_families(stats)}
    failing = {s.labels["feed"]: s.value for s in families["batcher_fetch_feed_failures"].samples}
    assert failing == {**{name: 0 for name in FEEDS}, claimed.feed.source: 1}
    policy = BackoffPolicy()
    assert [policy.feed_delay_seconds(60, n) for n in (0, 1, 2, 3)] == [60, 60, 120, 240]
    assert policy.feed_delay_seconds(60, 30) == policy.feed_cap_seconds
    assert policy.host_delay_seconds(20, None) == policy.host_cap_seconds


@pytest.fixture
def feed_server() -> Iterator[tuple[FeedServer, str]]:
    server, base_url = serve_feeds(SAMPLE_FEEDS_DIR)
    yield server, base_url
    server.stop()


def _runner(client: redis_py.Redis, sink: ListSink, feeds: list[FeedConfig],
            **kwargs: object) -> tuple[ScheduledFetcher, FeedFetcher]:
    fetcher = FeedFetcher(sink, feeds, per_host_delay_seconds=0, timeout_seconds=5)
    schedule = FetchSchedule(client, "q", lease_seconds=60)
    schedule.register(feeds)
    return ScheduledFetcher(fetcher, schedule, **kwargs), fetcher  # type: ignore[arg-type]


@pytest.mark.real
def test_three_fetchers_fetch_each_feed_once_and_a_restart_asks_conditionally(
    real_redis: redis_py.Redis, feed_server: tuple[FeedServer, str],
) -> None:
    server, base_url = feed_server
    feeds = _feeds(base_url, sorted(p.name for p in SAMPLE_FEEDS_DIR.iterdir()
                                    if p.suffix in (".xml", ".rdf")))
    sink = ListSink()
    runners = [_runner(real_redis, sink, feeds, concurrency=3, per_host_limit=2)
               for _ in range(3)]
    threads = [threading.Thread(target=r.run, args=(threading.Event(),),
                                kwargs={"once": True}) for r, _ in runners]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for _, fetcher in runners:
        fetcher.close()
    assert Counter(path for path, _ in server.requests) == {f"/{f.source}": 1 for f in feeds}
    # a new process, the feeds due again: it sends the validators stored in Redis
    real_redis.zadd(QueueKeys("q").fetch_due, {f.url: 0 for f in feeds})
    runner, fetcher = _runner(real_redis, sink, feeds, concurrency=4)
    runner.run(threading.Event(), once=True)
    fetcher.close()
    later = server.requests[len(feeds):]
    assert len(later) == len(feeds)
    conditional = {path for path, headers in later if "if-none-match" in headers}
    assert conditional == {f"/{f.source}" for f in feeds} - {"/malformed_wire.xml"}
    assert sum(c.not_modified for c in fetcher.counters.values()) == len(feeds) - 1  # malformed


@pytest.mark.real
def test_a_killed_fetchers_feeds_are_fetched_by_another(
    real_redis: redis_py.Redis, feed_server: tuple[FeedServer, str],
) -> None:
    _, base_url = feed_server
    feeds = _feeds(base_url)
    dead = FetchSchedule(real_redis, "q", lease_seconds=60, token="dead")
    dead.register(feeds)
    server_now = int(real_redis.time()[0]) * 1000
    held = dead.claim(10, now_ms=server_now - 61_000)  # its lease is over already
    assert len(held.feeds) == len(feeds)
    sink = ListSink()
    runner, fetcher = _runner(real_redis, sink, feeds)
    runner.run(threading.Event(), once=True)
    fetcher.close()
    assert sum(c.fetched for c in fetcher.counters.values()) == len(feeds)
    assert dead.record(held.feeds[0], FetchReport(source="x", url=held.feeds[0].feed.url,
                                                  status="fetched"), now_ms=server_now) is False


def test_unused_schedule_has_no_summary(redis: redis_py.Redis) -> None:
    assert fetch_summary(redis, FetchSchedule(redis, "q").keys) is None


@pytest.mark.real
def test_a_429_backs_off_its_host_for_every_fetcher(
    real_redis: redis_py.Redis, feed_server: tuple[FeedServer, str],
) -> None:
    server, base_url = feed_server
    feeds = [FeedConfig(url=f"{base_url}/status/429", source="busy", interval_seconds=60),
             FeedConfig(url=f"{base_url}/atom_dev_blog.xml", source="dev", interval_seconds=60)]
    runner, fetcher = _runner(real_redis, ListSink(), feeds[:1])
    runner.run(threading.Event(), once=True)
    fetcher.close()
    keys = QueueKeys("q")
    until = int(real_redis.hget(keys.fetch_host_until, host_of(base_url + "/")))
    assert until >= int(real_redis.time()[0]) * 1000 + 25_000  # 30 s base > Retry-After 7
    # another fetcher, another feed of that host: not requested, due again at the host's time
    runner, fetcher = _runner(real_redis, ListSink(), feeds[1:])
    runner.run(threading.Event(), once=True)
    fetcher.close()
    assert [path for path, _ in server.requests] == ["/status/429"]
    assert real_redis.zscore(keys.fetch_due, feeds[1].url) >= until - 1000


@pytest.mark.real
def test_keys_and_fetch_status_commands_with_many_feeds(
    real_redis: redis_py.Redis, redis_url: str,
) -> None:
    FetchSchedule(real_redis, "q").register(
        [FeedConfig(url=f"http://h.example/{i}", source=f"s{i}") for i in range(30)])
    keys = CliRunner().invoke(cli, ["keys", "--queue", "q", "--redis-url", redis_url],
                              catch_exceptions=False)
    assert keys.exit_code == 0
    assert "... and 10 more fetch:feed:* keys (30 in all" in keys.stdout
    status = CliRunner().invoke(
        cli, ["fetch-status", "--limit", "5", "--queue", "q", "--redis-url", redis_url],
        catch_exceptions=False)
    assert status.exit_code == 0
    assert "30 feeds scheduled on queue 'q', 5 shown" in status.stdout
    rows = status.stdout.splitlines()[2:]
    assert len(rows) == 5 and all(" never " in r and " now " in r for r in rows)
