"""An OpenAI-compatible LLM handler: one chat completion per batch, results mapped back by id.

Talks through the official ``openai`` client (``batcher.llm.client``), so it works against
OpenAI and, through ``LLM_BASE_URL``, vLLM, Ollama and llama.cpp's server. Settings come from the
environment (``LLM_*``), read at each call so a worker picks them up without a restart.

What a batch's requests can end in, and what the handler does (docs/architecture.md, LLM):
a rejected request (400/404/413/422) or a refusal is bisected down to the entries that cause
it, which go to ``dead`` at once with the provider's words; a reply cut off by the token limit
(``finish_reason: "length"``) keeps every complete result and re-sends only the missing
entries in smaller requests; omitted or garbled entries are retried; rate limits, exhausted
quota and rejected credentials pause the queue (no attempt spent).
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import structlog

from batcher import tracing
from batcher.errors import ConfigError
from batcher.llm.client import (
    ClientSettings,
    Completion,
    LLMError,
    LLMRejected,
    LLMTimeoutError,
    Usage,
    api_base_url,
    complete,
    retry_after_seconds,
)
from batcher.llm.prompt import (
    CATEGORIES,
    ResponseFormat,
    build_prompt,
    entry_text,
    estimate_tokens,
    map_results,
    parse_entry_lines,
    parse_reply,
    response_format_param,
    salvage_results,
    validate_result,
)
from batcher.models import Batch, BatchOutcome, Entry

__all__ = ["CATEGORIES", "LLMError", "LLMRejected", "LLMSettings", "LLMTimeoutError",
           "api_base_url", "build_prompt", "estimate_tokens", "expected_output_tokens",
           "map_results",
           "parse_entry_lines", "parse_reply", "retry_after_seconds", "split_entries",
           "summarize", "validate_result"]

log = structlog.stdlib.get_logger(__name__)

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
DEFAULT_MODEL = "gpt-4o-mini"
DEFAULT_TIMEOUT_SECONDS = 60.0
DEFAULT_MAX_PROMPT_TOKENS = 6000
DEFAULT_PAUSE_PROBE_SECONDS = 60.0
RESPONSE_FORMATS = ("json_schema", "json_object", "text")
# a split leaves this share of the output limit as headroom over the learned tokens per entry
OUTPUT_HEADROOM = 0.8
REFUSED_PREFIX = "refused by the model: "
OUTPUT_TOKENS_PER_ENTRY = 40  # a result object (id, summary, category, importance), unlearned


@dataclass(frozen=True, slots=True)
class LLMSettings:
    base_url: str = DEFAULT_BASE_URL
    api_key: str | None = None
    model: str = DEFAULT_MODEL
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS
    max_tokens: int | None = None
    response_format: ResponseFormat = "json_schema"
    pause_probe_seconds: float = DEFAULT_PAUSE_PROBE_SECONDS
    price_input_per_mtok: float = 0.0
    price_cached_input_per_mtok: float | None = None
    price_output_per_mtok: float = 0.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> LLMSettings:
        """Read ``LLM_*``; raises ConfigError naming the variable on a bad value."""
        env = os.environ if env is None else env
        max_tokens = env.get("LLM_MAX_TOKENS", "")
        cached = env.get("LLM_PRICE_CACHED_INPUT_PER_MTOK", "").strip()
        return cls(
            base_url=env.get("LLM_BASE_URL", "") or DEFAULT_BASE_URL,
            api_key=env.get("LLM_API_KEY") or None,
            model=env.get("LLM_MODEL", "") or DEFAULT_MODEL,
            timeout_seconds=_number(env, "LLM_TIMEOUT_SECONDS", DEFAULT_TIMEOUT_SECONDS),
            max_prompt_tokens=int(
                _number(env, "LLM_MAX_PROMPT_TOKENS", DEFAULT_MAX_PROMPT_TOKENS)
            ),
            max_tokens=int(_number(env, "LLM_MAX_TOKENS", 1)) if max_tokens else None,
            response_format=_response_format(env),
            pause_probe_seconds=_number(env, "LLM_PAUSE_PROBE_SEC", DEFAULT_PAUSE_PROBE_SECONDS),
            price_input_per_mtok=_number(env, "LLM_PRICE_INPUT_PER_MTOK", 0.0, zero=True),
            price_cached_input_per_mtok=(
                _number(env, "LLM_PRICE_CACHED_INPUT_PER_MTOK", 0.0, zero=True)
                if cached else None),
            price_output_per_mtok=_number(env, "LLM_PRICE_OUTPUT_PER_MTOK", 0.0, zero=True),
        )

    @property
    def client(self) -> ClientSettings:
        return ClientSettings(self.base_url, self.api_key, self.timeout_seconds,
                              self.pause_probe_seconds)

    def cost_usd(self, usage: Usage) -> float:
        """The estimated price of ``usage`` (cached prompt tokens at their own price if set)."""
        cached_price = (self.price_input_per_mtok if self.price_cached_input_per_mtok is None
                        else self.price_cached_input_per_mtok)
        fresh = usage.prompt_tokens - usage.cached_tokens
        return (fresh * self.price_input_per_mtok + usage.cached_tokens * cached_price
                + usage.completion_tokens * self.price_output_per_mtok) / 1e6


def _number(env: Mapping[str, str], name: str, default: float, *, zero: bool = False) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return float(default)
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value < 0 or (value == 0 and not zero):
        raise ConfigError(f"{name}={raw!r}: must be a number {'>= 0' if zero else '> 0'}")
    return value


def _response_format(env: Mapping[str, str]) -> ResponseFormat:
    raw = env.get("LLM_RESPONSE_FORMAT", "").strip().lower()
    if not raw:
        # LLM_JSON_MODE=1, the older switch, still asks for json_object
        legacy = env.get("LLM_JSON_MODE", "").strip().lower() in {"1", "true", "yes", "on"}
        return "json_object" if legacy else "json_schema"
    if raw == "none":
        raw = "text"
    if raw not in RESPONSE_FORMATS:
        raise ConfigError(f"LLM_RESPONSE_FORMAT={raw!r}: must be one of "
                          f"{', '.join(RESPONSE_FORMATS)}")
    return cast(ResponseFormat, raw)


# --- what was learned about output size ----------------------------------------------------


class _OutputModel:
    """Completion tokens per entry, learned from replies, so a split leaves room for the answer.

    ``ceiling`` is the output limit: LLM_MAX_TOKENS when set, else the size at which the
    server last cut a reply off.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.tokens_per_entry: float | None = None
        self.ceiling: int | None = None

    def learn(self, tokens: int, entries: int, *, truncated: bool) -> None:
        if entries <= 0 or tokens <= 0:
            if truncated and tokens > 0:
                with self.lock:
                    self.ceiling = tokens
            return
        per = tokens / entries
        with self.lock:
            old = self.tokens_per_entry
            # the worst recent figure counts most: a split sized on the average truncates half
            self.tokens_per_entry = per if old is None else max(per, 0.7 * old + 0.3 * per)
            if truncated:
                self.ceiling = tokens

    def max_entries(self, max_tokens: int | None) -> int | None:
        with self.lock:
            ceiling = max_tokens or self.ceiling
            if ceiling is None or not self.tokens_per_entry:
                return None
            return max(1, int(ceiling * OUTPUT_HEADROOM / self.tokens_per_entry))


