"""An OpenAI-compatible LLM handler: one chat completion per batch, results mapped back by id.

Works unchanged against vLLM, Ollama and llama.cpp's server: the default request
carries only ``model``, ``messages`` and ``temperature``. Settings come from the
environment (``LLM_*``), read at each call so a worker picks them up without a restart.
"""

from __future__ import annotations

import html
import json
import os
import re
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import structlog

from batcher.errors import ConfigError, RateLimited
from batcher.models import Batch, BatchOutcome, Entry
from workers import budget_guard

log = structlog.stdlib.get_logger(__name__)

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
DEFAULT_MODEL = "gpt-4o-mini"
DEFAULT_TIMEOUT_SECONDS = 60.0
DEFAULT_MAX_PROMPT_TOKENS = 6000
DEFAULT_RETRY_AFTER_SECONDS = 5.0
OUTPUT_TOKENS_PER_ENTRY = 40  # a result object (id, summary, category, importance)
MAX_TITLE_CHARS = 300
MAX_TEXT_CHARS = 1000
CATEGORIES = "technology science business politics world sports health entertainment other".split()
_ENTRY_LINE = re.compile(r'^\[id=("(?:[^"\\]|\\.)*")\] title: ?(.*)$')
_TAG = re.compile(r"<[^>]+>")
_THINK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_FENCE = re.compile(r"```[A-Za-z]*")


class LLMError(Exception):
    """The LLM server failed (HTTP error, unreadable response); the batch is retried."""

    def __init__(self, message: str, status_code: int | None = None):
        super().__init__(message)
        self.status_code = status_code


class LLMTimeoutError(LLMError):
    """The LLM server did not answer within ``LLM_TIMEOUT_SECONDS``."""


@dataclass(frozen=True, slots=True)
class LLMSettings:
    base_url: str = DEFAULT_BASE_URL
    api_key: str | None = None
    model: str = DEFAULT_MODEL
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS
    max_tokens: int | None = None
    json_mode: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> LLMSettings:
        """Read ``LLM_*``; raises ConfigError naming the variable on a bad value."""
        env = os.environ if env is None else env
        max_tokens = env.get("LLM_MAX_TOKENS", "")
        return cls(
            base_url=env.get("LLM_BASE_URL", "") or DEFAULT_BASE_URL,
            api_key=env.get("LLM_API_KEY") or None,
            model=env.get("LLM_MODEL", "") or DEFAULT_MODEL,
            timeout_seconds=_positive(env, "LLM_TIMEOUT_SECONDS", DEFAULT_TIMEOUT_SECONDS),
            max_prompt_tokens=int(
                _positive(env, "LLM_MAX_PROMPT_TOKENS", DEFAULT_MAX_PROMPT_TOKENS)
            ),
            max_tokens=int(_positive(env, "LLM_MAX_TOKENS", 1)) if max_tokens else None,
            json_mode=env.get("LLM_JSON_MODE", "").strip().lower() in {"1", "true", "yes", "on"},
        )


