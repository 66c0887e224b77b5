"""The feed fetcher against the local feed server, with a list-collecting sink (no Redis)."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import feedparser  # type: ignore[import-untyped]
import pytest
from structlog.testing import capture_logs

from batcher.demo.feed_server import SAMPLE_FEEDS_DIR, SAMPLE_FEEDS_TOML, FeedServer, serve_feeds
from batcher.errors import BatcherError, BufferFullError, ConfigError
from batcher.feeds.fetch import (
    CHUNK_SIZE,
    FeedConfig,
    FeedFetcher,
    entry_id,
    load_feeds,
    payload_of,
    retry_after_seconds,
)
from batcher.models import EnqueueResult
from tests.support.list_sink import ListSink
from tests.support.waiting import HANG_GUARD_SECONDS, wait_until

MALFORMED = "malformed_wire.xml"
GOOD_FEEDS = sorted(
    p.name
    for p in SAMPLE_FEEDS_DIR.iterdir()
    if p.suffix in (".xml", ".rdf") and p.name != MALFORMED
)


@pytest.fixture
def feed_server() -> Iterator[tuple[FeedServer, str]]:
    server, base_url = serve_feeds(SAMPLE_FEEDS_DIR, slow_seconds=2.0)
    yield server, base_url
    server.stop()


def _feed(base_url: str, name: str, source: str | None = None, priority: int = 0) -> FeedConfig:
    return FeedConfig(url=f"{base_url}/{name}", source=source or name, priority=priority)


def _fetcher(sink: ListSink, feeds: list[FeedConfig], **kwargs: Any) -> FeedFetcher:
    kwargs.setdefault("per_host_delay_seconds", 0.0)
    kwargs.setdefault("timeout_seconds", 5.0)
    return FeedFetcher(sink, feeds, **kwargs)


@pytest.mark.parametrize("name", GOOD_FEEDS)
def test_every_sample_feed_parses_into_entries(
    feed_server: tuple[FeedServer, str], name: str
) -> None:
    _, base_url = feed_server
    sink = ListSink()
    with _fetcher(sink, [_feed(base_url, name, priority=1)]) as fetcher:
        report = fetcher.fetch_once(fetcher.feeds[0])
    assert report.status == "fetched" and report.error is None
    assert report.entries_seen >= 5 and report.accepted == report.entries_seen
    for envelope in sink.entries:
        assert set(envelope) == {"id", "source", "priority", "payload"}
        assert envelope["source"] == name and envelope["priority"] == 1
        eid = envelope["id"]
        assert isinstance(eid, str) and 1 <= len(eid) <= 200 and eid.isprintable()
        payload = envelope["payload"]
        assert isinstance(payload, dict)
        assert set(payload) == {"title", "link", "summary", "summary_html", "published",
                                "feed", "tags"}
        assert payload["title"] and payload["feed"] == name
        assert isinstance(payload["tags"], list)


def test_sample_feeds_cover_every_format() -> None:
    versions = {feedparser.parse((SAMPLE_FEEDS_DIR / n).read_bytes()).version for n in GOOD_FEEDS}
    assert {"rss091n", "rss092", "rss10", "rss20", "atom10"} <= versions


def test_malformed_feed_is_counted_and_logged_not_raised(
    feed_server: tuple[FeedServer, str],
) -> None:
    _, base_url = feed_server
    sink = ListSink()
    feed = _feed(base_url, MALFORMED, source="broken")
    with _fetcher(sink, [feed]) as fetcher, capture_logs() as logs:
        report = fetcher.fetch_once(feed)
    assert report.status == "failed" and "malformed" in (report.error or "")
    assert fetcher.counters["broken"].errors == 1 and sink.calls == []
    failed = [e for e in logs if e["event"] == "feed.failed"]
    assert failed and failed[0]["feed"] == "broken" and failed[0]["url"] == feed.url


def test_ids_are_deterministic_and_unique_across_two_fetchers(
    feed_server: tuple[FeedServer, str],
) -> None:
    _, base_url = feed_server
    feeds = [_feed(base_url, name) for name in GOOD_FEEDS]
    first, second = ListSink(), ListSink()
    with _fetcher(first, feeds) as a, _fetcher(second, feeds) as b:
        for feed in feeds:
            a.fetch_once(feed)
            b.fetch_once(feed)
    ids = [e["id"] for e in first.entries]
    assert ids == [e["id"] for e in second.entries]
    assert len(ids) == len(set(ids))
    # Both fetchers offering to one producer: the second adds nothing.
    shared = ListSink()
    for envelope in first.entries + second.entries:
        shared.queue_many([envelope])
    assert len(shared.seen) == len(ids)


def test_entry_id_prefers_url_guid_then_link_then_hash() -> None:
    feed = "https://a.example/feed"
    assert entry_id({"id": " https://a.example/1 ", "link": "https://a.example/x"}, feed) == (
        "https://a.example/1"
    )
    assert entry_id({"id": "", "link": "https://a.example/2"}, feed) == "https://a.example/2"
    dated = {"title": "Outage", "published": "Fri, 14 Mar 2025 09:00:00 GMT"}
    hashed = entry_id(dated, feed)
    assert hashed.startswith("sha256:") and len(hashed) == 71
    assert hashed == entry_id(dict(dated), feed)
    assert hashed != entry_id({**dated, "published": "Sat, 15 Mar 2025 09:00:00 GMT"}, feed)


def test_entry_id_hashes_long_values() -> None:
    long_guid = "https://a.example/" + "x" * 300
    assert entry_id({"id": long_guid}, "http://f/").startswith("sha256:")
    assert entry_id({"id": long_guid}, "http://f/") == entry_id({"id": long_guid}, "http://g/")


def test_entry_without_guid_or_link_gets_a_hash_id(feed_server: tuple[FeedServer, str]) -> None:
    _, base_url = feed_server
    sink = ListSink()
    with _fetcher(sink, [_feed(base_url, "rss20_security_alerts.xml")]) as fetcher:
        fetcher.fetch_once(fetcher.feeds[0])
    hashed = [e for e in sink.entries if str(e["id"]).startswith("sha256:")]
    assert len(hashed) == 1
    payload = hashed[0]["payload"]
    assert isinstance(payload, dict) and payload["link"] is None
    assert payload["published"] == "2025-03-14T02:18:00+00:00"


def test_payload_has_iso_date_tags_and_feed_name() -> None:
    parsed = feedparser.parse((SAMPLE_FEEDS_DIR / "atom_ai_research.xml").read_bytes())
    payload = payload_of(parsed.entries[0], "ai")
    assert payload["published"] == "2025-03-14T09:00:00+00:00"
    assert payload["tags"] == ["llm", "scaling"] and payload["feed"] == "ai"
    assert str(payload["link"]).startswith("https://airesearch.example.ai/blog/")


def test_second_fetch_is_a_304_and_enqueues_nothing(feed_server: tuple[FeedServer, str]) -> None:
    server, base_url = feed_server
    sink = ListSink()
    feed = _feed(base_url, "rss20_tech_daily.xml", source="tech")
    with _fetcher(sink, [feed]) as fetcher:
        first = fetcher.fetch_once(feed)
        second = fetcher.fetch_once(feed)
    assert first.status == "fetched" and second.status == "not_modified"
    assert second.http_status == 304 and len(sink.calls) == 1
    counters = fetcher.counters["tech"]
    assert (counters.fetched, counters.not_modified, counters.errors) == (1, 1, 0)
    sent = server.requests[-1][1]
    assert "if-none-match" in sent and "if-modified-since" in sent
    assert "gzip" in server.requests[0][1]["accept-encoding"]


def test_rejected_entries_make_the_next_fetch_unconditional(
    feed_server: tuple[FeedServer, str],
) -> None:
    _, base_url = feed_server
    feed = _feed(base_url, "rss20_tech_daily.xml", source="tech")
    probe = ListSink()
    with _fetcher(probe, [feed]) as fetcher:
        fetcher.fetch_once(feed)
    sink = ListSink(reject_ids=frozenset({str(probe.entries[0]["id"])}))
    with _fetcher(sink, [feed]) as fetcher:
        assert fetcher.fetch_once(feed).rejected == 1
        again = fetcher.fetch_once(feed)
    assert again.status == "fetched" and again.rejected == 1


def test_redirect_is_followed(feed_server: tuple[FeedServer, str]) -> None:
    server, base_url = feed_server
    sink = ListSink()
    feed = _feed(base_url, "redirect/atom_dev_blog.xml", source="dev")
    with _fetcher(sink, [feed]) as fetcher:
        report = fetcher.fetch_once(feed)
    assert report.status == "fetched" and report.accepted == 5
    assert [path for path, _ in server.requests] == [
        "/redirect/atom_dev_blog.xml",
        "/atom_dev_blog.xml",
    ]


def test_timeout_is_counted_and_logged_and_next_feed_still_fetches(
    feed_server: tuple[FeedServer, str],
) -> None:
    _, base_url = feed_server
    sink = ListSink()
    feeds = [
        _feed(base_url, "slow/rss20_cloud_ops.xml", source="slow"),
        _feed(base_url, "rss20_cloud_ops.xml", source="ops"),
    ]
    with _fetcher(sink, feeds, timeout_seconds=0.2) as fetcher, capture_logs() as logs:
        counters = fetcher.run(threading.Event(), max_rounds=1)
    assert counters["slow"].errors == 1 and counters["slow"].fetched == 0
    assert counters["ops"].fetched == 1 and counters["ops"].accepted == 6
    failed = [e for e in logs if e["event"] == "feed.failed"]
    assert len(failed) == 1 and failed[0]["feed"] == "slow" and "timeout" in failed[0]["error"]
    assert [e["feed"] for e in logs if e["event"] == "feed.fetched"] == ["ops"]


def test_http_500_is_counted(feed_server: tuple[FeedServer, str]) -> None:
    _, base_url = feed_server
    feed = _feed(base_url, "status/500", source="err")
    with _fetcher(ListSink(), [feed]) as fetcher, capture_logs() as logs:
        report = fetcher.fetch_once(feed)
    assert report.status == "failed" and report.http_status == 500
    assert fetcher.counters["err"].errors == 1
    assert logs[-1]["event"] == "feed.failed" and "500" in logs[-1]["error"]


def test_connection_error_is_counted() -> None:
    feed = FeedConfig(url="http://127.0.0.1:9/feed.xml", source="nowhere")
    with _fetcher(ListSink(), [feed]) as fetcher:
        report = fetcher.fetch_once(feed)
    assert report.status == "failed" and fetcher.counters["nowhere"].errors == 1


def test_sink_error_is_counted_not_raised(feed_server: tuple[FeedServer, str]) -> None:
    _, base_url = feed_server

    class FullSink:
        def queue_many(self, entries: list[dict[str, object]]) -> EnqueueResult:
            raise BufferFullError("buffer full", EnqueueResult(rejected_ids=["x"]))

    feed = _feed(base_url, "atom_dev_blog.xml", source="dev")
    with FeedFetcher(FullSink(), [feed], per_host_delay_seconds=0) as fetcher:
        report = fetcher.fetch_once(feed)
    assert report.status == "failed" and "BufferFullError" in (report.error or "")
    assert isinstance(BufferFullError("x", EnqueueResult()), BatcherError)


def test_entries_are_sent_in_chunks_of_500(tmp_path: Path) -> None:
    items = "".join(
        f"<item><title>Item {i}</title><link>https://big.example/{i}</link></item>"
        for i in range(1203)
    )
    (tmp_path / "big.xml").write_text(
        f'<?xml version="1.0"?><rss version="2.0"><channel><title>Big</title>{items}'
        "</channel></rss>"
    )
    server, base_url = serve_feeds(tmp_path)
    try:
        sink = ListSink()
        with _fetcher(sink, [_feed(base_url, "big.xml")]) as fetcher:
            report = fetcher.fetch_once(fetcher.feeds[0])
    finally:
        server.stop()
    assert [len(call) for call in sink.calls] == [CHUNK_SIZE, CHUNK_SIZE, 203]
    assert report.accepted == 1203


def test_per_host_delay_spaces_requests_to_one_host(feed_server: tuple[FeedServer, str]) -> None:
    _, base_url = feed_server
    feeds = [_feed(base_url, "atom_dev_blog.xml", source="dev"),
             _feed(base_url, "rss20_tech_daily.xml", source="tech")]
    stop = RecordingEvent()
    with _fetcher(ListSink(), feeds, per_host_delay_seconds=30) as fetcher:
        fetcher.run(stop, max_rounds=1)
    # the second request to the host waited out the rest of the delay (the stop event's wait,
    # recorded here instead of slept), the first none
    assert len(stop.waits) == 1 and 0 < stop.waits[0] <= 30
    assert fetcher.counters["dev"].fetched == fetcher.counters["tech"].fetched == 1


class RecordingEvent(threading.Event):
    """A stop event whose waits return at once and are recorded (seconds asked for)."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(0.0 if timeout is None else timeout)
        return self.is_set()