OUTPUT = _OutputModel()


def split_entries(
    entries: Sequence[Entry],
    max_prompt_tokens: int,
    *,
    response_format: ResponseFormat = "text",
    max_entries: int | None = None,
) -> list[list[Entry]]:
    """Greedy chunks whose prompt fits ``max_prompt_tokens`` and of at most ``max_entries``.

    One chunk when all fit. An entry too big on its own still gets a chunk (its text is
    already truncated).
    """
    base_chars = sum(len(m["content"]) for m in build_prompt([], response_format))
    budget_chars = max(0, (max_prompt_tokens - 8) * 4 - base_chars)
    chunks: list[list[Entry]] = []
    current: list[Entry] = []
    used = 0
    for entry in entries:
        cost = len(entry_text(entry)) + 1
        full = max_entries is not None and len(current) >= max_entries
        if current and (used + cost > budget_chars or full):
            chunks.append(current)
            current, used = [], 0
        current.append(entry)
        used += cost
    if current:
        chunks.append(current)
    return chunks


# --- one batch ------------------------------------------------------------------------------


def expected_output_tokens(settings: LLMSettings, n_entries: int) -> int:
    """What a budget reserves for the reply: the learned tokens per entry (40 before any
    reply), capped by ``LLM_MAX_TOKENS``; the settle step corrects it with the real usage."""
    per_entry = OUTPUT.tokens_per_entry or OUTPUT_TOKENS_PER_ENTRY
    guess = int(per_entry * max(1, n_entries)) + 1
    return min(guess, settings.max_tokens) if settings.max_tokens else guess


def request_body(settings: LLMSettings, entries: Sequence[Entry]) -> dict[str, Any]:
    """The chat-completion request for ``entries`` (its JSON body's fields)."""
    body: dict[str, Any] = {
        "model": settings.model,
        "messages": build_prompt(entries, settings.response_format),
        "temperature": 0,
    }
    response_format = response_format_param(settings.response_format)
    if response_format is not None:
        body["response_format"] = response_format
    if settings.max_tokens:
        body["max_completion_tokens"] = settings.max_tokens  # max_tokens is deprecated
    return body


@dataclass
class _Run:
    """What one batch has gathered so far, over all its requests."""

    results: dict[str, Any] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    dead: dict[str, str] = field(default_factory=dict)
    usage: Usage = Usage()
    requests: int = 0
    request_seconds: float = 0.0
    truncated: int = 0
    refusals: int = 0
    bisections: int = 0

    def figures(self, settings: LLMSettings) -> dict[str, float]:
        u = self.usage
        return {"llm_requests": self.requests, "llm_prompt_tokens": u.prompt_tokens,
                "llm_completion_tokens": u.completion_tokens,
                "llm_cached_tokens": u.cached_tokens,
                "llm_request_ms": round(self.request_seconds * 1000, 3),
                "llm_entries": len(self.results), "llm_truncated": self.truncated,
                "llm_refusals": self.refusals, "llm_bisections": self.bisections,
                "llm_cost_usd": round(settings.cost_usd(u), 9)}


