"""From a parsed feed entry to a batcher envelope: its id, its payload, its faults.

Ids (DESIGN §2: 1-200 printable characters) never collide by accident and never
change for the same item:

- a GUID that is an absolute URI (``http(s)://host/...``, ``urn:``, ``tag:``), or
  else the entry's link, is global: the same article syndicated in two feeds is
  one entry;
- any other GUID ("42", a post number) is scoped to its feed:
  ``guid:`` + sha256(feed url, GUID);
- with neither, ``sha256:`` + sha256(feed url, title, summary, content, dates,
  enclosures), so untitled, undated items with different text stay apart.

A fault in one field (a date out of range, a bad tag, an oversize text) degrades
that field only (null, dropped or truncated) and is reported, never raised.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html.parser import HTMLParser
from typing import Any, TypeVar
from urllib.parse import urljoin, urlsplit

MAX_ID_CHARS = 200
# Full-content feeds can carry tens of KB per entry; these caps keep the envelope far
# below the producer's max_entry_bytes (256 KiB), which would refuse the whole chunk.
MAX_TITLE_CHARS = 1000
MAX_SUMMARY_CHARS = 4000
MAX_SUMMARY_HTML_CHARS = 16000
MAX_LINK_CHARS = 2000
MAX_TAGS = 50
MAX_TAG_CHARS = 200
_GLOBAL_SCHEMES = frozenset({"urn", "tag"})  # globally unique by definition (RFC 4151, 8141)
_SKIP_TAGS = frozenset({"script", "style", "template"})
_BLOCK_TAGS = frozenset({
    "br", "p", "div", "li", "ul", "ol", "tr", "td", "th", "h1", "h2", "h3", "h4", "h5", "h6",
    "blockquote", "pre", "hr", "table", "section", "article", "header", "footer", "dd", "dt",
})
# C0 controls other than whitespace: valid in JSON Feed strings, useless to every reader
_CONTROLS = dict.fromkeys(c for c in range(32) if chr(c) not in "\t\n\r\x0b\x0c\x1c\x1d\x1e\x1f")
T = TypeVar("T")


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)  # entities unescaped once, in data
        self.parts: list[str] = []
        self._skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP_TAGS:
            self._skipping += 1
        elif tag in _BLOCK_TAGS:
            self.parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP_TAGS:
            self._skipping = max(0, self._skipping - 1)
        elif tag in _BLOCK_TAGS:
            self.parts.append(" ")

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self.parts.append(data)


def collapse(text: str) -> str:
    """Whitespace runs to one space, ends stripped, control characters dropped."""
    return " ".join(text.translate(_CONTROLS).split())


def plain_text(value: str, content_type: str = "text/html") -> str:
    """Text a reader sees: tags stripped, entities unescaped, whitespace collapsed.

    ``text/plain`` values (an Atom ``type="text"`` title, a JSON Feed ``content_text``)
    are only collapsed: a literal ``<b>`` there is text, not a tag.
    """
    if "html" not in content_type and "xml" not in content_type:
        return collapse(value)
    parser = _TextExtractor()
    parser.feed(value)
    parser.close()
    return collapse("".join(parser.parts))


def is_absolute_uri(value: str) -> bool:
    """An http(s) URL with a host, or a ``urn:`` / ``tag:`` URI: an id meant to be global."""
    if any(c.isspace() for c in value):
        return False
    parts = urlsplit(value)
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        return bool(parts.netloc)
    return scheme in _GLOBAL_SCHEMES and bool(parts.path)


def _sha256(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode("utf-8", "surrogatepass")).hexdigest()


def _get(parsed_entry: Mapping[str, Any], key: str) -> Any:
    # `in` first: feedparser's .get("updated") falls back to "published" with a warning
    return parsed_entry.get(key) if key in parsed_entry else None


def _text_of(value: object) -> str:
    return value.strip() if isinstance(value, str) else ""


def _global(value: str) -> str:
    if len(value) > MAX_ID_CHARS or not value.isprintable():
        # Still deterministic, and within the producer's 1-200 printable characters.
        return "sha256:" + _sha256(value)
    return value


def entry_id(parsed_entry: Mapping[str, Any], feed_url: str) -> str:
    """The entry's id (module docstring): global GUID/link, feed-scoped GUID, or content hash.

    Always 1-200 printable characters.
    """
    guid = _text_of(parsed_entry.get("id"))
    if guid and is_absolute_uri(guid):
        return _global(guid)
    if guid:
        return "guid:" + _sha256(feed_url, guid)
    link = _text_of(parsed_entry.get("link"))
    if link and is_absolute_uri(link):
        return _global(link)
    if link:  # a relative link means nothing outside its feed
        return "guid:" + _sha256(feed_url, "link", link)
    return "sha256:" + _sha256(feed_url, *_content_parts(parsed_entry))


def _content_parts(parsed_entry: Mapping[str, Any]) -> list[str]:
    parts = [_text_of(_get(parsed_entry, k)) for k in ("title", "summary", "published",
                                                     "updated", "created")]
    for item in _dicts(parsed_entry.get("content")):
        parts.append(_text_of(item.get("value")))
    for item in _dicts(parsed_entry.get("enclosures")):
        parts.append(_text_of(item.get("href")))
    return parts


def _dicts(value: object) -> list[Mapping[str, Any]]:
    if not isinstance(value, list | tuple):
        return []
    return [v for v in value if isinstance(v, Mapping)]


@dataclass(slots=True)
class EntryFaults:
    """What had to be degraded in one entry: kind -> count ("date", "tags", "oversize", ...)."""

    kinds: dict[str, int] = field(default_factory=dict)

    def add(self, kind: str) -> None:
        self.kinds[kind] = self.kinds.get(kind, 0) + 1

    def guarded(self, kind: str, build: Callable[[], T], default: T) -> T:
        """``build()``, or ``default`` with a ``kind`` fault if it raises."""
        try:
            return build()
        except Exception:  # noqa: BLE001 - any shape feedparser yields must degrade, not raise
            self.add(kind)
            return default

    def cap(self, text: str, limit: int) -> str:
        if len(text) > limit:
            self.add("oversize")
            return text[:limit]
        return text


def iso_date(parsed_entry: Mapping[str, Any], faults: EntryFaults) -> str | None:
    """The first date that converts, as ISO 8601 UTC; a date that does not is a fault.

    feedparser turns ``0000-00-00`` into year -1 and ``0001-01-01T00:00+05:00`` into
    year 0, which ``datetime`` refuses: such an entry keeps ``published = null``.
    """
    bad = False
    for key in ("published", "updated", "created"):
        value = _get(parsed_entry, f"{key}_parsed")
        if isinstance(value, time.struct_time):
            try:
                return datetime(*value[:6], tzinfo=UTC).isoformat()
            except (ValueError, OverflowError, TypeError):
                bad = True
        elif _text_of(_get(parsed_entry, key)):
            bad = True  # a date was given and feedparser could not read it
    if bad:
        faults.add("date")
    return None


def _detail_type(parsed_entry: Mapping[str, Any], key: str) -> str:
    detail = parsed_entry.get(f"{key}_detail")
    if isinstance(detail, Mapping) and isinstance(detail.get("type"), str):
        return str(detail["type"])
    return "text/html"  # RSS titles and descriptions may hold HTML; feedparser says so too


def _summary_source(parsed_entry: Mapping[str, Any]) -> tuple[str, str]:
    for key in ("summary", "description"):
        value = parsed_entry.get(key)
        if isinstance(value, str) and value.strip():
            return value, _detail_type(parsed_entry, key)
    for item in _dicts(parsed_entry.get("content")):
        value = item.get("value")
        if isinstance(value, str) and value.strip():
            return value, str(item.get("type") or "text/html")
    return "", "text/html"


def _tags(parsed_entry: Mapping[str, Any], faults: EntryFaults) -> list[str]:
    raw = parsed_entry.get("tags")
    if raw is None:
        return []
    if not isinstance(raw, list | tuple):
        faults.add("tags")
        return []
    tags: list[str] = []
    for tag in raw:
        term = tag.get("term") if isinstance(tag, Mapping) else tag
        if term is None or (isinstance(term, str) and not term.strip()):
            continue  # an empty <category/> is not worth a fault
        if not isinstance(term, str):
            faults.add("tags")
            continue
        tags.append(faults.cap(collapse(term), MAX_TAG_CHARS))
    if len(tags) > MAX_TAGS:
        faults.add("oversize")
    return tags[:MAX_TAGS]


def _link(parsed_entry: Mapping[str, Any], base_url: str | None) -> str | None:
    link = _text_of(parsed_entry.get("link"))
    if not link or len(link) > MAX_LINK_CHARS:
        return None
    if is_absolute_uri(link):
        return link
    if parsed_entry.get("guidislink"):
        return None  # feedparser copied a non-URL GUID ("42") into the link
    return urljoin(base_url, link) if base_url else link


def payload_of(
    parsed_entry: Mapping[str, Any],
    source: str,
    faults: EntryFaults | None = None,
    *,
    base_url: str | None = None,
) -> dict[str, object]:
    """The entry's payload: plain-text ``title`` and ``summary``, ``summary_html`` (the
    original markup), ``link``, ``published`` (ISO 8601 or None), ``feed``, ``tags``.

    Field faults go to ``faults``; a relative link is resolved against ``base_url`` (the
    feed's URL). This never raises for an entry's content.
    """
    faults = faults if faults is not None else EntryFaults()
    title_raw = _text_of(parsed_entry.get("title"))
    title = faults.guarded(
        "text", lambda: plain_text(title_raw, _detail_type(parsed_entry, "title")), title_raw
    )
    summary_raw, summary_type = faults.guarded(
        "text", lambda: _summary_source(parsed_entry), ("", "text/html")
    )
    summary = faults.guarded("text", lambda: plain_text(summary_raw, summary_type), "")
    return {
        "title": faults.cap(title, MAX_TITLE_CHARS),
        "link": faults.guarded("link", lambda: _link(parsed_entry, base_url), None),
        "summary": faults.cap(summary, MAX_SUMMARY_CHARS),
        "summary_html": faults.cap(summary_raw.strip(), MAX_SUMMARY_HTML_CHARS) or None,
        "published": faults.guarded("date", lambda: iso_date(parsed_entry, faults), None),
        "feed": source,
        "tags": faults.guarded("tags", lambda: _tags(parsed_entry, faults), list[str]()),
    }


def merge_faults(into: dict[str, int], kinds: Iterable[tuple[str, int]]) -> None:
    for kind, n in kinds:
        into[kind] = into.get(kind, 0) + n
