"""``scrub()``: secrets out of every text this project logs, stores or prints.

Applied in the structlog processor chain (every log line, RQ's included), to the error
strings a worker stores (dead letters, a batch's ``last_error``, events) and to what
``stats``, ``check``, ``dead list``, the exporter and the demo report print. It hides:

- the password of a URL (``redis://user:pw@host`` -> ``redis://user:***@host``) and a
  ``password=`` query value;
- API keys: ``sk-...`` style tokens, ``Authorization:`` / ``Bearer`` / ``api_key=`` values;
- the literal values of secret environment variables (``LLM_API_KEY`` and the password
  of ``BATCH_REDIS_URL``), wherever they appear, e.g. echoed back by an upstream error.
"""

from __future__ import annotations

import functools
import os
import re
import time
from collections.abc import Mapping, MutableMapping
from typing import Any
from urllib.parse import unquote, urlsplit

MASK = "***"
# variables whose whole value is a secret
SECRET_VARIABLES = ("LLM_API_KEY", "OPENAI_API_KEY", "BATCH_REDIS_PASSWORD", "REDIS_PASSWORD")
# variables holding a URL whose password is a secret
SECRET_URL_VARIABLES = ("BATCH_REDIS_URL", "REDIS_URL", "LLM_BASE_URL")
_MIN_SECRET_CHARS = 4  # shorter values would mask ordinary words

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # scheme://user:password@  (the user part may be empty)
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s:/@]*:)[^\s@/]+@"), rf"\1{MASK}@"),
    # password=... / api_key=... / token=... in queries, settings and key=value logs
    (re.compile(r"(?i)\b((?:password|passwd|pwd|api[_-]?key|access[_-]?token|token|secret)"
                r"[\"']?\s*[=:]\s*[\"']?)[^\s&\"',;}]+"), rf"\1{MASK}"),
    # Authorization: Bearer xyz / "authorization": "Basic xyz"
    (re.compile(r"(?i)\b(authorization[\"']?\s*[=:]\s*[\"']?(?:(?:bearer|basic|token)\s+)?)"
                r"[^\s\"',;}]+"), rf"\1{MASK}"),
    (re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]{6,}"), rf"\1{MASK}"),
    # OpenAI-style keys: sk-..., sk-proj-...
    (re.compile(r"\bsk-[A-Za-z0-9_-]{8,}"), f"sk-{MASK}"),
)


# any of these in a text means a pattern may apply; one search (with the secrets' values)
# skips the rest for most fields
_GATE = r"://|pass|pwd|key|token|secret|auth|bearer|sk-"
# fields structlog adds itself: never a secret
_OWN_FIELDS = frozenset({"timestamp", "level", "logger", "logger_name"})
# the secret variables are read again at most this often: reading os.environ costs ~1 µs a
# variable, and every log event of every process goes through scrub
SECRETS_REFRESH_SECONDS = 1.0
_cached: tuple[float, tuple[str, ...], re.Pattern[str]] = (float("-inf"), (), re.compile(""))


def forget_secrets() -> None:
    """Read the secret variables again on the next ``scrub`` (tests that change them)."""
    global _cached
    _cached = (float("-inf"), (), re.compile(""))


def _env_secrets() -> tuple[tuple[str, ...], re.Pattern[str]]:
    """The secret values, and one pattern that finds any of them or any pattern's trigger."""
    global _cached
    now = time.monotonic()
    if now - _cached[0] >= SECRETS_REFRESH_SECONDS:
        raw = tuple(os.environ.get(name, "")
                    for name in (*SECRET_VARIABLES, *SECRET_URL_VARIABLES))
        secrets = _secrets_of(raw)
        gate = re.compile("|".join([*(re.escape(v) for v in secrets), f"(?i:{_GATE})"]))
        _cached = (now, secrets, gate)
    return _cached[1], _cached[2]


@functools.lru_cache(maxsize=8)
def _secrets_of(raw: tuple[str, ...]) -> tuple[str, ...]:
    values = list(raw[:len(SECRET_VARIABLES)])
    for url in raw[len(SECRET_VARIABLES):]:
        try:
            password = urlsplit(url).password
        except ValueError:
            continue
        if password:
            values += [password, unquote(password)]
    # longest first, so a secret that contains another is masked whole
    return tuple(sorted({v for v in values if len(v) >= _MIN_SECRET_CHARS}, key=len,
                        reverse=True))


def scrub(text: str) -> str:
    """``text`` with every password, API key and secret variable's value as ``***``."""
    secrets, gate = _env_secrets()
    if gate.search(text) is None:
        return text
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def scrub_value(value: Any) -> Any:
    """``value`` with ``scrub`` applied to every string in it (dicts, lists, tuples)."""
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, Mapping):
        return {k: scrub_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(scrub_value(v) for v in value)
    return value


def scrub_processor(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]
                    ) -> MutableMapping[str, Any]:
    """structlog processor: every string field of a log event scrubbed (the last before
    the renderer, after exceptions are formatted into text)."""
    for key, value in event_dict.items():
        if key not in _OWN_FIELDS and isinstance(value, str | Mapping | list | tuple):
            event_dict[key] = scrub_value(value)
    return event_dict
