"""The LLM handler against the fake misbehaving as real providers do, and the fake's contract."""

from __future__ import annotations

import json
import random
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from openai.types.chat import ChatCompletion
from openai.types.chat.completion_create_params import CompletionCreateParamsNonStreaming
from pydantic import TypeAdapter

from batcher.errors import QueuePaused, RateLimited
from batcher.llm import client as llm_client
from batcher.llm import handler as llm
from batcher.llm.fake import REFUSE_MARK, REJECT_MARK, FakeLLMOptions, FakeLLMServer, serve_fake_llm
from batcher.models import Batch, Entry, FlushReason
from batcher.stats import detailed_stats
from batcher.testing import make_manager, run_pending

pytestmark = pytest.mark.timeout(60)

Serve = Callable[..., FakeLLMServer]


def make_batch(n: int, marks: dict[int, str] | None = None) -> Batch:
    entries = [Entry(id=f"e{i}", source="s", priority=0, enqueued_ms=0, attempts=0,
                     payload={"title": f"Python release {i} ships {(marks or {}).get(i, '')}",
                              "summary": f"Body {i}"}) for i in range(n)]
    return Batch(queue="q", id="b", attempt=1, reason=FlushReason.SIZE, created_ms=0,
                 entries=entries)


@pytest.fixture(autouse=True)
def fresh_output_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(llm, "OUTPUT", llm._OutputModel())