def _positive(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return float(default)
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise ConfigError(f"{name}={raw!r}: must be a number > 0")
    return value


def completions_url(base_url: str) -> str:
    """``http://h:8000``, ``http://h:8000/`` and ``http://h:8000/v1`` all give the same URL."""
    base = base_url.strip().rstrip("/")
    if base.endswith("/v1"):
        base = base[: -len("/v1")]
    return f"{base}/v1/chat/completions"


# --- the prompt -------------------------------------------------------------------------


def _clean(text: str, limit: int) -> str:
    # One line per field: the fake server (and the model) read the prompt line by line.
    text = " ".join(html.unescape(_TAG.sub(" ", text)).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def format_entry(entry_id: str, title: str, text: str) -> str:
    """The two prompt lines of one entry; ``parse_entry_lines`` reads them back."""
    marker = json.dumps(entry_id, ensure_ascii=False)
    title, text = _clean(title, MAX_TITLE_CHARS), _clean(text, MAX_TEXT_CHARS)
    return f"[id={marker}] title: {title}\ntext: {text}"


def parse_entry_lines(prompt: str) -> list[tuple[str, str]]:
    """(id, title) of every entry in a prompt built by ``build_prompt``."""
    found = []
    for line in prompt.splitlines():
        match = _ENTRY_LINE.match(line)
        if match:
            found.append((str(json.loads(match.group(1))), match.group(2)))
    return found


def _entry_text(entry: Entry) -> str:
    payload = entry.payload
    title = str(payload.get("title") or "(untitled)")
    text = str(payload.get("summary") or payload.get("description") or payload.get("link") or "")
    return format_entry(entry.id, title, text)


def _instructions(json_mode: bool) -> str:
    shape = '{"results": [ ... ]}' if json_mode else "a JSON array"
    return (
        "You summarise news feed entries. For each entry write a one-sentence summary, "
        f"choose one category from: {', '.join(CATEGORIES)}; and rate its importance "
        "from 1 (trivial) to 5 (major news).\n"
        f"Reply with only {shape}, one object per entry, in the order given:\n"
        '[{"id": "<the entry id exactly as given>", "summary": "...", '
        '"category": "technology", "importance": 3}]\n'
        "No prose and no markdown."
    )


def build_prompt(entries: Sequence[Entry], *, json_mode: bool = False) -> list[dict[str, str]]:
    """The chat messages for ``entries``: instructions, then each entry with its id."""
    body = "\n".join(_entry_text(e) for e in entries)
    return [
        {"role": "system", "content": _instructions(json_mode)},
        {"role": "user", "content": f"Entries ({len(entries)}):\n{body}"},
    ]


def estimate_tokens(messages: Sequence[Mapping[str, str]]) -> int:
    """The chars/4 heuristic, plus a few tokens of chat template per message."""
    return sum(len(m["content"]) for m in messages) // 4 + 4 * len(messages)


def split_entries(
    entries: Sequence[Entry], max_prompt_tokens: int, *, json_mode: bool = False
) -> list[list[Entry]]:
    """Greedy chunks whose prompt fits ``max_prompt_tokens``; one chunk when all fit.

    An entry too big on its own still gets a chunk (its text is already truncated).
    """
    base_chars = sum(len(m["content"]) for m in build_prompt([], json_mode=json_mode))
    budget_chars = max(0, (max_prompt_tokens - 8) * 4 - base_chars)
    chunks: list[list[Entry]] = []
    current: list[Entry] = []
    used = 0
    for entry in entries:
        cost = len(_entry_text(entry)) + 1
        if current and used + cost > budget_chars:
            chunks.append(current)
            current, used = [], 0
        current.append(entry)
        used += cost
    if current:
        chunks.append(current)
    return chunks


# --- the reply --------------------------------------------------------------------------


def _usable(value: Any) -> list[Any] | None:
    """The result list inside a decoded value: a list of objects, or an object wrapping one."""
    if isinstance(value, list):
        return value if any(isinstance(v, dict) for v in value) or not value else None
    if isinstance(value, dict):
        for inner in value.values():
            if isinstance(inner, list) and any(isinstance(v, dict) for v in inner):
                return inner
        if "id" in value:  # a lone result, as JSON mode can give for one entry
            return [value]
    return None


def parse_reply(text: str) -> list[Any]:
    """The list of result objects in a model's reply; raises ValueError when there is none.

    Tolerates ```json fences, <think> blocks, prose around the JSON and an object
    wrapping the array (``{"results": [...]}``).
    """
    text = _FENCE.sub("", _THINK.sub("", text)).strip()
    decoder = json.JSONDecoder()
    starts = [i for i, ch in enumerate(text) if ch in "[{"][:500]
    for start in starts:
        try:
            value, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            continue
        found = _usable(value)
        if found is not None:
            return found
    raise ValueError(f"no JSON array of results in the reply: {text[:120]!r}")


def _importance(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int):
        return None
    return min(5, max(1, value))  # a 0 or a 6 is a scale slip, not a garbled answer


def validate_result(item: Mapping[str, Any]) -> dict[str, Any] | str:
    """The clean result of one reply object, or why it is unusable."""
    summary, category = item.get("summary"), item.get("category")
    if not isinstance(summary, str) or not summary.strip():
        return "missing or empty 'summary'"
    if not isinstance(category, str) or not category.strip():
        return "missing or empty 'category'"
    importance = _importance(item.get("importance"))
    if importance is None:
        return f"'importance' is not a number 1-5: {item.get('importance')!r}"
    return {
        "summary": summary.strip(),
        "category": category.strip().lower(),
        "importance": importance,
    }


def map_results(entry_ids: Sequence[str], items: Sequence[Any]) -> BatchOutcome:
    """Match reply objects to the batch by id; omitted or garbled entries go to ``failed``."""
    wanted = set(entry_ids)
    good: dict[str, Any] = {}
    errors: dict[str, str] = {}
    unknown = 0
    for item in items:
        raw_id = item.get("id") if isinstance(item, dict) else None
        # Models echo numeric-looking ids as numbers; a bool is never an id.
        valid = isinstance(raw_id, str | int) and not isinstance(raw_id, bool)
        item_id = str(raw_id) if valid else None
        if item_id is None or item_id not in wanted:
            unknown += 1
            continue
        checked = validate_result(item)
        if isinstance(checked, str):
            errors.setdefault(item_id, f"garbled result: {checked}")
        else:
            good.setdefault(item_id, checked)
    failed = {i: errors.get(i, "omitted by the model") for i in entry_ids if i not in good}
    if unknown:
        log.warning("llm.reply_items_ignored", count=unknown, reason="no id or an unknown id")
    return BatchOutcome(results={i: good[i] for i in entry_ids if i in good}, failed=failed)


# --- HTTP -------------------------------------------------------------------------------

_client: httpx.Client | None = None
_client_lock = threading.Lock()


def _get_client() -> httpx.Client:
    # One pooled client per process, made on first use so a forked worker makes its own.
    global _client
    with _client_lock:
        if _client is None:
            _client = httpx.Client(headers={"User-Agent": "redis-batcher-llm/0.1"})
        return _client


def retry_after_seconds(value: str | None, *, now: datetime | None = None) -> float:
    """Retry-After as seconds (delta-seconds or an HTTP date); the default when absent or bad."""
    if not value or not value.strip():
        return DEFAULT_RETRY_AFTER_SECONDS
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return DEFAULT_RETRY_AFTER_SECONDS
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def _request_body(settings: LLMSettings, messages: list[dict[str, str]]) -> dict[str, Any]:
    body: dict[str, Any] = {"model": settings.model, "messages": messages, "temperature": 0}
    if settings.json_mode:
        body["response_format"] = {"type": "json_object"}
    if settings.max_tokens:
        body["max_tokens"] = settings.max_tokens
    return body


def _usage(response: httpx.Response) -> tuple[int | None, int | None]:
    try:
        usage = response.json().get("usage") or {}
        return int(usage["prompt_tokens"]), int(usage["completion_tokens"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return None, None


def expected_output_tokens(settings: LLMSettings, n_entries: int) -> int:
    """What a budget reserves for the reply: ``LLM_MAX_TOKENS`` when set, else a guess per
    entry (the settle step corrects it with the real usage)."""
    guess = OUTPUT_TOKENS_PER_ENTRY * max(1, n_entries)
    return min(guess, settings.max_tokens) if settings.max_tokens else guess


def complete(settings: LLMSettings, messages: list[dict[str, str]],
             expected_output: int = 0) -> str:
    """POST one chat completion and return the message content.

    With a budget bound (``BATCH_BUDGET``) the call first reserves its estimated tokens and
    afterwards settles them with the reply's usage and rate-limit headers.
    Raises RateLimited on 429/503 or when the budget must refill first, LLMTimeoutError on a
    timeout, LLMError otherwise.
    """
    url = completions_url(settings.base_url)
    headers = {"Authorization": f"Bearer {settings.api_key}"} if settings.api_key else {}
    budget_guard.reserve_call(estimate_tokens(messages), expected_output)
    try:
        response = _get_client().post(
            url,
            json=_request_body(settings, messages),
            headers=headers,
            timeout=settings.timeout_seconds,
        )
    except httpx.TimeoutException as exc:
        budget_guard.report_usage(None, None, None)  # it may have run: keep the estimate
        raise LLMTimeoutError(
            f"LLM request to {url} timed out after {settings.timeout_seconds}s"
        ) from exc
    except httpx.HTTPError as exc:
        budget_guard.report_usage(0, 0, None)
        raise LLMError(f"LLM request to {url} failed: {exc!r}") from exc
    if response.status_code == 200:
        budget_guard.report_usage(*_usage(response), response.headers)
    else:
        budget_guard.report_usage(0, 0, response.headers)
    if response.status_code in (429, 503):
        wait = retry_after_seconds(response.headers.get("Retry-After"))
        raise RateLimited(wait, f"LLM server answered {response.status_code}, retry after {wait}s")
    if response.status_code >= 400:
        raise LLMError(
            f"LLM server answered {response.status_code} for {url}: {response.text[:200]!r}",
            status_code=response.status_code,
        )
    try:
        content = response.json()["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise LLMError(f"unreadable completion from {url}: {response.text[:200]!r}") from exc
    return content if isinstance(content, str) else ""


def _summarize_chunk(settings: LLMSettings, entries: list[Entry]) -> BatchOutcome:
    content = complete(settings, build_prompt(entries, json_mode=settings.json_mode),
                       expected_output_tokens(settings, len(entries)))
    ids = [e.id for e in entries]
    try:
        items = parse_reply(content)
    except ValueError as exc:
        return BatchOutcome(failed={i: f"unparseable reply: {exc}" for i in ids})
    return map_results(ids, items)


def summarize(batch: Batch) -> BatchOutcome:
    """Summarise, categorise and rate a batch: one request, or one per chunk when too big.

    Raises RateLimited on any 429/503 (the queue must pause; finished chunks are redone).
    Raises LLMTimeoutError or LLMError when the first request fails; when a later chunk
    fails, the finished chunks are kept and the rest are reported failed.
    """
    settings = LLMSettings.from_env()
    chunks = split_entries(batch.entries, settings.max_prompt_tokens, json_mode=settings.json_mode)
    started = time.monotonic()
    results: dict[str, Any] = {}
    failed: dict[str, str] = {}
    for index, chunk in enumerate(chunks):
        try:
            outcome = _summarize_chunk(settings, chunk)
        except LLMError as exc:
            if index == 0:
                raise
            # Keep the answers already paid for; the rest back off and come round again.
            failed.update({e.id: str(exc) for c in chunks[index:] for e in c})
            break
        results.update(outcome.results)
        failed.update(outcome.failed)
    log.info(
        "llm.batch_summarized",
        queue=batch.queue,
        batch_id=batch.id,
        size=len(batch),
        requests=len(chunks),
        succeeded=len(results),
        failed=len(failed),
        elapsed_ms=round((time.monotonic() - started) * 1000),
    )
    return BatchOutcome(results=results, failed=failed)
