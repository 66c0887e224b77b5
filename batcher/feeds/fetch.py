"""RSS/Atom/JSON Feed fetcher: a producer that turns feed entries into batcher entries.

Feeds are fetched with httpx (timeouts, redirects, gzip, conditional GET, a
per-host delay) and parsed by ``feeds.parse`` (feedparser for RSS 0.9x, 1.0, 2.0
and Atom, with chardet for undeclared legacy encodings; JSON Feed 1.x). Entry ids
and payloads come from ``feeds.entries``: ids are stable, so any number of fetcher
processes enqueue each entry once, and a fault in one entry degrades that entry only.
"""

from __future__ import annotations

import threading
import time
import tomllib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

import httpx
import structlog

from batcher import tracing
from batcher.backoff import Backoff
from batcher.errors import BatcherError, BatcherUnavailableError, ConfigError, RedisFullError
from batcher.feeds.entries import EntryFaults, entry_id, merge_faults, payload_of
from batcher.feeds.parse import parse_feed
from batcher.models import PRIORITIES, EnqueueResult
from batcher.producer import BATCH_KEY_RE

log = structlog.stdlib.get_logger(__name__)

CHUNK_SIZE = 500  # the producer's queue_many limit per script call
USER_AGENT = "redis-batcher-fetcher/0.1 (+https://github.com/redis-batcher)"
_FEED_KEYS = frozenset({"url", "source", "priority", "interval_seconds", "batch_key"})


class EntrySink(Protocol):
    """Where fetched entries go; ``batcher.producer.BatchStateManager`` is one."""

    def queue_many(self, entries: list[dict[str, object]]) -> EnqueueResult: ...


@dataclass(frozen=True, slots=True)
class FeedConfig:
    """One feed: where it is, the source name its entries carry, their priority, how often."""

    url: str
    source: str
    priority: int = 0
    interval_seconds: float = 300.0
    batch_key: str | None = None  # its entries never share a batch with another key's


def load_feeds(path: str | Path, *, base_url: str | None = None) -> list[FeedConfig]:
    """Read ``[[feeds]]`` tables from a TOML file.

    ``{base}`` in a url is replaced by ``base_url`` (the demo's local server).
    Raises ConfigError naming the file and the feed when anything is wrong.
    """
    path = Path(path)
    try:
        with path.open("rb") as fh:
            document = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read feeds file: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    tables = document.get("feeds")
    if not isinstance(tables, list) or not tables:
        raise ConfigError(f"{path}: expected one or more [[feeds]] tables")
    feeds = [_feed_from_table(path, i, table, base_url) for i, table in enumerate(tables)]
    for attr in ("source", "url"):
        counts = Counter(getattr(f, attr) for f in feeds)  # 10,000 feeds: no list.count
        repeated = sorted(v for v, n in counts.items() if n > 1)
        if repeated:
            raise ConfigError(f"{path}: feeds repeat {attr} {repeated[0]!r}")
    return feeds


def _feed_from_table(path: Path, index: int, table: object, base_url: str | None) -> FeedConfig:
    where = f"{path}: feed #{index + 1}"
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table")
    if isinstance(table.get("source"), str):
        where += f" ({table['source']!r})"
    unknown = sorted(set(table) - _FEED_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (allowed: {sorted(_FEED_KEYS)})")
    url, source = table.get("url"), table.get("source")
    priority, interval = table.get("priority", 0), table.get("interval_seconds", 300)
    if not isinstance(source, str) or not 1 <= len(source) <= 64 or not source.isprintable():
        raise ConfigError(f"{where}: source must be 1-64 printable characters, got {source!r}")
    if not isinstance(url, str):
        raise ConfigError(f"{where}: url must be a string, got {url!r}")
    if "{base}" in url:
        if base_url is None:
            raise ConfigError(f"{where}: url {url!r} uses {{base}} but no base url was given")
        url = url.replace("{base}", base_url.rstrip("/"))
    if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).netloc:
        raise ConfigError(f"{where}: url must be an http(s) URL, got {url!r}")
    if isinstance(priority, bool) or priority not in PRIORITIES:
        raise ConfigError(f"{where}: priority must be 0, 1 or 2, got {priority!r}")
    if isinstance(interval, bool) or not isinstance(interval, int | float) or interval <= 0:
        raise ConfigError(f"{where}: interval_seconds must be a number > 0, got {interval!r}")
    batch_key = table.get("batch_key")
    if batch_key is not None and (not isinstance(batch_key, str)
                                  or not BATCH_KEY_RE.match(batch_key)):
        raise ConfigError(f"{where}: batch_key must match [A-Za-z0-9_.-]{{1,64}}, "
                          f"got {batch_key!r}")
    return FeedConfig(url=url, source=source, priority=priority, interval_seconds=float(interval),
                      batch_key=batch_key)