@pytest.fixture
def serve(monkeypatch: pytest.MonkeyPatch) -> Iterator[Serve]:
    servers: list[FakeLLMServer] = []
    for name in list(__import__("os").environ):
        if name.startswith("LLM_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("LLM_TIMEOUT_SECONDS", "5")

    def start(*misbehave: str, **kwargs: Any) -> FakeLLMServer:
        options = FakeLLMOptions(base_latency_ms=0, per_entry_ms=0, misbehave=misbehave,
                                 misbehave_rate=kwargs.pop("rate", 1.0),
                                 rng=random.Random(kwargs.pop("seed", 3)), **kwargs)
        server, url = serve_fake_llm(options=options)
        servers.append(server)
        monkeypatch.setenv("LLM_BASE_URL", url)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("kind", ["fences", "prose"])
def test_fences_and_prose_around_the_json_lose_nothing(serve: Serve, kind: str) -> None:
    server = serve(kind)
    outcome = llm.summarize(make_batch(6))
    assert server.misbehaved[kind] == 1
    assert len(outcome.results) == 6 and not outcome.failed


def test_a_truncated_reply_keeps_complete_results_and_resends_only_the_missing(
    serve: Serve,
) -> None:
    server = serve("truncate", rate=0.4, seed=1)  # the first reply is cut off
    outcome = llm.summarize(make_batch(10))
    first_reply = server.request_sizes[0]
    assert first_reply == 10 and server.misbehaved["truncate"] == 1
    assert len(outcome.results) == 10 and not outcome.failed
    # the re-sent requests carry only what the cut-off reply lacked
    assert sum(server.request_sizes[1:]) < 10 * (len(server.request_sizes) - 1)
    assert outcome.usage["llm_truncated"] == server.misbehaved["truncate"]


def test_an_output_token_limit_is_learned_so_the_next_batch_is_split_ahead(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = serve()
    monkeypatch.setenv("LLM_MAX_TOKENS", "120")
    first = llm.summarize(make_batch(12))
    assert len(first.results) == 12 and first.usage["llm_truncated"] == 1
    requests_before = server.requests
    second = llm.summarize(make_batch(12))
    assert len(second.results) == 12 and second.usage.get("llm_truncated") == 0
    assert server.requests - requests_before > 1  # split before sending, nothing cut off
    for body in server.bodies:
        assert body["max_completion_tokens"] == 120 and "max_tokens" not in body


@pytest.mark.parametrize("mark, prefix", [(REJECT_MARK, "LLM API rejected the request: 400"),
                                          (REFUSE_MARK, llm.REFUSED_PREFIX)])
def test_a_marked_entry_is_bisected_out_and_dead_at_once_the_rest_succeed(
    serve: Serve, mark: str, prefix: str
) -> None:
    serve()
    outcome = llm.summarize(make_batch(8, {5: mark}))
    assert set(outcome.rejected) == {"e5"}
    assert outcome.rejected["e5"].startswith(prefix)
    assert len(outcome.results) == 7 and not outcome.failed
    # 8 -> 4 -> 2 -> 1: three bisections, each sending both halves
    assert (outcome.usage["llm_bisections"], outcome.usage["llm_requests"]) == (3, 1 + 2 * 3)


def test_omitted_entries_are_retried_not_dead(serve: Serve) -> None:
    serve("omit")
    outcome = llm.summarize(make_batch(5))
    assert list(outcome.failed.values()) == ["omitted by the model"]
    assert not outcome.rejected


@pytest.mark.parametrize("kind, reason", [("quota", llm_client.QUOTA_EXHAUSTED),
                                          ("auth", llm_client.AUTH_REJECTED)])
def test_quota_and_auth_pause_the_queue_with_the_reason(
    serve: Serve, monkeypatch: pytest.MonkeyPatch, kind: str, reason: str
) -> None:
    serve(kind, outage_every=1, outage_seconds=60)
    monkeypatch.setenv("LLM_PAUSE_PROBE_SEC", "42")
    with pytest.raises(QueuePaused) as caught:
        llm.summarize(make_batch(3))
    assert caught.value.reason == reason and caught.value.probe_after_seconds == 42
    assert ("insufficient_quota" if kind == "quota" else "invalid_api_key") in str(caught.value)


def test_each_rate_limit_header_style_gives_the_wait(serve: Serve) -> None:
    serve(rate_limit_every=1, retry_after_seconds=3)
    waits = []
    for _ in range(3):  # retry-after-ms, Retry-After, x-ratelimit-reset-requests in turn
        with pytest.raises(RateLimited) as caught:
            llm.summarize(make_batch(2))
        waits.append(caught.value.retry_after_seconds)
    assert waits == [3, 3, 3]


def test_overloaded_rate_limits_and_a_500_is_an_ordinary_failure(serve: Serve) -> None:
    server = serve("overloaded")
    with pytest.raises(RateLimited):
        llm.summarize(make_batch(2))
    server.options.misbehave = ("error500",)
    with pytest.raises(llm.LLMError) as caught:
        llm.summarize(make_batch(2))
    assert caught.value.status_code == 500 and not isinstance(caught.value, llm.LLMRejected)


def test_json_object_without_the_word_json_is_refused_by_the_fake_as_by_openai(
    serve: Serve,
) -> None:
    server = serve()
    req = urllib.request.Request(
        f"{server.base_url}/v1/chat/completions", method="POST",
        data=json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                         "response_format": {"type": "json_object"}}).encode())
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(req, timeout=5)
    error = json.loads(caught.value.read())["error"]
    assert caught.value.code == 400 and error["param"] == "messages"