def test_run_returns_when_stopped(feed_server: tuple[FeedServer, str]) -> None:
    _, base_url = feed_server
    stop = threading.Event()
    feed = FeedConfig(url=f"{base_url}/atom_dev_blog.xml", source="dev", interval_seconds=60)
    with _fetcher(ListSink(), [feed]) as fetcher:
        thread = threading.Thread(target=fetcher.run, args=(stop,))
        thread.start()
        wait_until(lambda: fetcher.counters["dev"].fetched == 1, "the first fetch")
        stop.set()  # the loop now waits 60 s for the next round: the stop ends that wait
        thread.join(HANG_GUARD_SECONDS)
    assert not thread.is_alive() and fetcher.counters["dev"].fetched == 1


def test_load_feeds_reads_the_sample_file() -> None:
    feeds = load_feeds(SAMPLE_FEEDS_TOML, base_url="http://127.0.0.1:8000/")
    assert len(feeds) == 11
    assert all(f.url.startswith("http://127.0.0.1:8000/") for f in feeds)
    assert {f.priority for f in feeds} == {0, 1, 2}
    on_disk = {p.name for p in SAMPLE_FEEDS_DIR.iterdir() if p.suffix in (".xml", ".rdf")}
    assert {f.url.rsplit("/", 1)[1] for f in feeds} == on_disk


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('[[feeds]]\nurl = "http://a/x"\nsource = "s"\npriority = 3\n', "priority"),
        ('[[feeds]]\nurl = "ftp://a/x"\nsource = "s"\n', "url"),
        ('[[feeds]]\nurl = "{base}/x"\nsource = "s"\n', "{base}"),
        ('[[feeds]]\nurl = "http://a/x"\nsource = "s"\ninterval_seconds = 0\n', "interval"),
        ('[[feeds]]\nurl = "http://a/x"\nsource = "s"\nintervall = 5\n', "unknown key"),
        ('[[feeds]]\nurl = "http://a/x"\n', "source"),
        ('[[feeds]]\nurl = "http://a/x"\nsource = "s"\nbatch_key = "a b"\n', "batch_key"),
        (
            '[[feeds]]\nurl = "http://a/x"\nsource = "s"\n[[feeds]]\nurl = "http://a/y"\n'
            'source = "s"\n',
            "repeat source",
        ),
        ("feeds = [", "invalid TOML"),
        ("title = 'no feeds'\n", "[[feeds]]"),
    ],
)
def test_load_feeds_names_the_file_and_feed_on_bad_input(
    tmp_path: Path, body: str, message: str
) -> None:
    path = tmp_path / "feeds.toml"
    path.write_text(body)
    with pytest.raises(ConfigError) as raised:
        load_feeds(path)
    assert str(path) in str(raised.value) and message in str(raised.value)


