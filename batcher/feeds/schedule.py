"""The feed schedule every ``batcher fetch`` process shares, in Redis.

- ``fetch:due`` ZSET: feed url -> ms it is due. ``fetch_claim.lua`` hands due feeds to
  one fetcher and moves each to its lease deadline, so a killed fetcher's feeds come due
  again when the lease lapses; ``fetch_release.lua`` sets the next due time, only for
  the fetcher that still holds the claim (``fetch:claims`` HASH url -> token).
- ``fetch:feed:<sha>`` HASH per feed: its config (url, source, priority, interval), the
  ETag / Last-Modified of its last complete fetch (so any fetcher, restarted or not,
  sends a conditional GET), its counters and last outcome.
- ``fetch:totals`` HASH: the same counters summed over feeds (for stats and the exporter).
- ``fetch:failing`` ZSET: url -> consecutive failures, for feeds failing now.
- ``fetch:host:until`` / ``fetch:host:failures`` HASHes: per-host back-off after 429/503
  (Retry-After honoured) or repeated failures; exponential, capped.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit

import redis

from batcher.feeds.fetch import COUNTED, FeedConfig, FetchReport, Validators
from batcher.keys import QueueKeys
from batcher.monitoring.feed_status import COUNTER_FIELDS
from batcher.scripts import lua_source

CLAIM_LIMIT = 1000  # fetch_claim.lua unpacks at most this many urls
HOST_FAILURES_BEFORE_BACKOFF = 3  # connection errors and 5xx; 429/503 back off at once
assert set(COUNTER_FIELDS) == {"fetched", "not_modified", *COUNTED, "errors"}


def host_of(url: str) -> str:
    return urlsplit(url).netloc.lower()


def _s(value: bytes | None) -> str | None:
    return None if value is None else value.decode()


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    """Exponential back-off, capped: feeds that fail, hosts that refuse or keep failing."""

    host_base_seconds: float = 30.0
    host_cap_seconds: float = 3600.0
    feed_cap_seconds: float = 6 * 3600.0

    def feed_delay_seconds(self, interval_seconds: float, failures: int) -> float:
        """A failing feed is retried after its interval, doubled per failure in a row."""
        if failures <= 0:
            return interval_seconds
        cap = max(interval_seconds, self.feed_cap_seconds)
        return float(min(interval_seconds * 2 ** min(failures - 1, 20), cap))

    def host_delay_seconds(self, failures: int, retry_after: float | None) -> float:
        exp = self.host_base_seconds * 2 ** min(max(failures - 1, 0), 20)
        return float(min(max(exp, retry_after or 0.0), max(self.host_cap_seconds,
                                                           retry_after or 0.0)))


@dataclass(frozen=True, slots=True)
class ClaimedFeed:
    """A feed this fetcher holds, with what it needs to fetch it."""

    feed: FeedConfig
    validators: Validators
    failures: int  # consecutive, before this fetch
    host_until_ms: int  # the feed's host is backed off until then (0: not)


@dataclass(frozen=True, slots=True)
class Claim:
    now_ms: int
    next_due_ms: int  # earliest due time of the feeds not claimed; -1 when none
    feeds: list[ClaimedFeed]
    unknown: list[str]  # claimed urls with no stored config (released at once)


class FetchSchedule:
    """One queue's shared feed schedule (module docstring). Thread-safe, like its client."""

    def __init__(self, client: redis.Redis, queue: str, *, lease_seconds: float = 60.0,
                 backoff: BackoffPolicy | None = None, token: str | None = None) -> None:
        self.client = client
        self.keys = QueueKeys(queue)
        self.lease_ms = int(lease_seconds * 1000)
        self.backoff = backoff or BackoffPolicy()
        self.token = token or uuid.uuid4().hex
        self._claim = client.register_script(lua_source("fetch_claim"))
        self._release = client.register_script(lua_source("fetch_release"))

    def register(self, feeds: Sequence[FeedConfig]) -> None:
        """Store each feed's config; a feed new to the schedule is due at once, a known one
        keeps its due time (a restarted fetcher does not refetch everything)."""
        k = self.keys
        for start in range(0, len(feeds), 1000):
            pipe = self.client.pipeline(transaction=False)
            for feed in feeds[start:start + 1000]:
                pipe.hset(k.fetch_feed(feed.url), mapping={
                    "url": feed.url, "source": feed.source, "priority": feed.priority,
                    "interval_seconds": repr(feed.interval_seconds)})
                pipe.zadd(k.fetch_due, {feed.url: 0}, nx=True)
            pipe.execute()

    def prune(self, keep: Sequence[FeedConfig]) -> list[str]:
        """Drop every scheduled feed whose url is not in ``keep`` (its state, counters
        included); return the urls dropped. Totals keep what those feeds did."""
        k = self.keys
        wanted = {feed.url for feed in keep}
        scheduled = [u.decode() for u in cast(list[bytes], self.client.zrange(k.fetch_due, 0, -1))]
        dropped = [u for u in scheduled if u not in wanted]
        for start in range(0, len(dropped), 1000):
            chunk = dropped[start:start + 1000]
            pipe = self.client.pipeline(transaction=False)
            pipe.zrem(k.fetch_due, *chunk)
            pipe.zrem(k.fetch_failing, *chunk)
            pipe.hdel(k.fetch_claims, *chunk)
            pipe.delete(*(k.fetch_feed(u) for u in chunk))
            pipe.execute()
        return dropped

    def claim(self, limit: int, now_ms: int | None = None) -> Claim:
        """Claim up to ``limit`` due feeds (one script call, one pipelined read)."""
        k = self.keys
        reply = self._claim(
            keys=[k.fetch_due, k.fetch_claims],
            args=["" if now_ms is None else str(now_ms), str(self.lease_ms),
                  str(max(0, min(limit, CLAIM_LIMIT))), self.token],
            client=self.client)
        now, next_due = int(reply[0]), int(reply[1])
        urls = [u.decode() for u in reply[2:]]
        if not urls:
            return Claim(now, next_due, [], [])
        hosts = sorted({host_of(u) for u in urls})
        pipe = self.client.pipeline(transaction=False)
        for url in urls:
            pipe.hmget(k.fetch_feed(url), "source", "priority", "interval_seconds", "etag",
                       "last_modified", "failures")
        pipe.hmget(k.fetch_host_until, hosts)
        *rows, until = pipe.execute()
        host_until = {h: int(v or 0) for h, v in zip(hosts, until, strict=True)}
        feeds, unknown = [], []
        for url, row in zip(urls, rows, strict=True):
            source, priority, interval, etag, modified, failures = row
            if source is None or interval is None:
                unknown.append(url)
                continue
            feed = FeedConfig(url=url, source=source.decode(), priority=int(priority or 0),
                              interval_seconds=float(interval))
            feeds.append(ClaimedFeed(feed, (_s(etag), _s(modified)), int(failures or 0),
                                     host_until[host_of(url)]))
        return Claim(now, next_due, feeds, unknown)

    def defer(self, urls_delays_ms: Sequence[tuple[str, int]]) -> int:
        """Give feeds back unfetched, each due again after its delay."""
        if not urls_delays_ms:
            return 0
        args: list[str] = ["", self.token]
        for url, delay_ms in urls_delays_ms:
            args += [url, str(max(0, int(delay_ms)))]
        return int(self._release(keys=[self.keys.fetch_due, self.keys.fetch_claims],
                                 args=args, client=self.client))

    def record(self, claimed: ClaimedFeed, report: FetchReport, *, now_ms: int) -> bool:
        """Store the outcome of one fetch and release the feed with its next due time.

        One pipelined round trip. False when the lease had lapsed and another fetcher
        holds the feed now (its counters are still recorded: this fetch happened).
        """
        k, feed = self.keys, claimed.feed
        failed = report.status == "failed"
        failures = claimed.failures + 1 if failed else 0
        delay_s = self.backoff.feed_delay_seconds(feed.interval_seconds, failures)
        counts = self._counts(report)
        etag, modified = report.validators
        state: dict[Any, Any] = {
            "failures": failures, "last_status": report.status, "last_ms": now_ms,
            "last_http_status": report.http_status or 0, "last_error": (report.error or "")[:500],
            "next_due_ms": now_ms + int(delay_s * 1000), "etag": etag or "",
            "last_modified": modified or ""}
        pipe = self.client.pipeline(transaction=False)
        feed_key = k.fetch_feed(feed.url)
        for name, n in counts.items():
            pipe.hincrby(feed_key, name, n)
            pipe.hincrby(k.fetch_totals, name, n)
        pipe.hset(feed_key, mapping=state)
        if failed:
            pipe.zadd(k.fetch_failing, {feed.url: failures})
        else:
            pipe.zrem(k.fetch_failing, feed.url)
        self._host_outcome(pipe, feed.url, report, now_ms)
        # EVALSHA itself: a Script object in a pipeline costs a SCRIPT EXISTS round trip
        release = [k.fetch_due, k.fetch_claims, "", self.token, feed.url,
                   str(int(delay_s * 1000))]
        pipe.evalsha(self._release.sha, 2, *release)
        replies = pipe.execute(raise_on_error=False)
        if isinstance(replies[-1], redis.exceptions.NoScriptError):
            # the server lost the script (restart, SCRIPT FLUSH): the writes before it are
            # in; release alone, the Script loads it
            return int(self._release(keys=release[:2], args=release[2:])) == 1
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return int(replies[-1]) == 1

    @staticmethod
    def _counts(report: FetchReport) -> dict[str, int]:
        if report.status == "failed":
            return {"errors": 1}
        if report.status == "not_modified":
            return {"not_modified": 1}
        counts = {"fetched": 1}
        counts.update({name: getattr(report, name) for name in COUNTED if getattr(report, name)})
        return counts

    def _host_outcome(self, pipe: redis.client.Pipeline, url: str, report: FetchReport,
                      now_ms: int) -> None:
        host, k = host_of(url), self.keys
        status = report.http_status
        refused = status in (429, 503)
        broken = report.status == "failed" and (status is None or status >= 500)
        if not refused and not broken:
            if report.http_status is not None:  # the host answered: its slate is clean
                pipe.hdel(k.fetch_host_failures, host)
                pipe.hdel(k.fetch_host_until, host)
            return
        failures = int(self.client.hincrby(k.fetch_host_failures, host, 1))
        if refused or failures >= HOST_FAILURES_BEFORE_BACKOFF:
            steps = failures if refused else failures - HOST_FAILURES_BEFORE_BACKOFF + 1
            delay = self.backoff.host_delay_seconds(steps, report.retry_after_seconds)
            pipe.hset(k.fetch_host_until, host, now_ms + int(delay * 1000))