def test_usage_and_cost_are_reported_and_observers_see_headers(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    serve()
    monkeypatch.setenv("LLM_PRICE_INPUT_PER_MTOK", "1.0")
    monkeypatch.setenv("LLM_PRICE_OUTPUT_PER_MTOK", "4.0")
    seen: list[llm_client.ResponseInfo] = []
    monkeypatch.setattr(llm_client, "RESPONSE_OBSERVERS", [seen.append])
    usage = llm.summarize(make_batch(4)).usage
    assert usage["llm_prompt_tokens"] > usage["llm_cached_tokens"] > 0
    expected = (usage["llm_prompt_tokens"] + 4 * usage["llm_completion_tokens"]) / 1e6
    assert usage["llm_cost_usd"] == pytest.approx(expected)
    assert len(seen) == 1 and seen[0].usage is not None
    assert seen[0].headers["x-ratelimit-remaining-requests"]


def test_every_request_follows_the_reference_schema_and_every_reply_parses(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = serve()
    params = TypeAdapter(CompletionCreateParamsNonStreaming)
    for fmt in ("json_schema", "json_object", "text"):
        monkeypatch.setenv("LLM_RESPONSE_FORMAT", fmt)
        llm.summarize(make_batch(3, {1: REFUSE_MARK}))
    for body in server.bodies:
        params.validate_python(body, strict=False)
        assert set(body) <= {"model", "messages", "temperature", "response_format",
                             "max_completion_tokens"}
    settings = llm.LLMSettings.from_env()
    raw = llm_client.get_client(settings.client).chat.completions.with_raw_response.create(
        **llm.request_body(settings, make_batch(1).entries))
    reply = json.loads(raw.text)
    ChatCompletion.model_validate(reply)
    choice = reply["choices"][0]
    assert {"index", "message", "logprobs", "finish_reason"} <= set(choice)
    assert {"role", "content", "refusal"} <= set(choice["message"])
    assert {"prompt_tokens", "completion_tokens", "total_tokens"} <= set(reply["usage"])
    with urllib.request.urlopen(f"{server.base_url}/v1/models", timeout=5) as answer:
        model = json.loads(answer.read())["data"][0]
    assert {"id", "object", "created", "owned_by"} <= set(model)


def test_a_worker_turns_a_quota_pause_into_a_queue_pause_shown_by_stats(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    serve("quota", outage_every=1, outage_seconds=60)
    manager = make_manager(size_threshold=5, min_batch_size=1, max_attempts=1)
    manager.queue_many([{"id": f"e{i}", "source": "s", "priority": 0,
                         "payload": {"title": f"t{i}"}} for i in range(3)])
    run_pending(manager, llm.summarize)
    stats = detailed_stats(manager.redis, manager.config, check_workers=False)
    assert stats["buffer"]["paused_reason"] == llm_client.QUOTA_EXHAUSTED
    assert stats["counters"]["pauses"] == 1 and stats["counters"]["dead"] == 0
    assert stats["health"]["status"] == "critical"
    assert any("LLM quota exhausted" in r for r in stats["health"]["reasons"])


def test_a_worker_acks_dead_letters_the_rejected_and_records_token_usage(serve: Serve) -> None:
    serve()
    manager = make_manager(size_threshold=5, min_batch_size=1)
    manager.queue_many([{"id": f"e{i}", "source": "s", "priority": 0,
                         "payload": {"title": f"t{i} {REJECT_MARK if i == 2 else ''}"}}
                        for i in range(4)])
    run_pending(manager, llm.summarize)
    stats = detailed_stats(manager.redis, manager.config, check_workers=False)
    assert stats["counters"]["acked"] == 3 and stats["counters"]["dead_rejected"] == 1
    llm_stats = stats["llm"]
    assert llm_stats["requests"] == 1 + 2 * 2  # 4 -> 2 -> 1 isolates e2
    assert llm_stats["completion_tokens"] > 0  # the fake counts its own words
    assert llm_stats["tokens_per_entry"] == round(
        (llm_stats["prompt_tokens"] + llm_stats["completion_tokens"]) / 3, 1)  # per acked


def test_a_slow_answer_past_the_timeout_is_an_ordinary_failure(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    serve("slow", slow_ms=1500)
    monkeypatch.setenv("LLM_TIMEOUT_SECONDS", "0.3")
    with pytest.raises(llm.LLMTimeoutError):
        llm.summarize(make_batch(2))


@pytest.mark.parametrize("kind, status", [("ratelimit", 429), ("overloaded", 503),
                                          ("error500", 500), ("quota", 429), ("auth", 401)])
def test_error_bodies_have_the_reference_fields(serve: Serve, kind: str, status: int) -> None:
    server = serve(kind, outage_every=1)
    req = urllib.request.Request(
        f"{server.base_url}/v1/chat/completions", method="POST",
        data=json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode())
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(req, timeout=5)
    assert caught.value.code == status
    error = json.loads(caught.value.read())["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and isinstance(error["type"], str)
