"""Rate limits the fake LLM enforces of its own (issue 17): requests, input and output tokens
per minute as token buckets, refused with 429 and OpenAI-shaped ``x-ratelimit-*`` headers.

A request is admitted when a request and its prompt's tokens are left and the output bucket
is not in debt; its reply's tokens are charged to the output bucket afterwards (the reply's
length is not known before). Limits can change at run time (:meth:`ProviderLimits.set`).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

_NAMES = ("requests", "input-tokens", "output-tokens")


@dataclass
class _Bucket:
    limit_per_minute: float
    level: float
    at: float

    def refill(self, now: float) -> None:
        rate = self.limit_per_minute / 60
        self.level = min(self.limit_per_minute, self.level + rate * max(0.0, now - self.at))
        self.at = now

    def seconds_until(self, need: float) -> float:
        if self.level >= need:
            return 0.0
        return (need - self.level) * 60 / self.limit_per_minute


class ProviderLimits:
    """RPM, input TPM and output TPM (0 = unlimited), thread-safe; counts what it refused."""

    def __init__(self, rpm: float = 0, itpm: float = 0, otpm: float = 0,
                 clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: list[_Bucket | None] = [None, None, None]
        self.refused = 0
        self.admitted = 0
        self.input_tokens = 0
        self.output_tokens = 0
        self.set(rpm, itpm, otpm)

    def set(self, rpm: float, itpm: float, otpm: float) -> None:
        now = self._clock()
        with self._lock:
            for i, limit in enumerate((rpm, itpm, otpm)):
                old = self._buckets[i]
                if limit <= 0:
                    self._buckets[i] = None
                elif old is None:
                    self._buckets[i] = _Bucket(float(limit), float(limit), now)
                else:
                    old.refill(now)
                    old.limit_per_minute = float(limit)
                    old.level = min(old.level, float(limit))

    def admit(self, prompt_tokens: int) -> tuple[bool, dict[str, str]]:
        """Take one request and ``prompt_tokens``: (admitted, headers to send)."""
        now = self._clock()
        with self._lock:
            need = (1.0, float(prompt_tokens), 0.0)
            wait = 0.0
            for bucket, n in zip(self._buckets, need, strict=True):
                if bucket is not None:
                    bucket.refill(now)
                    wait = max(wait, bucket.seconds_until(min(n, bucket.limit_per_minute)
                                                          if n > 0 else 1e-9))
            if wait > 0:
                self.refused += 1
                headers = self._headers()
                headers["Retry-After"] = str(max(1, math.ceil(wait)))
                return False, headers
            for bucket, n in zip(self._buckets, need, strict=True):
                if bucket is not None:
                    bucket.level -= n
            self.admitted += 1
            self.input_tokens += prompt_tokens
            return True, self._headers()

    def charge_output(self, completion_tokens: int) -> dict[str, str]:
        """Charge a reply's tokens; the headers to send with it."""
        now = self._clock()
        with self._lock:
            bucket = self._buckets[2]
            if bucket is not None:
                bucket.refill(now)
                bucket.level -= completion_tokens
            self.output_tokens += completion_tokens
            return self._headers()

    def _headers(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for name, bucket in zip(_NAMES, self._buckets, strict=True):
            if bucket is None:
                continue
            left = max(0, math.floor(bucket.level))
            reset = (bucket.limit_per_minute - bucket.level) * 60 / bucket.limit_per_minute
            out[f"x-ratelimit-limit-{name}"] = f"{bucket.limit_per_minute:.0f}"
            out[f"x-ratelimit-remaining-{name}"] = str(left)
            out[f"x-ratelimit-reset-{name}"] = f"{max(0.0, reset):.3f}s"
        if self._buckets[1] is not None:  # OpenAI's own name for its token limit
            out["x-ratelimit-limit-tokens"] = out["x-ratelimit-limit-input-tokens"]
            out["x-ratelimit-remaining-tokens"] = out["x-ratelimit-remaining-input-tokens"]
        return out