def test_a_feeds_batch_key_is_read(tmp_path: Path) -> None:
    path = tmp_path / "feeds.toml"
    path.write_text('[[feeds]]\nurl = "http://a/x"\nsource = "s"\nbatch_key = "summarize"\n')
    assert load_feeds(path)[0].batch_key == "summarize"


def test_load_feeds_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_feeds(tmp_path / "absent.toml")


def test_feed_server_serves_a_copied_directory(tmp_path: Path) -> None:
    shutil.copy(SAMPLE_FEEDS_DIR / "atom_dev_blog.xml", tmp_path / "feed.atom")
    server, base_url = serve_feeds(tmp_path)
    try:
        sink = ListSink()
        with _fetcher(sink, [_feed(base_url, "feed.atom")]) as fetcher:
            assert fetcher.fetch_once(fetcher.feeds[0]).accepted == 5
            assert fetcher.fetch_once(_feed(base_url, "../etc/passwd")).http_status == 404
    finally:
        server.stop()


@pytest.mark.parametrize("code", [429, 503])
def test_refusal_carries_the_servers_retry_after(
    feed_server: tuple[FeedServer, str], code: int
) -> None:
    _, base_url = feed_server
    feed = _feed(base_url, f"status/{code}", source="busy")
    with _fetcher(ListSink(), [feed]) as fetcher:
        report = fetcher.fetch_once(feed)
    assert report.status == "failed" and report.retry_after_seconds == 7


def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert retry_after_seconds("120") == 120
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None
    assert retry_after_seconds("Thu, 01 Jan 1970 00:00:00 GMT") == 0