@dataclass(slots=True)
class FeedCounters:
    """Cumulative figures for one feed."""

    fetched: int = 0
    not_modified: int = 0
    entries_seen: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    faults: int = 0
    errors: int = 0


FetchStatus = Literal["fetched", "not_modified", "failed"]
Validators = tuple[str | None, str | None]  # (ETag, Last-Modified)
COUNTED = ("entries_seen", "accepted", "duplicates", "rejected", "faults")


@dataclass(slots=True)
class FetchReport:
    """What one fetch of one feed did.

    ``validators`` are what the next request should send (both None: unconditional);
    ``retry_after_seconds`` is the server's Retry-After on a 429 or 503.
    """

    source: str
    url: str
    status: FetchStatus
    http_status: int | None = None
    entries_seen: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    faults: int = 0
    fault_kinds: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    elapsed_ms: int = 0
    rejected_ids: list[str] = field(default_factory=list)
    validators: Validators = (None, None)
    retry_after_seconds: float | None = None


class _FeedFailed(Exception):
    """Internal: a fetch failed in a way that is logged and counted, never raised."""


def retry_after_seconds(value: str | None) -> float | None:
    """A Retry-After header (seconds or an HTTP date) as seconds from now, or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - time.time())


class FeedFetcher:
    """Fetches feeds and hands their entries to a sink in chunks of at most 500.

    A malformed feed, an HTTP error, a timeout or a connection error is logged
    (``feed.failed``) and counted; ``fetch_once`` and ``run`` never raise for them.
    A fault inside an entry degrades that entry (``feed.entry_faults``, logged once
    per feed). ``fetch_once`` is safe to call from several threads.
    """

    def __init__(
        self,
        sink: EntrySink,
        feeds: Sequence[FeedConfig],
        *,
        client: httpx.Client | None = None,
        per_host_delay_seconds: float = 1.0,
        timeout_seconds: float = 10.0,
    ) -> None:
        self.sink = sink
        self.feeds = list(feeds)
        self.per_host_delay_seconds = per_host_delay_seconds
        self.timeout_seconds = timeout_seconds
        self._own_client = client is None
        self._client = client or httpx.Client(
            timeout=timeout_seconds, follow_redirects=True, headers={"User-Agent": USER_AGENT}
        )
        self.counters: dict[str, FeedCounters] = {f.source: FeedCounters() for f in self.feeds}
        # url -> validators of its last complete fetch, when no caller keeps them (run()).
        self._validators: dict[str, Validators] = {}
        self._next_request: dict[str, float] = {}  # host -> monotonic time of its next slot
        self._faults_logged: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        # a Redis that refused the last enqueue (full, failing over, down): the feed is
        # fetched again after a back-off, not its interval, and its entries offered again
        self._backoff = Backoff("fetcher")
        self._redis_fault: BaseException | None = None

    def close(self) -> None:
        """Close the HTTP client if this fetcher created it."""
        if self._own_client:
            self._client.close()

    def __enter__(self) -> FeedFetcher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def fetch_once(self, feed: FeedConfig, validators: Validators | None = None) -> FetchReport:
        """Fetch, parse and enqueue one feed; failures are logged and counted, not raised.

        ``validators`` are sent as If-None-Match / If-Modified-Since; without them the
        fetcher uses (and keeps) its own, in memory.
        """
        remembered = validators is None
        sent = self._validators.get(feed.url, (None, None)) if validators is None else validators
        started = time.monotonic()
        report = FetchReport(source=feed.source, url=feed.url, status="failed", validators=sent)
        try:
            # the entries found carry this span: their batch links back to it (the host
            # only: a feed URL's query may hold a token)
            host = urlsplit(feed.url).hostname or ""
            with tracing.producer_span(f"fetch {feed.source}", {"server.address": host}):
                self._fetch_into(feed, report, sent)
        except _FeedFailed as exc:
            report.error = str(exc)
        report.elapsed_ms = int((time.monotonic() - started) * 1000)
        with self._lock:
            if remembered:
                self._validators[feed.url] = report.validators
            self._count(self.counters.setdefault(feed.source, FeedCounters()), report)
            first_faults = report.faults > 0 and feed.url not in self._faults_logged
            if first_faults:
                self._faults_logged.add(feed.url)
        self._log(feed, report, log_faults=first_faults)
        return report

    def run(
        self, stop_event: threading.Event, max_rounds: int | None = None
    ) -> dict[str, FeedCounters]:
        """Fetch every feed on its interval until ``stop_event`` is set (one process's own
        schedule, in memory; ``feeds.runner.ScheduledFetcher`` shares one in Redis).

        With ``max_rounds``, return once every feed has been fetched that many times.
        Returns the per-feed counters.
        """
        self._stop = stop_event
        next_due = {i: time.monotonic() for i in range(len(self.feeds))}
        rounds = {i: 0 for i in range(len(self.feeds))}
        while not stop_event.is_set() and next_due:
            now = time.monotonic()
            for i in sorted(next_due, key=next_due.__getitem__):
                if stop_event.is_set() or next_due[i] > now:
                    break
                feed = self.feeds[i]
                self.fetch_guarded(feed)
                rounds[i] += 1
                if max_rounds is not None and rounds[i] >= max_rounds:
                    del next_due[i]
                else:
                    retry = self._redis_retry()
                    next_due[i] = time.monotonic() + min(feed.interval_seconds,
                                                         retry or feed.interval_seconds)
            if next_due:
                stop_event.wait(max(0.0, min(next_due.values()) - time.monotonic()))
        return self.counters

    def _redis_retry(self) -> float | None:
        fault, self._redis_fault = self._redis_fault, None
        if fault is None:
            self._backoff.succeeded()
            return None
        return self._backoff.failed(fault, wait=False)

    def fetch_guarded(
        self, feed: FeedConfig, validators: Validators | None = None
    ) -> FetchReport:
        """``fetch_once``, and a bug in one feed's handling (an entry shape feedparser never
        produced before) is logged with its traceback as a failed fetch, never raised."""
        try:
            return self.fetch_once(feed, validators)
        except Exception as exc:
            with self._lock:
                self.counters.setdefault(feed.source, FeedCounters()).errors += 1
            log.exception("feed.crashed", feed=feed.source, url=feed.url)
            return FetchReport(source=feed.source, url=feed.url, status="failed",
                               error=f"crashed: {type(exc).__name__}: {exc}",
                               validators=validators or (None, None))

    def _fetch_into(self, feed: FeedConfig, report: FetchReport, sent: Validators) -> None:
        response = self._get(feed.url, sent)
        report.http_status = response.status_code
        if response.status_code == 304:
            report.status = "not_modified"
            report.validators = (response.headers.get("etag") or sent[0], sent[1])
            return
        if not response.is_success:
            if response.status_code in (429, 503):
                report.retry_after_seconds = retry_after_seconds(
                    response.headers.get("retry-after"))
            raise _FeedFailed(f"HTTP {response.status_code} {response.reason_phrase}".strip())
        parsed = parse_feed(
            response.content, {k.lower(): v for k, v in response.headers.items()}
        )
        if parsed.error is not None:
            raise _FeedFailed(parsed.error)
        envelopes = self._envelopes(parsed.entries, feed, report)
        report.entries_seen = len(parsed.entries)
        report.duplicates = len(parsed.entries) - len(envelopes)  # repeated within the feed
        result = self._enqueue(envelopes)
        report.accepted = result.accepted
        report.duplicates += result.duplicates
        report.rejected = result.rejected
        report.rejected_ids = result.rejected_ids
        report.status = "fetched"
        # Rejected entries (buffer full) must be offered again, so only a complete
        # hand-off lets the next fetch be conditional.
        report.validators = (None, None)
        if not result.rejected_ids:
            report.validators = (response.headers.get("etag"),
                                 response.headers.get("last-modified"))

    def _get(self, url: str, validators: Validators) -> httpx.Response:
        headers: dict[str, str] = {}
        etag, modified = validators
        if etag:
            headers["If-None-Match"] = etag
        if modified:
            headers["If-Modified-Since"] = modified
        self._wait_for_host(url)
        try:
            return self._client.get(
                url, headers=headers, timeout=self.timeout_seconds, follow_redirects=True
            )
        except httpx.TimeoutException as exc:
            raise _FeedFailed(
                f"timeout after {self.timeout_seconds}s ({type(exc).__name__})"
            ) from exc
        except httpx.HTTPError as exc:
            raise _FeedFailed(f"{type(exc).__name__}: {exc}") from exc

    def _wait_for_host(self, url: str) -> None:
        if self.per_host_delay_seconds <= 0:
            return
        host = urlsplit(url).netloc.lower()
        with self._lock:  # reserve the host's next slot, so threads space out too
            now = time.monotonic()
            slot = max(now, self._next_request.get(host, now))
            self._next_request[host] = slot + self.per_host_delay_seconds
        if slot > now:
            self._stop.wait(slot - now)

    @staticmethod
    def _envelopes(
        entries: Sequence[Any], feed: FeedConfig, report: FetchReport
    ) -> list[dict[str, object]]:
        envelopes: dict[str, dict[str, object]] = {}
        for parsed_entry in entries:
            faults = EntryFaults()
            eid = entry_id(parsed_entry, feed.url)
            payload = payload_of(parsed_entry, feed.source, faults, base_url=feed.url)
            if faults.kinds:
                report.faults += sum(faults.kinds.values())
                merge_faults(report.fault_kinds, faults.kinds.items())
            item: dict[str, object] = {"id": eid, "source": feed.source,
                                       "priority": feed.priority, "payload": payload}
            if feed.batch_key is not None:
                item["batch_key"] = feed.batch_key
            envelopes.setdefault(eid, item)
        return list(envelopes.values())

    def _enqueue(self, envelopes: list[dict[str, object]]) -> EnqueueResult:
        total = EnqueueResult()
        for start in range(0, len(envelopes), CHUNK_SIZE):
            try:
                total = total + self.sink.queue_many(envelopes[start : start + CHUNK_SIZE])
            except BatcherError as exc:
                if isinstance(exc, BatcherUnavailableError | RedisFullError):
                    self._redis_fault = exc
                # Earlier chunks are in; the validators are not stored, so the next
                # fetch offers everything again and the producer skips what it has.
                raise _FeedFailed(
                    f"enqueue failed after {total.accepted} accepted: {type(exc).__name__}: {exc}"
                ) from exc
        return total

    @staticmethod
    def _count(counters: FeedCounters, report: FetchReport) -> None:
        if report.status == "failed":
            counters.errors += 1
        elif report.status == "not_modified":
            counters.not_modified += 1
        else:
            counters.fetched += 1
            for name in COUNTED:
                setattr(counters, name, getattr(counters, name) + getattr(report, name))

    @staticmethod
    def _log(feed: FeedConfig, report: FetchReport, *, log_faults: bool) -> None:
        common = {"feed": feed.source, "url": feed.url, "http_status": report.http_status}
        common["elapsed_ms"] = report.elapsed_ms
        if log_faults:
            log.warning("feed.entry_faults", feed=feed.source, url=feed.url,
                        faults=report.faults, kinds=report.fault_kinds, logged="once per feed")
        if report.status == "failed":
            log.warning("feed.failed", error=report.error, **common)
        else:
            counts = {name: getattr(report, name) for name in COUNTED}
            log.info(
                "feed.fetched", not_modified=report.status == "not_modified", **counts, **common
            )
