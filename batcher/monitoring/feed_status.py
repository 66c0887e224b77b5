"""Per-feed state of the shared fetch schedule (``batcher.feeds.schedule``), read back for
``batcher fetch-status``, ``batcher stats`` and the exporter (which show at most
``FEEDS_SHOWN`` feeds: failing ones first, then the soonest due).

Here in the core, not in ``batcher.feeds``: ``batcher stats`` and the exporter read it
without the ``[feeds]`` extra, and the core never imports an application package."""

from __future__ import annotations

from typing import Any, cast

import redis

from batcher.keys import QueueKeys

FEEDS_SHOWN = 50
# per feed and in fetch:totals; fetch.py's FeedCounters has the same fields
COUNTER_FIELDS = ("fetched", "not_modified", "entries_seen", "accepted", "duplicates",
                  "rejected", "faults", "errors")
_TEXT = ("url", "source", "last_status", "last_error")
_INTS = ("failures", "last_http_status", "last_ms", "next_due_ms", *COUNTER_FIELDS)


def _server_ms(client: redis.Redis) -> int:
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000


def _feed(raw: dict[bytes, bytes], due_ms: float | None, claimed: bool,
          now_ms: int) -> dict[str, Any]:
    feed: dict[str, Any] = {k: raw.get(k.encode(), b"").decode() for k in _TEXT}
    feed.update({k: int(raw.get(k.encode(), b"0") or 0) for k in _INTS})
    feed["last_error"] = feed["last_error"] or None
    feed["last_status"] = feed["last_status"] or "never"
    feed["fetching"] = claimed
    feed["next_due_in_s"] = None if due_ms is None else round((due_ms - now_ms) / 1000, 1)
    return feed


def feed_states(client: redis.Redis, keys: QueueKeys, urls: list[str],
                now_ms: int | None = None) -> list[dict[str, Any]]:
    """The state of each of ``urls`` (pipelined, one round trip per 1000)."""
    now = _server_ms(client) if now_ms is None else now_ms
    feeds: list[dict[str, Any]] = []
    for start in range(0, len(urls), 1000):
        chunk = urls[start:start + 1000]
        pipe = client.pipeline(transaction=False)
        for url in chunk:
            pipe.hgetall(keys.fetch_feed(url))
        pipe.zmscore(keys.fetch_due, chunk)
        pipe.hmget(keys.fetch_claims, chunk)
        *rows, scores, claims = pipe.execute()
        for row, score, claim in zip(rows, scores, claims, strict=True):
            feeds.append(_feed(row, score, claim is not None, now))
    return feeds


def all_urls(client: redis.Redis, keys: QueueKeys) -> list[str]:
    """Every scheduled feed, failing ones first (most failures first), then by due time."""
    failing = [u.decode() for u in cast(list[bytes], client.zrevrange(keys.fetch_failing, 0, -1))]
    seen = set(failing)
    rest = [u.decode() for u in cast(list[bytes], client.zrange(keys.fetch_due, 0, -1))]
    return failing + [u for u in rest if u not in seen]


def fetch_summary(client: redis.Redis, keys: QueueKeys, *, feeds_shown: int = FEEDS_SHOWN,
                  now_ms: int | None = None) -> dict[str, Any] | None:
    """Totals over every feed and the state of at most ``feeds_shown`` of them; None when
    no fetcher has used this queue's schedule."""
    now = _server_ms(client) if now_ms is None else now_ms
    pipe = client.pipeline(transaction=False)
    pipe.zcard(keys.fetch_due)
    pipe.zcount(keys.fetch_due, "-inf", now)
    pipe.hlen(keys.fetch_claims)
    pipe.zcard(keys.fetch_failing)
    pipe.hvals(keys.fetch_host_until)
    pipe.hgetall(keys.fetch_totals)
    pipe.zrevrange(keys.fetch_failing, 0, max(0, feeds_shown - 1))
    pipe.zrange(keys.fetch_due, 0, max(0, feeds_shown - 1))
    feeds, due_now, claimed, failing, host_until, totals, worst, soonest = pipe.execute()
    if not feeds:
        return None
    shown = list(dict.fromkeys(u.decode() for u in [*worst, *soonest]))[:max(0, feeds_shown)]
    return {
        "feeds": int(feeds),
        "due_now": int(due_now),
        "fetching": int(claimed),
        "failing": int(failing),
        "hosts_backed_off": sum(1 for v in host_until if int(v) > now),
        "totals": {name: int(totals.get(name.encode(), 0)) for name in COUNTER_FIELDS},
        "feeds_shown": feed_states(client, keys, shown, now) if shown else [],
    }
