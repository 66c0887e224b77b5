"""Bytes of a feed to entries: feedparser for RSS 0.9x/1.0/2.0 and Atom, our own reader
for JSON Feed 1.0/1.1 (feedparser 6 has none).

JSON Feed items become the same mapping shape feedparser gives (``id``, ``link``,
``title``, ``summary`` with ``summary_detail.type``, ``content``, ``published`` and
``published_parsed``, ``tags``, ``enclosures``), so ids and payloads are built by one
code path for every format.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import feedparser  # type: ignore[import-untyped]
import orjson

JSON_FEED_VERSION_PREFIX = "https://jsonfeed.org/version/1"


@dataclass(frozen=True, slots=True)
class ParsedFeed:
    """A feed's entries, its format (feedparser's version names, ``json1``), and the
    error that made it unreadable (None when entries could be read)."""

    entries: list[Mapping[str, Any]]
    version: str
    error: str | None = None


def parse_feed(content: bytes, headers: Mapping[str, str]) -> ParsedFeed:
    """Parse a response body; never raises for its content."""
    content_type = headers.get("content-type", "").lower()
    if "json" in content_type or content.lstrip()[:1] == b"{":
        return parse_json_feed(content)
    # No content-location: feedparser would resolve a GUID such as "7" against the feed's
    # URL and so make two feeds' post numbers one global id. Links are resolved later.
    parsed = feedparser.parse(content, response_headers=dict(headers))
    entries: list[Mapping[str, Any]] = list(parsed.entries)
    if parsed.bozo and not entries:
        return ParsedFeed([], parsed.get("version", ""),
                          f"malformed feed: {parsed.get('bozo_exception')!s}")
    return ParsedFeed(entries, parsed.get("version", ""))


def parse_json_feed(content: bytes) -> ParsedFeed:
    """JSON Feed 1.0 / 1.1 (https://jsonfeed.org/version/1.1)."""
    try:
        document = orjson.loads(content)
    except orjson.JSONDecodeError as exc:
        return ParsedFeed([], "json", f"malformed JSON feed: {exc}")
    if not isinstance(document, dict) or not str(document.get("version", "")).startswith(
        JSON_FEED_VERSION_PREFIX
    ):
        return ParsedFeed([], "json", "malformed JSON feed: no jsonfeed.org version")
    items = document.get("items")
    if not isinstance(items, list):
        return ParsedFeed([], "json1", "malformed JSON feed: items is not a list")
    return ParsedFeed([_json_item(item) for item in items if isinstance(item, dict)], "json1")


def _json_item(item: Mapping[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = {}
    if item.get("id") is not None and not isinstance(item.get("id"), dict | list):
        entry["id"] = str(item["id"])  # 1.0 allowed numbers; 1.1 says string
    link = item.get("url") or item.get("external_url")
    if isinstance(link, str):
        entry["link"] = link
    if isinstance(item.get("title"), str):
        entry["title"] = item["title"]
        entry["title_detail"] = {"type": "text/plain"}
    html, text, summary = item.get("content_html"), item.get("content_text"), item.get("summary")
    content = []
    if isinstance(html, str):
        content.append({"type": "text/html", "value": html})
    if isinstance(text, str):
        content.append({"type": "text/plain", "value": text})
    entry["content"] = content
    if isinstance(summary, str):
        entry["summary"], entry["summary_detail"] = summary, {"type": "text/plain"}
    elif content:
        first = content[0]
        entry["summary"], entry["summary_detail"] = first["value"], {"type": first["type"]}
    for ours, theirs in (("published", "date_published"), ("updated", "date_modified")):
        if isinstance(item.get(theirs), str):
            entry[ours] = item[theirs]
            parsed = _rfc3339(item[theirs])
            if parsed is not None:
                entry[f"{ours}_parsed"] = parsed
    tags = item.get("tags")
    entry["tags"] = [{"term": t} for t in tags] if isinstance(tags, list) else tags
    attachments = item.get("attachments")
    entry["enclosures"] = [
        {"href": a.get("url")}
        for a in (attachments if isinstance(attachments, list) else [])
        if isinstance(a, dict)
    ]
    return entry


def _rfc3339(value: str) -> time.struct_time | None:
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC).timetuple()
    except (OverflowError, ValueError):
        return None
