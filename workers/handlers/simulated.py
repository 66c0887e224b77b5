"""A stand-in for an LLM call: latency that grows with batch size, jitter and failures.

Read from the environment at every call, so a benchmark or chaos run can change them
between runs without restarting workers:

- ``SIM_BASE_MS`` (default 0): fixed latency per batch.
- ``SIM_PER_ENTRY_MS`` (default 0): added latency per entry.
- ``SIM_JITTER_MS`` (default 0): uniform jitter in ±this, never below zero in total.
- ``SIM_FAILURE_RATE`` (default 0): probability in [0, 1] that a batch raises.
"""

from __future__ import annotations

import os
import random
import time
from typing import Any

from batcher.models import Batch

BASE_MS_VAR = "SIM_BASE_MS"
PER_ENTRY_MS_VAR = "SIM_PER_ENTRY_MS"
JITTER_MS_VAR = "SIM_JITTER_MS"
FAILURE_RATE_VAR = "SIM_FAILURE_RATE"


def _env_float(name: str, *, maximum: float | None = None) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return 0.0
    rule = "a number >= 0" if maximum is None else f"a number between 0 and {maximum:g}"
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not {rule}") from None
    # float() accepts "nan" and "inf": neither is a latency or a probability.
    if not (0 <= value < float("inf")) or (maximum is not None and value > maximum):
        raise ValueError(f"{name}={raw!r} is not {rule}")
    return value


def latency_ms(n: int) -> float:
    """The delay for a batch of ``n`` entries under the current environment, jitter drawn.

    Raises ValueError naming the variable when one of them is not a number >= 0.
    """
    base_ms = _env_float(BASE_MS_VAR)
    per_entry_ms = _env_float(PER_ENTRY_MS_VAR)
    jitter_ms = _env_float(JITTER_MS_VAR)
    jitter = random.uniform(-jitter_ms, jitter_ms) if jitter_ms else 0.0
    return max(0.0, base_ms + per_entry_ms * n + jitter)


def handle(batch: Batch) -> dict[str, Any]:
    """Sleep the simulated latency, then fail with ``SIM_FAILURE_RATE`` or succeed.

    Returns ``{entry id: {"ok": True, "n": batch size}}``. Raises ValueError naming the
    variable for a bad setting (before sleeping) and ``RuntimeError("simulated failure")``.
    """
    n = len(batch.entries)
    failure_rate = _env_float(FAILURE_RATE_VAR, maximum=1.0)
    delay_ms = latency_ms(n)
    if delay_ms > 0:
        time.sleep(delay_ms / 1000)
    # Fail after the latency, as a real API call that times out or errors would.
    if failure_rate > 0 and random.random() < failure_rate:
        raise RuntimeError("simulated failure")
    return {entry.id: {"ok": True, "n": n} for entry in batch.entries}