def _halves(chunk: list[Entry]) -> list[list[Entry]]:
    mid = len(chunk) // 2
    return [chunk[:mid], chunk[mid:]]


def _take_reply(settings: LLMSettings, run: _Run, chunk: list[Entry], reply: Completion,
                queue: deque[list[Entry]]) -> None:
    ids = [e.id for e in chunk]
    truncated = reply.finish_reason == "length"
    parsed = salvage_results(reply.content) if truncated else _parse_or_none(reply.content)
    items = parsed or []
    outcome = map_results(ids, items)
    OUTPUT.learn(reply.usage.completion_tokens, len(outcome.results) if truncated else len(ids),
                 truncated=truncated)
    run.results.update(outcome.results)
    if not truncated:
        if parsed is None:
            run.failed.update({i: f"unparseable reply: {reply.content[:120]!r}" for i in ids})
        else:
            run.failed.update(outcome.failed)
        return
    run.truncated += 1
    missing = [e for e in chunk if e.id not in outcome.results]
    if len(missing) == len(chunk) == 1:
        run.failed[chunk[0].id] = "reply cut off by the output token limit"
        return
    # re-send only the missing entries, in requests small enough for what was learned; a reply
    # that kept nothing is halved at least, so every round makes progress
    most = len(missing) if len(missing) < len(chunk) else max(1, len(chunk) // 2)
    size = min(OUTPUT.max_entries(settings.max_tokens) or most, most)
    queue.extend(missing[i:i + size] for i in range(0, len(missing), size))


def _parse_or_none(content: str) -> list[Any] | None:
    try:
        return parse_reply(content)
    except ValueError:
        return None


def _one_request(settings: LLMSettings, run: _Run, chunk: list[Entry],
                 queue: deque[list[Entry]]) -> None:
    """Send ``chunk``; a rejected or refused request of several entries is bisected."""
    try:
        body = request_body(settings, chunk)
        with tracing.client_span(settings.model, server_address=settings.client.base_url):
            reply = complete(settings.client, body,
                             input_tokens=estimate_tokens(body["messages"]),
                             expected_output_tokens=expected_output_tokens(settings,
                                                                           len(chunk)))
    except LLMRejected as exc:
        run.requests += 1
        if len(chunk) > 1:
            run.bisections += 1
            queue.extendleft(reversed(_halves(chunk)))
        else:
            run.dead[chunk[0].id] = str(exc)
        return
    run.requests += 1
    run.usage += reply.usage
    run.request_seconds += reply.elapsed_seconds
    if reply.refusal:
        run.refusals += 1
        if len(chunk) > 1:
            run.bisections += 1
            queue.extendleft(reversed(_halves(chunk)))
        else:
            # a model's refusal of one entry is its answer: asking again gets the same one
            run.dead[chunk[0].id] = REFUSED_PREFIX + reply.refusal
        return
    _take_reply(settings, run, chunk, reply, queue)


def summarize(batch: Batch) -> BatchOutcome:
    """Summarise, categorise and rate a batch: one request, or more when it must be split.

    Raises RateLimited (the queue waits) or QueuePaused (quota, credentials) at once: the batch
    is redone after the pause, no attempt spent. Raises LLMTimeoutError or LLMError when the
    first request fails; when a later one fails, what finished is kept and the rest is retried.
    """
    settings = LLMSettings.from_env()
    queue: deque[list[Entry]] = deque(split_entries(
        batch.entries, settings.max_prompt_tokens, response_format=settings.response_format,
        max_entries=OUTPUT.max_entries(settings.max_tokens)))
    started = time.monotonic()
    run = _Run()
    while queue:
        chunk = queue.popleft()
        try:
            _one_request(settings, run, chunk, queue)
        except LLMError as exc:
            if run.requests == 0:
                raise
            # keep the answers already paid for; the rest back off and come round again
            run.failed.update({e.id: str(exc) for c in (chunk, *queue) for e in c})
            break
    log.info(
        "llm.batch_summarized", queue=batch.queue, batch_id=batch.id, size=len(batch),
        requests=run.requests, succeeded=len(run.results), failed=len(run.failed),
        dead=len(run.dead), truncated=run.truncated, refusals=run.refusals,
        prompt_tokens=run.usage.prompt_tokens, completion_tokens=run.usage.completion_tokens,
        elapsed_ms=round((time.monotonic() - started) * 1000))
    failed = {i: e for i, e in run.failed.items() if i not in run.results}
    return BatchOutcome(results=run.results, failed=failed, rejected=run.dead,
                        usage=run.figures(settings))
