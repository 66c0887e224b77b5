"""``ScheduledFetcher``: one fetcher process on the shared Redis schedule, many feeds at once.

It claims due feeds (``FetchSchedule.claim``), fetches them on a bounded thread pool with
at most ``per_host_limit`` requests in flight per host, and records each outcome, which
releases the feed with its next due time. However many processes run, each feed is fetched
once per interval; a killed process's feeds are claimed again when their lease lapses.
"""

from __future__ import annotations

import functools
import threading
import time
from collections import Counter, deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

import redis
import structlog

from batcher.backoff import Backoff
from batcher.feeds.fetch import FeedCounters, FeedFetcher
from batcher.feeds.schedule import Claim, ClaimedFeed, FetchSchedule, host_of

log = structlog.stdlib.get_logger(__name__)

UNKNOWN_FEED_DELAY_MS = 3_600_000  # a scheduled url with no stored config: look again later
MAX_REDIS_WAIT_SECONDS = 30.0


class ScheduledFetcher:
    """Fetch what the shared schedule says is due, until stopped (module docstring)."""

    def __init__(self, fetcher: FeedFetcher, schedule: FetchSchedule, *, concurrency: int = 8,
                 per_host_limit: int = 2, idle_wait_seconds: float = 1.0) -> None:
        if concurrency < 1 or per_host_limit < 1:
            raise ValueError("concurrency and per_host_limit must be >= 1")
        self.fetcher = fetcher
        self.schedule = schedule
        self.concurrency = concurrency
        self.per_host_limit = per_host_limit
        self.idle_wait_seconds = idle_wait_seconds
        self._offset_ms = 0.0  # Redis clock - local clock, from the last claim
        self._waiting: deque[ClaimedFeed] = deque()
        self._running: dict[Future[None], str] = {}
        self._host_active: Counter[str] = Counter()
        self.lost_leases = 0

    def now_ms(self) -> int:
        """Redis's clock, as of the last claim, advanced by the local one."""
        return int(time.time() * 1000 + self._offset_ms)

    def run(self, stop: threading.Event, *, once: bool = False) -> dict[str, FeedCounters]:
        """Until ``stop`` is set; with ``once``, until no feed is due and none is in hand."""
        # a full, failing-over, restarting or lost Redis: wait it out (batcher.backoff)
        backoff = Backoff("fetcher", first=1.0, cap=MAX_REDIS_WAIT_SECONDS)
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="fetch") as pool:
            while not stop.is_set():
                # Keep up to one pool's worth of claimed feeds waiting, and claim in batches
                # once half of it is gone: a claim per finished fetch would cost two round
                # trips a feed.
                room = 2 * self.concurrency - len(self._running) - len(self._waiting)
                claim: Claim | None = None
                if room >= self.concurrency // 2 + 1 or not self._running:
                    claim = backoff.until_done(stop, functools.partial(self._claim, room))
                    if claim is None:  # stopped while Redis was away
                        break
                self._start_waiting(pool)
                idle = claim is not None and not claim.feeds
                if once and idle and not self._running and not self._waiting:
                    break
                self._wait(claim, idle, stop)
            self._give_back_waiting()
            wait(list(self._running))
        return self.fetcher.counters

    def _claim(self, room: int) -> Claim:
        started = time.time() * 1000
        claim = self.schedule.claim(room)
        self._offset_ms = claim.now_ms - (started + time.time() * 1000) / 2
        if claim.unknown:
            log.warning("fetch.unknown_feeds", urls=claim.unknown[:5], count=len(claim.unknown))
            self.schedule.defer([(u, UNKNOWN_FEED_DELAY_MS) for u in claim.unknown])
        deferred = [(c.feed.url, c.host_until_ms - claim.now_ms)
                    for c in claim.feeds if c.host_until_ms > claim.now_ms]
        if deferred:  # the host is backed off: no request until its time is up
            self.schedule.defer(deferred)
        self._waiting.extend(c for c in claim.feeds if c.host_until_ms <= claim.now_ms)
        return claim

    def _start_waiting(self, pool: ThreadPoolExecutor) -> None:
        held: deque[ClaimedFeed] = deque()
        while self._waiting:
            claimed = self._waiting.popleft()
            host = host_of(claimed.feed.url)
            if self._host_active[host] >= self.per_host_limit:
                held.append(claimed)
                continue
            self._host_active[host] += 1
            self._running[pool.submit(self._fetch, claimed)] = host
        self._waiting = held

    def _wait(self, claim: Claim | None, idle: bool, stop: threading.Event) -> None:
        timeout = self.idle_wait_seconds
        if idle and claim is not None and claim.next_due_ms >= 0:
            timeout = min(timeout, max(0.0, (claim.next_due_ms - claim.now_ms) / 1000))
        if not idle and claim is not None and len(self._waiting) < self.concurrency // 2:
            timeout = 0.0  # feeds were due and the backlog is short: claim again at once
        if not self._running:
            if timeout > 0:
                stop.wait(timeout)
            return
        done, _ = wait(list(self._running), timeout=timeout, return_when=FIRST_COMPLETED)
        for future in done:
            host = self._running.pop(future)
            self._host_active[host] -= 1
            future.result()  # _fetch never raises; a bug should not pass silently

    def _fetch(self, claimed: ClaimedFeed) -> None:
        report = self.fetcher.fetch_guarded(claimed.feed, claimed.validators)
        try:
            if not self.schedule.record(claimed, report, now_ms=self.now_ms()):
                self.lost_leases += 1
                log.warning("fetch.lease_lost", feed=claimed.feed.source, url=claimed.feed.url)
        except redis.RedisError as exc:
            # the lease lapses and another fetch comes; the producer skips what it has
            log.warning("fetch.record_failed", feed=claimed.feed.source, error=str(exc))

    def _give_back_waiting(self) -> None:
        if self._waiting:
            try:
                self.schedule.defer([(c.feed.url, 0) for c in self._waiting])
            except redis.RedisError as exc:
                log.warning("fetch.release_failed", count=len(self._waiting), error=str(exc))
            self._waiting.clear()
