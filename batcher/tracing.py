"""OpenTelemetry traces, optional (the ``[otel]`` extra: opentelemetry-api, -sdk).

What is traced, following the OpenTelemetry messaging conventions:

- a producer's current span (a feed fetch, a web request: whatever span is active when it
  calls ``queue_entry`` / ``queue_many``) travels in each entry's envelope as a W3C
  ``traceparent`` string under ``"tp"``, added only when such a span is active, so an
  envelope without tracing is byte for byte what it was. No span is started per enqueue
  call: the hot path pays one context look-up;
- a batch is a ``process <queue>`` span (CONSUMER) that *links* to every producer span it
  holds (a batch has many parents, which links express and parent/child cannot), with
  ``messaging.batch.message_count`` and the batch's id, attempt and flush reason;
- the handler runs inside a ``handle <queue>`` span, a child of the batch span, and an LLM
  request inside it is a ``chat <model>`` CLIENT span (:func:`client_span`).

Without the packages, or with them but no SDK ``TracerProvider`` set, every function here is
a no-op that costs a flag test (no API no-op spans either: they cost ~20 µs each), no span
is ever active and no ``"tp"`` is written. Set up
an SDK ``TracerProvider`` (and an exporter) in your entry points as OpenTelemetry documents.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

from batcher.models import Batch

if TYPE_CHECKING:
    from opentelemetry.trace import Span

_ENABLED: bool
try:
    from opentelemetry import trace as _trace
    from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
    _ENABLED = True
except ImportError:  # pragma: no cover - exercised where the extra is not installed
    _ENABLED = False

SYSTEM = "redis-batcher"
TRACER_NAME = "redis-batcher"
# links beyond this are dropped by the SDK's default span limits anyway; keep the first ones
MAX_LINKS = 128


def enabled() -> bool:
    """Whether the OpenTelemetry API is installed."""
    return _ENABLED


_cached_tracer: Any = None
_ENV_PROVIDER = bool(os.environ.get("OTEL_PYTHON_TRACER_PROVIDER"))


def _tracer() -> Any:
    """Our tracer, or None while no SDK provider is set up: then a span would be a no-op
    that still costs ~20 µs, a price the worker's loop would pay per batch."""
    global _cached_tracer
    if _cached_tracer is None:
        # the global provider can be set once only: until it is, the API's is a no-op
        if getattr(_trace, "_TRACER_PROVIDER", object()) is None and not _ENV_PROVIDER:
            return None
        _cached_tracer = _trace.get_tracer(TRACER_NAME)
    return _cached_tracer


def traceparent(span: Span) -> str | None:
    """``span``'s context as a W3C traceparent, or None when it has no valid context."""
    ctx = span.get_span_context()
    if not ctx.is_valid:
        return None
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def parse_traceparent(value: object) -> SpanContext | None:
    """A remote ``SpanContext`` from a traceparent string; None for anything malformed."""
    if not _ENABLED or not isinstance(value, str) or len(value) != 55:
        return None
    version, trace_id, span_id, flags = (value.split("-") + ["", "", "", ""])[:4]
    try:
        tid, sid, fl = int(trace_id, 16), int(span_id, 16), int(flags, 16)
    except ValueError:
        return None
    if version != "00" or not tid or not sid:
        return None
    return SpanContext(tid, sid, is_remote=True, trace_flags=TraceFlags(fl))


def current_traceparent() -> str | None:
    """The current span's context as a traceparent (what a producer puts in its envelopes),
    or None when no valid span is active: then nothing is added."""
    if not _ENABLED or _tracer() is None:
        return None
    return traceparent(_trace.get_current_span())


def _links(batch: Batch) -> list[Link]:
    links: list[Link] = []
    seen: set[tuple[int, int]] = set()
    for entry in batch.entries:
        entry_id, tp = entry.id, entry.traceparent
        ctx = parse_traceparent(tp)
        # entries sent in one call share a producer span: link it once
        if ctx is None or (ctx.trace_id, ctx.span_id) in seen:
            continue
        seen.add((ctx.trace_id, ctx.span_id))
        links.append(Link(ctx, {"messaging.message.id": entry_id}))
        if len(links) == MAX_LINKS:
            break
    return links


@contextmanager
def batch_span(batch: Batch) -> Iterator[None]:
    """The ``process <queue>`` span of one batch attempt, linked to its producers' spans."""
    tracer = _tracer() if _ENABLED else None
    if tracer is None:
        yield
        return
    with tracer.start_as_current_span(
        f"process {batch.queue}", kind=SpanKind.CONSUMER, links=_links(batch),
        attributes={"messaging.system": SYSTEM, "messaging.operation.type": "process",
                    "messaging.operation.name": "process",
                    "messaging.destination.name": batch.queue,
                    "messaging.batch.message_count": len(batch.entries),
                    "batcher.batch.id": batch.id, "batcher.batch.attempt": batch.attempt,
                    "batcher.flush.reason": str(batch.reason)},
    ):
        yield


def producer_span(name: str, attributes: dict[str, Any]) -> Any:
    """A PRODUCER span (a feed fetch that enqueues what it found); its entries carry it."""
    tracer = _tracer() if _ENABLED else None
    if tracer is None:
        return nullcontext()
    return tracer.start_as_current_span(name, kind=SpanKind.PRODUCER,
                                           attributes={"messaging.system": SYSTEM,
                                                       **attributes})


def handler_span(queue: str, handler: str) -> Any:
    """The ``handle <queue>`` span around the handler call (a child of the batch span)."""
    tracer = _tracer() if _ENABLED else None
    if tracer is None:
        return nullcontext()
    return tracer.start_as_current_span(
        f"handle {queue}", kind=SpanKind.INTERNAL,
        attributes={"messaging.system": SYSTEM, "messaging.destination.name": queue,
                    "code.function.name": handler})


@contextmanager
def client_span(model: str, *, server_address: str | None = None,
                system: str = "openai") -> Iterator[None]:
    """A ``chat <model>`` CLIENT span around one LLM request (OpenTelemetry's gen-ai
    conventions); an exception marks the span failed and propagates."""
    tracer = _tracer() if _ENABLED else None
    if tracer is None:
        yield
        return
    attributes: dict[str, Any] = {"gen_ai.operation.name": "chat", "gen_ai.system": system,
                                  "gen_ai.request.model": model}
    if server_address:
        attributes["server.address"] = server_address
    with tracer.start_as_current_span(f"chat {model}", kind=SpanKind.CLIENT,
                                         attributes=attributes) as span:
        try:
            yield
        except BaseException as exc:
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            span.set_attribute("error.type", type(exc).__name__)
            raise
