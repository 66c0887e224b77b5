"""Every call to the LLM goes through here: the official ``openai`` client, errors classified once.

The client runs with ``max_retries=0``: the batcher owns retries, back-off and pauses, so a
failure must reach it at once, classified by what will fix it (:func:`classify`):

- rate limited (429 rate limit, 503 / 529 overloaded): ``RateLimited`` for the wait the
  provider asked for (``retry-after-ms``, ``Retry-After`` in seconds or an HTTP date, then
  ``x-ratelimit-reset-*``, in that order);
- quota or billing exhausted (429 ``insufficient_quota``, 402), auth rejected (401 / 403):
  ``QueuePaused`` with the reason; no attempt is spent and the queue probes again later;
- the request rejected (400 / 404 / 413 / 422): ``LLMRejected``, never retried as is;
- anything else (5xx, timeout, connection refused): ``LLMError``, retried with back-off.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import openai
import structlog

from batcher import budget_guard
from batcher.errors import QueuePaused, RateLimited

log = structlog.stdlib.get_logger(__name__)

DEFAULT_RETRY_AFTER_SECONDS = 5.0
MAX_RETRY_AFTER_SECONDS = 3600.0
QUOTA_EXHAUSTED = "LLM quota exhausted"
AUTH_REJECTED = "LLM auth rejected"
# OpenAI's codes for "no money left" (a 429 that waiting will not fix)
_QUOTA_CODES = {"insufficient_quota", "billing_hard_limit_reached", "billing_not_active",
                "quota_exceeded"}
_REJECTED_STATUSES = {400, 404, 413, 422}
_OVERLOADED_STATUSES = {503, 529}
# OpenAI's reset durations: "1s", "6m0s", "20ms", "1h2m3.5s"
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


class LLMError(Exception):
    """The LLM server failed (5xx, timeout, unreadable reply); the batch is retried."""

    def __init__(self, message: str, status_code: int | None = None):
        super().__init__(message)
        self.status_code = status_code


class LLMTimeoutError(LLMError):
    """The LLM server did not answer within ``LLM_TIMEOUT_SECONDS``."""


class LLMRejected(LLMError):
    """The provider refused the request itself (400/404/413/422): sending it again is futile."""


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.prompt_tokens + other.prompt_tokens,
                     self.completion_tokens + other.completion_tokens,
                     self.cached_tokens + other.cached_tokens)


@dataclass(frozen=True, slots=True)
class ResponseInfo:
    """What every observer in ``RESPONSE_OBSERVERS`` receives, once per HTTP response."""

    model: str
    status_code: int
    headers: Mapping[str, str]
    usage: Usage | None
    elapsed_seconds: float


@dataclass(frozen=True, slots=True)
class Completion:
    content: str
    finish_reason: str | None
    refusal: str | None
    usage: Usage
    elapsed_seconds: float
    headers: Mapping[str, str] = field(default_factory=dict)


# Callables run after every response (success or error), e.g. a token budget. An observer that
# raises is logged and skipped: bookkeeping never fails a batch.
RESPONSE_OBSERVERS: list[Callable[[ResponseInfo], None]] = []


@dataclass(frozen=True, slots=True)
class ClientSettings:
    base_url: str
    api_key: str | None
    timeout_seconds: float
    pause_probe_seconds: float = 60.0


def api_base_url(base_url: str) -> str:
    """``http://h:8000``, ``http://h:8000/`` and ``http://h:8000/v1`` all give ``.../v1``."""
    base = base_url.strip().rstrip("/")
    return base if base.endswith("/v1") else f"{base}/v1"


_clients: dict[tuple[int, str, str | None, float], openai.OpenAI] = {}
_clients_lock = threading.Lock()


def get_client(settings: ClientSettings) -> openai.OpenAI:
    """One pooled client per process and settings (a forked worker makes its own)."""
    key = (os.getpid(), api_base_url(settings.base_url), settings.api_key,
           settings.timeout_seconds)
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            client = openai.OpenAI(
                base_url=key[1],
                # local servers (vLLM, Ollama, llama.cpp) need no key; the client insists on one
                api_key=settings.api_key or "no-key",
                timeout=settings.timeout_seconds,
                max_retries=0,
            )
            _clients[key] = client
        return client


# --- waits --------------------------------------------------------------------------------


def _duration_seconds(value: str) -> float | None:
    value = value.strip()
    try:
        return float(value)
    except ValueError:
        pass
    parts = _DURATION_PART.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value:
        return None
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)


def _http_date_seconds(value: str, now: datetime | None) -> float | None:
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return (when - (now or datetime.now(UTC))).total_seconds()


