"""What redis-batcher stores beside its keys (``keys.py``), read in one place.

The batch record (one HASH per flushed batch, written by ``flush.lua``), its ``ix`` index
lines, the pending score, the dead record (one JSON string per dead entry in
``dead:payloads``) and the words the Lua scripts answer with. Python reads them only here:
a field renamed in a script changes this module and the scripts, nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar

import orjson

from batcher.errors import ScriptError
from batcher.models import Batch, Entry, FlushReason

# score = (3 - priority) * 10**13 + enqueued_ms: ZPOPMIN order is urgent first, FIFO within.
PRIORITY_SCORE_BASE = 10**13


def score_of(priority: int, enqueued_ms: int) -> int:
    return (3 - priority) * PRIORITY_SCORE_BASE + enqueued_ms


def split_score(score: int | float | bytes | str) -> tuple[int, int]:
    """A pending score (as Redis returns it: a float or its text) -> (priority, enqueued_ms)."""
    klass, enqueued_ms = divmod(int(float(score)), PRIORITY_SCORE_BASE)
    return 3 - klass, enqueued_ms


def priority_score_range(priority: int) -> tuple[int, int]:
    """The (min, max) pending scores of ``priority``: a ZCOUNT/ZRANGE BYSCORE window."""
    low = (3 - priority) * PRIORITY_SCORE_BASE
    return low, low + PRIORITY_SCORE_BASE - 1


class BatchStatus(StrEnum):
    """A batch record's ``status``: who holds the batch now."""

    DISPATCHED = "dispatched"  # handed to RQ, no worker has claimed it yet
    CLAIMED = "claimed"  # a worker runs the handler
    RETRYING = "retrying"  # waiting out a back-off, a rate limit or a pause


# The batch HASH's fields (flush.lua writes them; claim, ack, fail, pause and redispatch read
# them). UNCALLED_DISPATCHES is stored as 'free': a name kept so records written by an older
# version stay readable across an upgrade.
ATTEMPT, STATUS, UNCALLED_DISPATCHES, SIZE = "attempt", "status", "free", "n"
REASON, PRIORITY, CREATED_MS, CLAIMED_MS = "reason", "priority", "created_ms", "claimed_ms"
KEY, INDEX, ENVELOPE_PREFIX, LAST_ERROR = "key", "ix", "e:", "last_error"
# what a reader of a batch's figures needs, without its entries (one HMGET)
META_FIELDS = (ATTEMPT, STATUS, UNCALLED_DISPATCHES, SIZE, REASON, PRIORITY, CREATED_MS)


@dataclass(frozen=True, slots=True)
class IndexLine:
    """One line of a batch record's ``ix``: ``<score> <prior attempts> <id>``.

    ``prior_attempts`` are the handler calls the entry had before it joined this batch.
    """

    score: int
    prior_attempts: int
    entry_id: str

    @classmethod
    def parse(cls, line: bytes) -> IndexLine:
        score, prior, entry_id = line.split(b" ", 2)
        return cls(int(float(score)), int(prior), entry_id.decode())

    @property
    def priority(self) -> int:
        return split_score(self.score)[0]

    @property
    def enqueued_ms(self) -> int:
        return split_score(self.score)[1]


def _int(raw: bytes | None) -> int:
    return int(float(raw)) if raw else 0


def _str(raw: bytes | None) -> str | None:
    return None if raw is None else raw.decode(errors="replace")


