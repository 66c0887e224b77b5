"""The LLM handler against the built-in fake server, and its pure parts without one."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from batcher.errors import RateLimited
from batcher.llm import client as llm_client
from batcher.llm import handler as llm
from batcher.llm.fake import FakeLLMServer, fake_result, serve_fake_llm
from batcher.models import Batch, Entry, FlushReason

pytestmark = pytest.mark.timeout(30)

ServeFake = Callable[..., tuple[FakeLLMServer, str]]


def make_entry(i: int, title: str | None = None, summary: str = "") -> Entry:
    payload = {
        "title": title or f"Python release {i} ships",
        "link": f"https://ex.org/{i}",
        "summary": summary or f"<p>Body of entry {i} &amp; more</p>",
    }
    return Entry(
        id=f"https://ex.org/{i}",
        source="feed",
        priority=0,
        enqueued_ms=0,
        attempts=0,
        payload=payload,
    )


def make_batch(n: int, **kwargs: Any) -> Batch:
    entries = [make_entry(i, **kwargs) for i in range(n)]
    return Batch(
        queue="q", id="b1", attempt=1, reason=FlushReason.SIZE, created_ms=0, entries=entries
    )


@pytest.fixture
def serve_fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[ServeFake]:
    servers: list[FakeLLMServer] = []

    def start(**kwargs: Any) -> tuple[FakeLLMServer, str]:
        kwargs.setdefault("base_latency_ms", 0)
        kwargs.setdefault("per_entry_ms", 0)
        server, url = serve_fake_llm(**kwargs)
        servers.append(server)
        monkeypatch.setenv("LLM_BASE_URL", url)
        return server, url

    for name in ("LLM_API_KEY", "LLM_MODEL", "LLM_JSON_MODE", "LLM_MAX_TOKENS",
                 "LLM_RESPONSE_FORMAT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LLM_TIMEOUT_SECONDS", "5")
    monkeypatch.setenv("LLM_MAX_PROMPT_TOKENS", "6000")
    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def serve_custom(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., list[dict[str, Any]]]]:
    """A tiny server answering every POST with ``status``, ``headers`` and ``body``."""
    servers: list[ThreadingHTTPServer] = []

    def start(
        status: int = 200,
        body: Any = None,
        headers: dict[str, str] | None = None,
        sleep_s: float = 0.0,
    ) -> list[dict[str, Any]]:
        seen: list[dict[str, Any]] = []

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def do_POST(self) -> None:  # noqa: N802
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                seen.append(
                    {"path": self.path, "headers": dict(self.headers), "body": json.loads(raw)}
                )
                threading.Event().wait(sleep_s)
                data = json.dumps(body).encode() if not isinstance(body, bytes) else body
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        monkeypatch.setenv("LLM_BASE_URL", f"http://127.0.0.1:{server.server_address[1]}")
        return seen

    monkeypatch.setenv("LLM_TIMEOUT_SECONDS", "5")
    monkeypatch.delenv("LLM_API_KEY", raising=False)
    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def completion(content: str) -> dict[str, Any]:
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}


# --- against the fake server ---------------------------------------------------------------


def test_answers_are_mapped_back_by_id_in_one_request(serve_fake: ServeFake) -> None:
    server, _ = serve_fake()
    batch = make_batch(5)
    outcome = llm.summarize(batch)
    assert server.requests == 1 and server.entries == 5
    assert not outcome.failed
    assert set(outcome.results) == {e.id for e in batch.entries}
    first = batch.entries[0]
    expected = fake_result(first.id, str(first.payload["title"]))
    assert outcome.results[first.id] == {
        k: expected[k] for k in ("summary", "category", "importance")
    }
    assert outcome.results[first.id]["category"] == "technology"


def test_entries_the_model_omitted_are_reported_failed(serve_fake: ServeFake) -> None:
    serve_fake(omit_rate=0.5, seed=7)
    batch = make_batch(20)
    outcome = llm.summarize(batch)
    assert outcome.failed, "seed 7 omits some of 20 entries"
    assert outcome.results
    assert set(outcome.results) | set(outcome.failed) == {e.id for e in batch.entries}
    assert not set(outcome.results) & set(outcome.failed)
    assert set(outcome.failed.values()) == {"omitted by the model"}


def test_a_junk_reply_fails_every_entry_with_a_reason(serve_fake: ServeFake) -> None:
    server, _ = serve_fake(junk_rate=1.0)
    batch = make_batch(3)
    outcome = llm.summarize(batch)
    assert server.junk == 1
    assert not outcome.results
    assert len(outcome.failed) == 3
    assert all(reason.startswith("unparseable reply") for reason in outcome.failed.values())


def test_429_with_retry_after_raises_rate_limited(serve_fake: ServeFake) -> None:
    server, _ = serve_fake(rate_limit_every=1, retry_after_seconds=7)
    with pytest.raises(RateLimited) as caught:
        llm.summarize(make_batch(2))
    assert caught.value.retry_after_seconds == 7
    assert server.rate_limited == 1


def test_503_without_retry_after_rate_limits_for_the_default(serve_custom: Any) -> None:
    serve_custom(status=503, body={"error": "overloaded"})
    with pytest.raises(RateLimited) as caught:
        llm.summarize(make_batch(1))
    assert caught.value.retry_after_seconds == llm_client.DEFAULT_RETRY_AFTER_SECONDS


def test_429_with_an_http_date_retry_after(serve_custom: Any) -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    serve_custom(status=429, body={}, headers={"Retry-After": when})
    with pytest.raises(RateLimited) as caught:
        llm.summarize(make_batch(1))
    assert 25 <= caught.value.retry_after_seconds <= 30


def test_a_server_slower_than_the_timeout_raises_a_timeout(
    serve_fake: ServeFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    serve_fake(base_latency_ms=1500)
    monkeypatch.setenv("LLM_TIMEOUT_SECONDS", "0.2")
    with pytest.raises(llm.LLMTimeoutError, match="timed out"):
        llm.summarize(make_batch(2))


def test_a_server_error_raises_llm_error_with_the_status(serve_custom: Any) -> None:
    serve_custom(status=500, body={"error": "boom"})
    with pytest.raises(llm.LLMError) as caught:
        llm.summarize(make_batch(1))
    assert caught.value.status_code == 500


def test_a_big_batch_is_split_into_requests_that_fit_and_merged(
    serve_fake: ServeFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, _ = serve_fake()
    monkeypatch.setenv("LLM_MAX_PROMPT_TOKENS", "600")
    batch = make_batch(30, summary="word " * 100)
    outcome = llm.summarize(batch)
    assert server.requests > 1
    assert sum(server.request_sizes) == 30
    assert set(outcome.results) == {e.id for e in batch.entries}
    assert not outcome.failed


@pytest.mark.parametrize("suffix", ["", "/", "/v1", "/v1/"])
def test_base_url_works_with_or_without_v1(
    serve_fake: ServeFake, monkeypatch: pytest.MonkeyPatch, suffix: str
) -> None:
    server, url = serve_fake()
    monkeypatch.setenv("LLM_BASE_URL", url + suffix)
    outcome = llm.summarize(make_batch(2))
    assert len(outcome.results) == 2 and server.requests == 1


def test_request_is_minimal_and_sends_the_api_key(
    serve_custom: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLM_API_KEY", "sk-test")
    monkeypatch.setenv("LLM_MODEL", "llama3")
    monkeypatch.setenv("LLM_RESPONSE_FORMAT", "text")
    batch = make_batch(1)
    reply = [{"id": batch.entries[0].id, "summary": "s", "category": "tech", "importance": 2}]
    seen = serve_custom(body=completion("```json\n" + json.dumps(reply) + "\n```"))
    outcome = llm.summarize(batch)
    assert outcome.results[batch.entries[0].id]["importance"] == 2
    request = seen[0]
    assert request["path"] == "/v1/chat/completions"
    headers = {k.lower(): v for k, v in request["headers"].items()}
    assert headers["authorization"] == "Bearer sk-test"
    assert set(request["body"]) == {"model", "messages", "temperature"}
    assert request["body"]["model"] == "llama3" and request["body"]["temperature"] == 0


def test_json_mode_adds_response_format_and_says_json(
    serve_custom: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LLM_RESPONSE_FORMAT", raising=False)
    monkeypatch.setenv("LLM_JSON_MODE", "1")
    seen = serve_custom(body=completion('{"results": []}'))
    outcome = llm.summarize(make_batch(1))
    assert seen[0]["body"]["response_format"] == {"type": "json_object"}
    # OpenAI answers 400 to json_object unless a message contains the word JSON
    assert "JSON" in seen[0]["body"]["messages"][0]["content"]
    assert list(outcome.failed.values()) == ["omitted by the model"]


def test_json_schema_is_the_default_and_sends_the_result_schema(
    serve_custom: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LLM_RESPONSE_FORMAT", raising=False)
    monkeypatch.delenv("LLM_JSON_MODE", raising=False)
    batch = make_batch(1)
    reply = {"results": [{"id": batch.entries[0].id, "summary": "s", "category": "science",
                          "importance": 4}]}
    seen = serve_custom(body=completion(json.dumps(reply)))
    outcome = llm.summarize(batch)
    sent = seen[0]["body"]["response_format"]
    assert sent["type"] == "json_schema" and sent["json_schema"]["strict"] is True
    item = sent["json_schema"]["schema"]["properties"]["results"]["items"]
    assert set(item["required"]) == {"id", "summary", "category", "importance"}
    assert outcome.results[batch.entries[0].id]["category"] == "science"


# --- pure parts ----------------------------------------------------------------------------


def test_parse_reply_strips_fences_and_prose() -> None:
    text = 'Sure! Here you go:\n```json\n[{"id": "a", "summary": "x"}]\n```\nHope it helps [1].'
    assert llm.parse_reply(text) == [{"id": "a", "summary": "x"}]


def test_parse_reply_unwraps_an_object_around_the_array() -> None:
    assert llm.parse_reply('{"results": [{"id": "a"}]}') == [{"id": "a"}]
    assert llm.parse_reply('{"id": "a", "summary": "x"}') == [{"id": "a", "summary": "x"}]


def test_parse_reply_skips_think_blocks_and_non_json_brackets() -> None:
    text = '<think>maybe [{"id": "z"}]</think> Results for [3 entries]: [{"id": "b"}]'
    assert llm.parse_reply(text) == [{"id": "b"}]


def test_parse_reply_without_an_array_raises_value_error() -> None:
    with pytest.raises(ValueError, match="no JSON array"):
        llm.parse_reply("I cannot do that.")


def test_map_results_reports_garbled_omitted_and_unknown_items() -> None:
    items = [
        {"id": "a", "summary": "ok", "category": "Science", "importance": "4"},
        {"id": "b", "summary": "", "category": "x", "importance": 3},
        {"id": "c", "summary": "s", "category": "x", "importance": "high"},
        {"id": "zzz", "summary": "s", "category": "x", "importance": 3},
        "not an object",
    ]
    outcome = llm.map_results(["a", "b", "c", "d"], items)
    assert outcome.results == {"a": {"summary": "ok", "category": "science", "importance": 4}}
    assert "summary" in outcome.failed["b"]
    assert "importance" in outcome.failed["c"]
    assert outcome.failed["d"] == "omitted by the model"


def test_importance_out_of_scale_is_clamped() -> None:
    outcome = llm.map_results(
        ["a"], [{"id": "a", "summary": "s", "category": "c", "importance": 9.0}]
    )
    assert outcome.results["a"]["importance"] == 5


def test_prompt_entries_round_trip_through_the_marker_format() -> None:
    entry = make_entry(1, title='A "quoted" ]title[ with\nnewline')
    prompt = "\n".join(m["content"] for m in llm.build_prompt([entry]))
    assert llm.parse_entry_lines(prompt) == [(entry.id, 'A "quoted" ]title[ with newline')]
    assert "<p>" not in prompt and "&amp;" not in prompt


def test_split_entries_keeps_a_batch_that_fits_whole() -> None:
    entries = [make_entry(i) for i in range(10)]
    assert llm.split_entries(entries, 6000) == [entries]


def test_split_entries_chunks_each_fit_the_budget() -> None:
    entries = [make_entry(i, summary="word " * 150) for i in range(12)]
    chunks = llm.split_entries(entries, 700)
    assert len(chunks) > 1
    assert [e for c in chunks for e in c] == entries
    assert all(llm.estimate_tokens(llm.build_prompt(c)) <= 700 for c in chunks)


def test_api_base_url_normalises_the_base() -> None:
    for base in ("http://h:1", "http://h:1/", "http://h:1/v1", "http://h:1/v1/"):
        assert llm.api_base_url(base) == "http://h:1/v1"


def test_retry_after_parses_seconds_dates_and_falls_back() -> None:
    now = datetime(2024, 1, 1, tzinfo=UTC)
    default = llm_client.DEFAULT_RETRY_AFTER_SECONDS
    assert llm.retry_after_seconds({"Retry-After": "12"}) == 12
    assert llm.retry_after_seconds({}) == default
    assert llm.retry_after_seconds({"Retry-After": "soon"}) == default
    date = format_datetime(now + timedelta(seconds=90), usegmt=True)
    assert llm.retry_after_seconds({"Retry-After": date}, now=now) == 90


def test_retry_after_prefers_ms_then_retry_after_then_the_reset_headers() -> None:
    every = {"retry-after-ms": "1500", "Retry-After": "7", "x-ratelimit-reset-requests": "6m0s"}
    assert llm.retry_after_seconds(every) == 1.5
    assert llm.retry_after_seconds({k: v for k, v in every.items() if k != "retry-after-ms"}) == 7
    assert llm.retry_after_seconds({"x-ratelimit-reset-requests": "1m30s",
                                    "x-ratelimit-reset-tokens": "250ms"}) == 90
    assert llm.retry_after_seconds({"x-ratelimit-reset-tokens": "2m3.5s"}) == 123.5


def test_bad_settings_raise_config_error_naming_the_variable() -> None:
    from batcher.errors import ConfigError

    with pytest.raises(ConfigError, match="LLM_TIMEOUT_SECONDS"):
        llm.LLMSettings.from_env({"LLM_TIMEOUT_SECONDS": "-1"})