def retry_after_seconds(headers: Mapping[str, str], *, now: datetime | None = None) -> float:
    """The wait a 429/503 asks for: ``retry-after-ms``, ``Retry-After``, ``x-ratelimit-reset-*``.

    The first header present and readable wins; the default when none is.
    """
    h = {k.lower(): v for k, v in headers.items()}
    wait: float | None = None
    if h.get("retry-after-ms", "").strip():
        try:
            wait = float(h["retry-after-ms"]) / 1000
        except ValueError:
            wait = None
    if wait is None and h.get("retry-after", "").strip():
        raw = h["retry-after"].strip()
        try:
            wait = float(raw)
        except ValueError:
            wait = _http_date_seconds(raw, now)
    if wait is None:
        resets = [_duration_seconds(h[name]) for name in
                  ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens") if h.get(name)]
        known = [r for r in resets if r is not None]
        wait = max(known) if known else None
    if wait is None:
        return DEFAULT_RETRY_AFTER_SECONDS
    return min(MAX_RETRY_AFTER_SECONDS, max(0.0, wait))


# --- classification ----------------------------------------------------------------------


def _error_text(exc: openai.APIStatusError) -> str:
    body = exc.body
    message = body.get("message") if isinstance(body, dict) else None
    text = str(message or exc.message or "")
    code = exc.code or (body.get("type") if isinstance(body, dict) else None)
    return f"{exc.status_code} {code}: {text}" if code else f"{exc.status_code}: {text}"


def _about_response_format(exc: openai.APIStatusError) -> bool:
    return exc.param == "response_format" or "response_format" in str(exc.message)


def classify(exc: Exception, probe_after_seconds: float = 60.0) -> Exception:
    """The one exception the batcher acts on for a failed call (see the module docstring)."""
    if isinstance(exc, openai.APITimeoutError):
        return LLMTimeoutError(f"LLM request timed out: {exc}")
    if isinstance(exc, openai.APIConnectionError):
        return LLMError(f"LLM server unreachable: {exc}")
    if not isinstance(exc, openai.APIStatusError):
        return LLMError(f"LLM call failed: {type(exc).__name__}: {exc}")
    status, text = exc.status_code, _error_text(exc)
    kind = {exc.code, exc.type}
    if status == 402 or (status == 429 and kind & _QUOTA_CODES):
        return QueuePaused(QUOTA_EXHAUSTED, probe_after_seconds, text)
    if status in (401, 403):
        return QueuePaused(AUTH_REJECTED, probe_after_seconds, text)
    if status == 429 or status in _OVERLOADED_STATUSES:
        wait = retry_after_seconds(exc.response.headers)
        return RateLimited(wait, f"LLM server answered {text}; retry after {wait:g}s")
    if status in _REJECTED_STATUSES and _about_response_format(exc):
        # the server cannot do structured output: no entry is at fault, so no bisection
        return LLMError(f"LLM server refused the response_format ({text}); set "
                        "LLM_RESPONSE_FORMAT=json_object or text", status_code=status)
    if status in _REJECTED_STATUSES:
        return LLMRejected(f"LLM API rejected the request: {text}", status_code=status)
    return LLMError(f"LLM server answered {text}", status_code=status)


def _notify(info: ResponseInfo) -> None:
    for observer in list(RESPONSE_OBSERVERS):
        try:
            observer(info)
        except Exception as exc:  # noqa: BLE001 - an observer never fails a batch
            log.warning("llm.observer_failed", observer=repr(observer), error=repr(exc))


def _usage(raw: Any) -> Usage:
    if raw is None:
        return Usage()
    details = getattr(raw, "prompt_tokens_details", None)
    cached = getattr(details, "cached_tokens", None) if details is not None else None
    return Usage(int(raw.prompt_tokens or 0), int(raw.completion_tokens or 0), int(cached or 0))


def complete(settings: ClientSettings, request: Mapping[str, Any], *, input_tokens: int = 0,
             expected_output_tokens: int = 0) -> Completion:
    """Send one chat completion (``request`` holds its body's fields) and return its first choice.

    With a shared budget bound (``BATCH_BUDGET``, issue 17) the call first reserves
    ``input_tokens`` and ``expected_output_tokens`` (RateLimited when it must wait) and settles
    them afterwards with the real usage and the provider's rate-limit headers.
    Raises what :func:`classify` makes of a failure: RateLimited, QueuePaused, LLMRejected,
    LLMTimeoutError or LLMError.
    """
    client = get_client(settings)
    budget_guard.reserve_call(input_tokens, expected_output_tokens)
    started = time.monotonic()
    model = str(request.get("model", ""))
    try:
        raw = client.chat.completions.with_raw_response.create(**request)
        completion = raw.parse()
    except openai.APIStatusError as exc:
        headers = dict(exc.response.headers)
        budget_guard.report_usage(0, 0, headers)  # refused: its tokens come back
        _notify(ResponseInfo(model, exc.status_code, headers, None,
                             time.monotonic() - started))
        raise classify(exc, settings.pause_probe_seconds) from exc
    except openai.APITimeoutError as exc:
        budget_guard.report_usage(None, None, None)  # it may have run: keep the estimate
        raise classify(exc, settings.pause_probe_seconds) from exc
    except openai.OpenAIError as exc:
        budget_guard.report_usage(0, 0, None)
        raise classify(exc, settings.pause_probe_seconds) from exc
    elapsed = time.monotonic() - started
    headers = dict(raw.headers)
    raw_usage = getattr(completion, "usage", None)
    usage = _usage(raw_usage)
    if raw_usage is None:
        budget_guard.report_usage(None, None, headers)
    else:
        budget_guard.report_usage(usage.prompt_tokens, usage.completion_tokens, headers)
    _notify(ResponseInfo(model, raw.status_code, headers, usage, elapsed))
    if not getattr(completion, "choices", None):
        raise LLMError(f"completion without choices from {settings.base_url}")
    choice = completion.choices[0]
    message = choice.message
    return Completion(
        content=message.content if isinstance(message.content, str) else "",
        finish_reason=choice.finish_reason,
        refusal=getattr(message, "refusal", None) or None,
        usage=usage, elapsed_seconds=elapsed, headers=headers)