@dataclass(frozen=True, slots=True)
class BatchRecord:
    """One flushed batch as its HASH holds it; ``index`` and ``envelopes`` are empty when only
    :data:`META_FIELDS` were read."""

    id: str
    attempt: int
    status: str  # a BatchStatus, or what a damaged record holds (batcher check reports it)
    # dispatches that were not handler calls: a lost RQ job, a rate limit, a pause
    uncalled_dispatches: int
    size: int
    reason: str
    priority: int
    created_ms: int
    claimed_ms: int | None = None
    key: str | None = None
    last_error: str | None = None
    index: tuple[IndexLine, ...] = ()
    envelopes: Mapping[str, bytes] = field(default_factory=dict)

    @classmethod
    def from_hash(cls, batch_id: str, raw: Mapping[bytes, bytes]) -> BatchRecord:
        """Parse an HGETALL of the batch (or a dict of some of its fields)."""
        ix = raw.get(INDEX.encode())
        prefix = ENVELOPE_PREFIX.encode()
        return cls(
            id=batch_id, attempt=_int(raw.get(ATTEMPT.encode())),
            status=_str(raw.get(STATUS.encode())) or "",
            uncalled_dispatches=_int(raw.get(UNCALLED_DISPATCHES.encode())),
            size=_int(raw.get(SIZE.encode())), reason=_str(raw.get(REASON.encode())) or "",
            priority=_int(raw.get(PRIORITY.encode())),
            created_ms=_int(raw.get(CREATED_MS.encode())),
            claimed_ms=_int(raw[CLAIMED_MS.encode()]) if CLAIMED_MS.encode() in raw else None,
            key=_str(raw.get(KEY.encode())), last_error=_str(raw.get(LAST_ERROR.encode())),
            index=tuple(IndexLine.parse(line) for line in ix.split(b"\n") if line) if ix else (),
            envelopes={k[len(prefix):].decode(): v for k, v in raw.items()
                       if k.startswith(prefix)},
        )

    @classmethod
    def from_meta(cls, batch_id: str, values: Sequence[bytes | None]) -> BatchRecord | None:
        """Parse an HMGET of :data:`META_FIELDS`; None when the batch is gone."""
        if all(v is None for v in values):
            return None
        return cls.from_hash(batch_id, {f.encode(): v for f, v in zip(META_FIELDS, values,
                                                                       strict=True)
                                        if v is not None})

    @property
    def handler_calls(self) -> int:
        """Handler calls this batch has had, the current attempt's included."""
        return self.attempt - self.uncalled_dispatches

    def entries_best_first(self) -> list[IndexLine]:
        """The index in the order a handler gets the entries: best score first."""
        return sorted(self.index, key=lambda line: line.score)

    def to_batch(self, queue: str) -> Batch:
        """The handler's ``Batch``: entries best score first, each with the handler calls it
        had before this one (``Entry.attempts``)."""
        calls_before = self.handler_calls - 1
        entries = []
        for line in self.entries_best_first():
            env = orjson.loads(self.envelopes[line.entry_id])
            entries.append(Entry(
                id=env["id"], source=env["source"], priority=env["priority"],
                enqueued_ms=line.enqueued_ms, attempts=line.prior_attempts + calls_before,
                payload=env["payload"], traceparent=env.get("tp")))
        return Batch(queue=queue, id=self.id, attempt=self.attempt,
                     reason=FlushReason(self.reason), created_ms=self.created_ms,
                     entries=entries, key=self.key)


class DeadReason(StrEnum):
    FAILED = "failed"  # out of attempts (fail.lua, ack.lua)
    REJECTED = "rejected"  # a handler's BatchOutcome.rejected (ack.lua)
    EXPIRED = "expired"  # older than max_buffer_age (expire.lua)


