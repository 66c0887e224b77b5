"""Budgets shared by every worker (issue 17): requests, input and output tokens per minute.

A budget is a set of token buckets in one Redis hash (``budget.lua``, Redis's clock), named
for what it limits (e.g. ``openai-gpt-4o-mini``); every worker whose ``BATCH_BUDGET`` names
it draws from it. A call reserves its estimate first (:meth:`Budget.reserve`); afterwards
:meth:`Budget.settle` corrects the buckets with the real usage, and with the provider's
``x-ratelimit-remaining-*`` / ``x-ratelimit-limit-*`` headers when it knows better.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis

from batcher.connection import same_server
from batcher.keys import budget_key, validate_budget_name
from batcher.scripts import lua_source

BUCKETS = ("req", "in", "out")
# header suffix -> bucket; OpenAI reports 'tokens' (input dominated), others split in/out
_HEADER_BUCKETS = (("requests", 0), ("input-tokens", 1), ("output-tokens", 2), ("tokens", 1))


@dataclass(frozen=True, slots=True)
class BudgetLimits:
    """Per minute; 0 = no limit on that bucket."""

    rpm: float = 0
    input_tpm: float = 0
    output_tpm: float = 0

    def as_args(self) -> list[str]:
        for value in (self.rpm, self.input_tpm, self.output_tpm):
            if value < 0:
                raise ValueError(f"a budget limit must be >= 0, got {value!r}")
        return [repr(float(v)) for v in (self.rpm, self.input_tpm, self.output_tpm)]


def _header(headers: Mapping[str, str], name: str) -> float | None:
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        return None


def provider_figures(
    headers: Mapping[str, str] | None,
) -> tuple[list[float | None], list[float | None]]:
    """(remaining, limit) per bucket (req, in, out) from OpenAI-shaped rate-limit headers."""
    remaining: list[float | None] = [None, None, None]
    limits: list[float | None] = [None, None, None]
    if not headers:
        return remaining, limits
    lowered = {k.lower(): v for k, v in headers.items()}
    for suffix, bucket in _HEADER_BUCKETS:
        left = _header(lowered, f"x-ratelimit-remaining-{suffix}")
        cap = _header(lowered, f"x-ratelimit-limit-{suffix}")
        if remaining[bucket] is None and left is not None:
            remaining[bucket] = left
        if limits[bucket] is None and cap is not None:
            limits[bucket] = cap
    return remaining, limits


def _opt(value: float | None) -> str:
    return "" if value is None else repr(float(value))


def _now(now_ms: int | None) -> str:
    return "" if now_ms is None else str(int(now_ms))


class Budget:
    """One named budget on one client. Every call is one EVALSHA of ``budget.lua``."""

    def __init__(self, client: redis.Redis, name: str):
        self.name = validate_budget_name(name)
        self.key = budget_key(name)
        # on a cluster the budget's key has a slot of its own, not the queue's
        self.client = same_server(client, self.key)
        self._script = client.register_script(lua_source("budget"))

    def _run(self, op: str, args: list[str], now_ms: int | None) -> Any:
        return self._script(keys=[self.key], args=[op, _now(now_ms), *args], client=self.client)

    def reserve(self, requests: float, input_tokens: float, output_tokens: float,
                now_ms: int | None = None) -> float:
        """Take the estimate: 0.0 when taken, else the seconds until it could be (nothing
        taken)."""
        taken, wait_ms = self._run(
            "reserve", [repr(float(requests)), repr(float(input_tokens)),
                        repr(float(output_tokens))], now_ms)
        return 0.0 if int(taken) == 1 else int(wait_ms) / 1000

    def settle(self, delta: tuple[float, float, float],
               headers: Mapping[str, str] | None = None, now_ms: int | None = None) -> None:
        """Correct the buckets by ``delta`` (actual - reserved, per bucket) and tighten them
        to what the provider's headers report."""
        remaining, limits = provider_figures(headers)
        self._run("settle", [*(repr(float(d)) for d in delta), *map(_opt, remaining),
                             *map(_opt, limits)], now_ms)

    def set_limits(self, limits: BudgetLimits, now_ms: int | None = None) -> None:
        self._run("set", limits.as_args(), now_ms)

    def show(self, now_ms: int | None = None) -> dict[str, Any]:
        """Limits (the operator's and the provider's), what is left now, and the counters."""
        raw = self._run("peek", [], now_ms)
        fields = {_s(raw[i]): _s(raw[i + 1]) for i in range(0, len(raw), 2)}
        out: dict[str, Any] = {"name": self.name}
        for b in BUCKETS:
            limit = float(fields.get(f"limit_{b}", 0))
            provider = float(fields[f"plimit_{b}"]) if f"plimit_{b}" in fields else None
            level = float(fields[f"lvl_{b}"]) if f"lvl_{b}" in fields else None
            out[b] = {"limit_per_minute": limit, "provider_limit_per_minute": provider,
                      "left": None if level is None else round(level, 1)}
        out["waits"] = int(fields.get("waits", 0))
        out["settled"] = int(fields.get("settled", 0))
        return out


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
