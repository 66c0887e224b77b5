"""The data a producer, a handler and the stats see."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

# how a priority is stored in a pending score: batcher.records.score_of
PRIORITIES = (0, 1, 2)
PRIORITY_NAMES = {0: "normal", 1: "high", 2: "urgent"}


class FlushReason(StrEnum):
    SIZE = "size"
    DEADLINE = "deadline"
    PRESSURE = "pressure"
    EMERGENCY = "emergency"
    MANUAL = "manual"


@dataclass(frozen=True, slots=True)
class Entry:
    """One accepted entry as a handler receives it."""

    id: str
    source: str
    priority: int
    enqueued_ms: int
    attempts: int
    payload: dict[str, Any]
    # the producer's trace context (W3C traceparent) when it sent the entry inside a span
    traceparent: str | None = None


@dataclass(frozen=True, slots=True)
class Batch:
    """What a handler is called with: one batch of entries, best priority first."""

    queue: str
    id: str
    attempt: int
    reason: FlushReason
    created_ms: int
    entries: list[Entry]
    key: str | None = None  # the batch key all its entries carry (None: entries without one)

    @property
    def priority(self) -> int:
        return max((e.priority for e in self.entries), default=0)

    def __len__(self) -> int:
        return len(self.entries)


@dataclass(slots=True)
class BatchOutcome:
    """A handler's partial result: ``results`` are acked, ``failed`` ids retried alone.

    ``rejected`` ids go to the dead set at once with their error (reason ``rejected``): the
    handler knows no retry can succeed (an LLM API refused the entry itself). Ids of the batch
    that appear in none are acked without a result. ``usage`` holds figures the worker adds to
    the queue's stats hash after the ack (``llm_prompt_tokens``, ``llm_cost_usd``, ...).
    """

    results: Mapping[str, Any] = field(default_factory=dict)
    failed: Mapping[str, str] = field(default_factory=dict)
    rejected: Mapping[str, str] = field(default_factory=dict)
    usage: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class EnqueueResult:
    """What an enqueue call did: duplicates are success, rejected ids found no room."""

    accepted: int = 0
    duplicate_ids: list[str] = field(default_factory=list)
    rejected_ids: list[str] = field(default_factory=list)
    # the rejected ids whose source was at max_pending_per_source (a subset of rejected_ids)
    source_capped_ids: list[str] = field(default_factory=list)

    def __add__(self, other: EnqueueResult) -> EnqueueResult:
        return EnqueueResult(
            self.accepted + other.accepted,
            self.duplicate_ids + other.duplicate_ids,
            self.rejected_ids + other.rejected_ids,
            self.source_capped_ids + other.source_capped_ids,
        )

    @property
    def duplicates(self) -> int:
        return len(self.duplicate_ids)

    @property
    def rejected(self) -> int:
        return len(self.rejected_ids)