@dataclass(frozen=True, slots=True)
class DeadRecord:
    """One dead entry: ``dead`` scores it with the time it died, ``dead:payloads`` holds
    ``{"score":<pending score>,"attempts":<n>,"reason":"<reason>","error":<JSON string>,
    "envelope":<the envelope>}``, built by ``dead_record()`` in ack.lua, fail.lua and
    expire.lua (one text in the three) and cut apart by requeue.lua."""

    id: str
    died_at_ms: int
    reason: str | None
    error: str | None
    attempts: int | None
    envelope: Any
    score: int | None = None
    shard: str | None = None  # the shard's queue (Q~i) of a sharded queue's dead entry

    @classmethod
    def parse(cls, entry_id: str, died_at_ms: int, raw: bytes | None) -> DeadRecord:
        """An unreadable or missing record gives a DeadRecord whose ``error`` says so."""
        parsed: dict[str, Any] = {}
        if raw is not None:
            try:
                parsed = orjson.loads(raw)
            except orjson.JSONDecodeError:
                parsed = {"error": "(unreadable dead record)"}
        score = parsed.get("score")
        return cls(id=entry_id, died_at_ms=died_at_ms, reason=parsed.get("reason"),
                   error=parsed.get("error"), attempts=parsed.get("attempts"),
                   envelope=parsed.get("envelope"),
                   score=int(score) if isinstance(score, int | float) else None)

    def view(self) -> dict[str, Any]:
        """The fields ``batcher dead list --json`` and the dashboard show (``shard`` only for
        a sharded queue's entry: an unsharded queue's view is unchanged)."""
        view = {"id": self.id, "reason": self.reason, "error": self.error,
                "attempts": self.attempts, "died_at_ms": self.died_at_ms,
                "envelope": self.envelope}
        if self.shard is not None:
            view["shard"] = self.shard
        return view


# -- what the scripts answer ------------------------------------------------------------------

class ClaimRefused(StrEnum):
    """claim.lua's refusals."""

    GONE = "gone"  # no such batch: acked, or never flushed
    STALE = "stale"  # another attempt holds it, or this one is already claimed


class FailOutcome(StrEnum):
    """fail.lua's answers."""

    RETRYING = "retrying"
    DEAD = "dead"  # every entry was out of attempts
    RATE_LIMITED = "rate_limited"
    STALE = "stale"  # a superseded attempt: nothing changed


class PauseOutcome(StrEnum):
    """pause.lua's answers."""

    PAUSED = "paused"
    STALE = "stale"


class RedispatchOutcome(StrEnum):
    """redispatch.lua's answers, for a batch whose lease ended."""

    EXTENDED = "extended"  # its RQ job is still alive: lease renewed, same attempt
    LOST = "lost"  # its RQ job is gone before any worker claimed it: next attempt, no call
    REDELIVERED = "redelivered"  # a worker claimed it and died: next attempt
    RETRY = "retry"  # its back-off is over: next attempt
    STALE = "stale"  # the lease is not over, the attempt moved on, or the batch is gone

    @property
    def dispatches_again(self) -> bool:
        return self in (RedispatchOutcome.LOST, RedispatchOutcome.REDELIVERED,
                        RedispatchOutcome.RETRY)


@dataclass(frozen=True, slots=True)
class FlushedBatch:
    """flush.lua popped a batch: its id, why, how many entries, best priority, attempt."""

    id: str
    reason: FlushReason
    size: int
    priority: int
    attempt: int
    key: str | None = None  # the batch key every entry of the batch carries, if any


@dataclass(frozen=True, slots=True)
class FlushDecision:
    """Either a batch was popped, or nothing is due for ``wait_ms`` (-1: until woken)."""

    batch: FlushedBatch | None
    wait_ms: int = -1


@dataclass(frozen=True, slots=True)
class AckResult:
    """ack.lua's answer: ``ok`` False for a superseded attempt (nothing changed)."""

    ok: bool
    acked: int = 0
    delayed: int = 0
    dead: int = 0
    results_dropped: int = 0  # refused by a full Redis: the batch was acked without them


@dataclass(frozen=True, slots=True)
class Redispatch:
    """redispatch.lua's answer: what it did and the attempt/priority to dispatch."""

    outcome: RedispatchOutcome
    attempt: int = 0
    priority: int = 0


_Word = TypeVar("_Word", bound=StrEnum)


def outcome(kind: type[_Word], raw: bytes | str) -> _Word:
    """The one mapping of a script's status word to its enum; a word this version does not
    know (a newer script on the server) raises ``ScriptError`` naming it."""
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    try:
        return kind(text)
    except ValueError:
        raise ScriptError(f"unknown {kind.__name__} from a script: {text!r}") from None
