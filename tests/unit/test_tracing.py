"""OpenTelemetry traces (batcher.tracing), recorded by the SDK's in-memory exporter.

The SDK provider is handed to batcher.tracing here, not installed globally: a global
provider would give every later test's envelopes a ``"tp"`` field.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from batcher import tracing
from batcher.llm import handler as llm
from batcher.llm.fake import serve_fake_llm
from batcher.models import Batch
from batcher.producer import build_envelope
from batcher.testing import make_manager, run_pending

MODEL = "tiny-test-model"


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(tracing, "_tracer", lambda: provider.get_tracer(tracing.TRACER_NAME))
    yield exporter
    provider.shutdown()


@pytest.fixture
def fake_llm(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    server, url = serve_fake_llm(base_latency_ms=0, per_entry_ms=0)
    monkeypatch.setenv("LLM_BASE_URL", url)
    monkeypatch.setenv("LLM_MODEL", MODEL)
    for name in ("LLM_API_KEY", "LLM_JSON_MODE", "LLM_MAX_TOKENS"):
        monkeypatch.delenv(name, raising=False)
    yield url
    server.shutdown()
    server.server_close()


def _named(spans: list[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def _entries(prefix: str, n: int) -> list[dict[str, Any]]:
    return [{"id": f"{prefix}{i}", "source": f"feed-{prefix}", "priority": 0,
             "payload": {"title": f"story {prefix}{i}", "summary": "text"}} for i in range(n)]


def test_a_batch_links_every_producer_span_and_parents_the_handler_and_llm_call(
    spans: InMemorySpanExporter, fake_llm: str,
) -> None:
    manager = make_manager(queue="traced", size_threshold=10, min_batch_size=1)
    tracer = tracing._tracer()
    with tracer.start_as_current_span("fetch feed a", kind=SpanKind.PRODUCER):
        manager.queue_many(_entries("a", 3))
    with tracer.start_as_current_span("fetch feed b", kind=SpanKind.PRODUCER):
        manager.queue_entry({"title": "story b0", "summary": "text"}, "feed-b", "b0")
    manager.queue_many(_entries("c", 1))  # no span active: nothing to link
    seen = run_pending(manager, llm.summarize)
    assert [len(b.entries) for b in seen] == [5]

    done = list(spans.get_finished_spans())
    producers = [s for s in done if s.name.startswith("fetch")]
    (process,) = _named(done, "process traced")
    assert process.kind is SpanKind.CONSUMER and process.parent is None
    assert sorted((link.context.trace_id, link.context.span_id) for link in process.links) == (
        sorted((s.context.trace_id, s.context.span_id) for s in producers))
    assert sorted(str(link.attributes["messaging.message.id"]) for link in process.links) == [
        "a0", "b0"]  # one link per producer span, naming its first entry
    attrs = process.attributes
    assert (attrs["messaging.system"], attrs["messaging.operation.type"],
            attrs["messaging.destination.name"], attrs["messaging.batch.message_count"],
            attrs["batcher.batch.attempt"], attrs["batcher.flush.reason"]) == (
        "redis-batcher", "process", "traced", 5, 1, "manual")

    (handle,) = _named(done, "handle traced")
    (chat,) = _named(done, f"chat {MODEL}")
    assert handle.parent is not None and handle.parent.span_id == process.context.span_id
    assert chat.parent is not None and chat.parent.span_id == handle.context.span_id
    assert chat.kind is SpanKind.CLIENT
    assert (chat.attributes["gen_ai.operation.name"],
            chat.attributes["gen_ai.request.model"]) == ("chat", MODEL)
    assert {chat.context.trace_id, handle.context.trace_id} == {process.context.trace_id}


def test_each_entry_carries_the_current_span_as_traceparent(
    spans: InMemorySpanExporter,
) -> None:
    manager = make_manager(queue="traced")
    with tracing._tracer().start_as_current_span("fetch"):
        manager.queue_many(_entries("c", 2))
    (fetch,) = spans.get_finished_spans()
    ctx = fetch.context
    want = f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"
    assert int(ctx.trace_flags) & 1  # sampled
    stored = [orjson.loads(v) for v in manager.redis.hvals(manager.keys.payloads)]
    assert [e["tp"] for e in stored] == [want, want]
    assert all(v.endswith(b',"tp":"' + want.encode() + b'"}')
               for v in manager.redis.hvals(manager.keys.payloads))  # last: prefix unchanged
    batches: list[Batch] = run_pending(manager, lambda b: None)
    assert {e.traceparent for e in batches[0].entries} == {want}


def test_a_failing_llm_call_marks_its_span_failed(
    spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LLM_BASE_URL", "http://127.0.0.1:1")  # nothing listens there
    monkeypatch.setenv("LLM_MODEL", MODEL)
    manager = make_manager(queue="traced", max_attempts=1)
    manager.queue_many(_entries("d", 1))
    run_pending(manager, llm.summarize)
    (chat,) = _named(list(spans.get_finished_spans()), f"chat {MODEL}")
    assert chat.status.status_code is StatusCode.ERROR
    assert chat.attributes["error.type"] == "LLMError"
    (handle,) = _named(list(spans.get_finished_spans()), "handle traced")
    assert handle.status.status_code is StatusCode.ERROR


def test_without_an_active_span_the_envelope_has_no_trace_field() -> None:
    # the API alone (no provider configured): no span is ever active, nothing is added
    assert tracing._tracer() is None and tracing.current_traceparent() is None
    _id, _p, envelope = build_envelope("x", "s", 0, {"k": 1}, index=0, max_entry_bytes=1000)
    assert b'"tp"' not in envelope
    manager = make_manager(queue="plain")
    manager.queue_many(_entries("e", 1))
    assert b'"tp"' not in manager.redis.hget(manager.keys.payloads, "e0")


def test_malformed_traceparents_are_ignored() -> None:
    for bad in (None, 7, "", "00-xyz", "01-" + "1" * 32 + "-" + "1" * 16 + "-01",
                "00-" + "0" * 32 + "-" + "1" * 16 + "-01"):
        assert tracing.parse_traceparent(bad) is None
    ctx = tracing.parse_traceparent("00-" + "a" * 32 + "-" + "b" * 16 + "-01")
    assert ctx is not None and ctx.is_remote and ctx.span_id == int("b" * 16, 16)


GLOBAL_PROVIDER = """
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from batcher import tracing
from batcher.testing import make_manager, run_pending
import orjson
exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
manager = make_manager(queue="g")
with trace.get_tracer("app").start_as_current_span("request"):
    manager.queue_many([{"id": "x", "source": "s", "priority": 0, "payload": {}}])
assert "tp" in orjson.loads(manager.redis.hget(manager.keys.payloads, "x"))
run_pending(manager, lambda b: None)
print(sorted(s.name for s in exporter.get_finished_spans()))
"""


def test_a_provider_set_the_usual_way_is_picked_up() -> None:
    # in a child process: a global provider would reach every later test of this one
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", GLOBAL_PROVIDER], capture_output=True,
                         text=True, check=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "['handle g', 'process g', 'request']"
