"""The worker's side of a shared budget (issue 17): reserve before an LLM call, settle after.

``batcher worker`` binds the queue's ``BATCH_BUDGET`` here when its context is made; a
handler calls :func:`reserve_call` before each request and :func:`report_usage` with the
response's usage and headers after it (``batcher.llm.handler`` does both). Unbound, both
are no-ops, so a handler runs the same without a budget.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

import structlog

from batcher.budget import Budget
from batcher.errors import RateLimited

log = structlog.stdlib.get_logger(__name__)

_budget: Budget | None = None
_local = threading.local()  # the reservation of the call this thread is making


def bind(budget: Budget | None) -> None:
    """Draw from ``budget`` (None: no budget) in this process."""
    global _budget
    _budget = budget


def bound() -> Budget | None:
    return _budget


def reserve_call(input_tokens: int, output_tokens: int) -> None:
    """Reserve one request and its estimated tokens; raise ``RateLimited`` when the budget
    cannot cover it yet: the worker then pauses the queue until the refill, spending no
    attempt and holding no worker."""
    budget = _budget
    _local.reserved = None
    if budget is None:
        return
    wait_seconds = budget.reserve(1, input_tokens, output_tokens)
    if wait_seconds > 0:
        log.info("budget.waiting", budget=budget.name, wait_s=wait_seconds,
                 input_tokens=input_tokens, output_tokens=output_tokens)
        raise RateLimited(wait_seconds, f"budget {budget.name}: waiting {wait_seconds:.2f}s "
                                        "for its refill")
    _local.reserved = (1, input_tokens, output_tokens)


def report_usage(prompt_tokens: int | None, completion_tokens: int | None,
                 headers: Mapping[str, str] | None) -> None:
    """Settle this thread's last reservation with the real usage (None: as estimated) and
    the provider's rate-limit headers. A refused call (429) reports 0 tokens: they come
    back, while its headers say what the provider has left."""
    budget = _budget
    if budget is None:
        return
    reserved = getattr(_local, "reserved", None) or (0, 0, 0)
    _local.reserved = None
    used_in = reserved[1] if prompt_tokens is None else prompt_tokens
    used_out = reserved[2] if completion_tokens is None else completion_tokens
    delta = (1 - reserved[0], used_in - reserved[1], used_out - reserved[2])
    budget.settle(delta, headers)
