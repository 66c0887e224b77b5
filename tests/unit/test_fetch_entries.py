"""Entry ids, per-entry faults, plain text and JSON Feed: what a fetch makes of real feeds."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from batcher.demo.feed_server import serve_feeds
from batcher.feeds.entries import EntryFaults, entry_id, payload_of, plain_text
from batcher.feeds.fetch import FeedConfig, FeedFetcher
from batcher.feeds.parse import parse_feed
from tests.support.feed_corpus import LEGACY_TEXT
from tests.support.list_sink import ListSink

ROOT = Path(__file__).resolve().parents[2]


def _rss(items: str, encoding: str | None = "utf-8") -> bytes:
    decl = f' encoding="{encoding}"' if encoding else ""
    return (f'<?xml version="1.0"{decl}?><rss version="2.0"><channel><title>c</title>'
            f"{items}</channel></rss>").encode()


def _entries(body: bytes, content_type: str = "application/rss+xml") -> list[dict[str, object]]:
    parsed = parse_feed(body, {"content-type": content_type})
    assert parsed.error is None
    return [dict(e) for e in parsed.entries]


@pytest.fixture
def feed_dir(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    server, base_url = serve_feeds(tmp_path)
    yield tmp_path, base_url
    server.stop()


def _fetch(directory: Path, base_url: str, files: dict[str, bytes],
           sink: ListSink | None = None) -> tuple[ListSink, FeedFetcher, list[FeedConfig]]:
    for name, body in files.items():
        (directory / name).write_bytes(body)
    sink = sink or ListSink()
    feeds = [FeedConfig(url=f"{base_url}/{name}", source=name) for name in files]
    fetcher = FeedFetcher(sink, feeds, per_host_delay_seconds=0)
    for feed in feeds:
        fetcher.fetch_once(feed)
    fetcher.close()
    return sink, fetcher, feeds


def test_untitled_undated_description_only_items_all_arrive(
    feed_dir: tuple[Path, str],
) -> None:
    items = "".join(f"<item><description>note {i}</description></item>" for i in range(20))
    sink, fetcher, _ = _fetch(*feed_dir, {"notes.xml": _rss(items)})
    assert fetcher.counters["notes.xml"].accepted == 20
    assert fetcher.counters["notes.xml"].duplicates == 0
    assert sorted(e["payload"]["summary"] for e in sink.entries) == sorted(  # type: ignore[index]
        f"note {i}" for i in range(20))


def test_numeric_guids_of_two_feeds_are_two_entries_each(feed_dir: tuple[Path, str]) -> None:
    items = "".join(f'<item><title>t{i}</title><guid isPermaLink="false">{i}</guid></item>'
                    for i in range(1, 4))
    plain = "".join(f"<item><title>p{i}</title><guid>{i}</guid></item>" for i in range(1, 4))
    sink, fetcher, _ = _fetch(*feed_dir, {"a.xml": _rss(items), "b.xml": _rss(items),
                                          "c.xml": _rss(plain), "d.xml": _rss(plain)})
    assert [fetcher.counters[n].accepted for n in ("a.xml", "b.xml", "c.xml", "d.xml")] == [
        3, 3, 3, 3]
    assert len(sink.seen) == 12
    # the bare "1" is not a link either (feedparser copies a permalink GUID into it)
    assert all(e["payload"]["link"] is None for e in sink.entries)  # type: ignore[index]


def test_the_same_link_in_two_feeds_is_one_entry(feed_dir: tuple[Path, str]) -> None:
    item = "<item><title>Story</title><link>https://wire.example/story</link></item>"
    own = "<item><title>Own</title><link>https://b.example/own</link></item>"
    _, fetcher, _ = _fetch(*feed_dir, {"a.xml": _rss(item), "b.xml": _rss(item + own)})
    assert (fetcher.counters["a.xml"].accepted, fetcher.counters["a.xml"].duplicates) == (1, 0)
    assert (fetcher.counters["b.xml"].accepted, fetcher.counters["b.xml"].duplicates) == (1, 1)


def test_ids_are_stable_across_fetches_and_processes(feed_dir: tuple[Path, str]) -> None:
    items = ("<item><description>only text</description></item>"
             '<item><guid isPermaLink="false">42</guid><title>x</title></item>'
             "<item><link>https://s.example/1</link></item>")
    directory, base_url = feed_dir
    first, _, feeds = _fetch(directory, base_url, {"s.xml": _rss(items)})
    again, _, _ = _fetch(directory, base_url, {"s.xml": _rss(items)})
    ids = [str(e["id"]) for e in first.entries]
    assert ids == [str(e["id"]) for e in again.entries] and len(set(ids)) == 3
    script = (
        "import json,sys; from batcher.feeds.parse import parse_feed; "
        "from batcher.feeds.entries import entry_id; "
        "p = parse_feed(sys.stdin.buffer.read(), {'content-type': 'application/rss+xml'}); "
        f"print(json.dumps([entry_id(e, {feeds[0].url!r}) for e in p.entries]))"
    )
    out = subprocess.run([sys.executable, "-c", script], input=_rss(items), cwd=ROOT,
                         capture_output=True, check=True, env={"PYTHONHASHSEED": "123"})
    assert json.loads(out.stdout) == ids


def test_changed_text_is_a_new_entry_but_feed_url_scopes_ids() -> None:
    one = {"summary": "a"}
    assert entry_id(one, "http://a/") == entry_id({"summary": "a"}, "http://a/")
    assert entry_id(one, "http://a/") != entry_id({"summary": "b"}, "http://a/")
    assert entry_id(one, "http://a/") != entry_id(one, "http://b/")
    assert entry_id({"id": "tag:x.example,2025:1"}, "http://a/") == "tag:x.example,2025:1"
    assert entry_id({"id": "urn:uuid:1b4e"}, "http://a/") == "urn:uuid:1b4e"
    enclosed = {"enclosures": [{"href": "https://cdn.example/ep1.mp3"}]}
    assert entry_id(enclosed, "http://a/") != entry_id(
        {"enclosures": [{"href": "https://cdn.example/ep2.mp3"}]}, "http://a/")


def test_bad_dates_degrade_only_their_entry(feed_dir: tuple[Path, str]) -> None:
    items = "".join(
        f"<item><description>d{i}</description><pubDate>{d}</pubDate></item>"
        for i, d in enumerate(["0000-00-00T00:00:00Z", "0001-01-01T00:00:00+05:00",
                               "Fri, 14 Mar 2025 09:00:00 GMT", "garbage"]))
    directory, base_url = feed_dir
    (directory / "dates.xml").write_bytes(_rss(items))
    sink, feed = ListSink(), FeedConfig(url=f"{base_url}/dates.xml", source="dates.xml")
    with capture_logs() as logs, FeedFetcher(sink, [feed], per_host_delay_seconds=0) as fetcher:
        fetcher.fetch_once(feed)
        fetcher.fetch_once(feed, validators=(None, None))  # the same faults again
    counters = fetcher.counters["dates.xml"]
    assert (counters.accepted, counters.faults, counters.errors) == (4, 6, 0)
    dates = {e["payload"]["summary"]: e["payload"]["published"] for e in sink.entries}  # type: ignore[index]
    assert dates == {"d0": None, "d1": None, "d2": "2025-03-14T09:00:00+00:00", "d3": None}
    logged = [e for e in logs if e["event"] == "feed.entry_faults"]
    assert len(logged) == 1 and logged[0]["kinds"] == {"date": 3}


def test_oversize_fields_are_truncated_and_counted() -> None:
    faults = EntryFaults()
    entry = {"title": "t" * 5000, "summary": "<p>" + "s" * 9000 + "</p>",
             "tags": [{"term": f"c{i}"} for i in range(80)] + [{"term": 7}]}
    payload = payload_of(entry, "src", faults)
    assert len(str(payload["title"])) == 1000 and len(str(payload["summary"])) == 4000
    assert len(payload["tags"]) == 50  # type: ignore[arg-type]
    assert faults.kinds == {"oversize": 3, "tags": 1}


def test_a_field_that_cannot_be_read_is_null_not_an_error() -> None:
    faults = EntryFaults()
    payload = payload_of({"title": "ok", "tags": "not-a-list", "link": 5,
                          "published_parsed": "nonsense", "published": "x"}, "src", faults)
    assert payload["title"] == "ok" and payload["tags"] == [] and payload["link"] is None
    assert payload["published"] is None and faults.kinds == {"tags": 1, "date": 1}


def test_title_and_summary_are_plain_text_and_html_is_kept() -> None:
    items = ("<item><title>&lt;b&gt;&amp;#38;&lt;/b&gt;</title><link>https://x.example/1</link>"
             "<description>&lt;p&gt;Caf&amp;eacute;  &lt;b&gt;news&lt;/b&gt;&lt;/p&gt;\n"
             "&lt;script&gt;evil()&lt;/script&gt;&lt;p&gt;two &amp;amp; three&lt;/p&gt;"
             "</description></item>")
    payload = payload_of(_entries(_rss(items))[0], "s")
    assert payload["title"] == "&"
    assert payload["summary"] == "Café news two & three"
    assert "<b>news</b>" in str(payload["summary_html"])


def test_text_typed_atom_title_keeps_its_angle_brackets() -> None:
    assert plain_text("a <b> c &amp;", "text/plain") == "a <b> c &amp;"
    assert plain_text("a <b>c</b>\n\t d &amp; e", "text/html") == "a c d & e"


@pytest.mark.parametrize("encoding", sorted(LEGACY_TEXT))
def test_undeclared_legacy_encodings_decode(encoding: str) -> None:
    # no charset from HTTP, none in the XML declaration: chardet has to find it
    text = LEGACY_TEXT[encoding]
    items = f"<item><title>{text}</title><description>{text}</description></item>"
    payload = payload_of(_entries(_rss(items, encoding=None).decode().encode(encoding))[0], "s")
    assert payload["title"] == text and payload["summary"] == text


def test_json_feed_items_become_entries(feed_dir: tuple[Path, str]) -> None:
    document = {"version": "https://jsonfeed.org/version/1.1", "title": "j", "items": [
        {"id": "1", "title": "A <title>", "content_html": "<p>Hello &amp; bye</p>",
         "date_published": "2025-03-14T10:00:00+01:00", "tags": ["x", "y"],
         "url": "https://j.example/1"},
        {"id": 2, "content_text": "plain  text"},
        {"id": "3", "summary": "s", "date_published": "0000-01-01"},
    ]}
    sink, fetcher, _ = _fetch(*feed_dir, {"feed.json": json.dumps(document).encode()})
    assert fetcher.counters["feed.json"].accepted == 3
    first, second, third = (e["payload"] for e in sink.entries)
    assert first == {"title": "A <title>", "link": "https://j.example/1",  # text/plain title
                     "summary": "Hello & bye", "summary_html": "<p>Hello &amp; bye</p>",
                     "published": "2025-03-14T09:00:00+00:00", "feed": "feed.json",
                     "tags": ["x", "y"]}
    assert second["summary"] == "plain text" and second["title"] == ""  # type: ignore[index]
    assert third["published"] is None and fetcher.counters["feed.json"].faults == 1  # type: ignore[index]


def test_json_without_a_jsonfeed_version_is_a_failed_fetch(feed_dir: tuple[Path, str]) -> None:
    _, fetcher, _ = _fetch(*feed_dir, {"x.json": b'{"items": []}', "y.json": b"{nope"})
    assert fetcher.counters["x.json"].errors == 1 and fetcher.counters["y.json"].errors == 1
