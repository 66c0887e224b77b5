"""A known sequence of acks, written with the real scripts and explicit clocks, and its figures.

Four batches of five entries each. Per batch: the entries are enqueued at ``E``, flushed and
claimed at ``E + wait``, acked at ``E + wait + processing`` = the batch's ``acked_at`` before
``now``. Two batches fall in the ten minutes before the last minute, two in the last minute
(one of them in the last 10 s), so every window, percentile and trend has a value worked out
by hand in the tests.
"""

from __future__ import annotations

from dataclasses import dataclass

from batcher.scripts import Scripts
from tests.support.builders import entry


@dataclass(frozen=True)
class KnownBatch:
    name: str
    wait_ms: int
    processing_ms: int
    acked_ago_ms: int
    size: int = 5


KNOWN_BATCHES = (
    KnownBatch("a", wait_ms=100, processing_ms=40, acked_ago_ms=300_000),
    KnownBatch("b", wait_ms=300, processing_ms=80, acked_ago_ms=200_000),
    KnownBatch("c", wait_ms=1000, processing_ms=200, acked_ago_ms=30_000),
    KnownBatch("d", wait_ms=3000, processing_ms=900, acked_ago_ms=5_000),
)


def run_batch(scripts: Scripts, batch: KnownBatch, now_ms: int) -> None:
    """Enqueue, flush (manual), claim and ack one known batch, every step at its own ms."""
    acked = now_ms - batch.acked_ago_ms
    started = acked - batch.processing_ms
    enqueued = started - batch.wait_ms
    ids = [f"{batch.name}{i}" for i in range(batch.size)]
    result = scripts.enqueue([entry(i) for i in ids], now_ms=enqueued)
    assert result.accepted == batch.size
    decision = scripts.flush(f"batch-{batch.name}", manual=True, now_ms=started)
    assert decision.batch is not None and decision.batch.size == batch.size
    claimed = scripts.claim(f"batch-{batch.name}", 1, now_ms=started)
    assert not isinstance(claimed, str)
    ack = scripts.ack(f"batch-{batch.name}", 1, processing_ms=batch.processing_ms,
                      started_ms=started, results={i: b'"ok"' for i in ids}, now_ms=acked)
    assert ack.ok and ack.acked == batch.size


def record_known_acks(scripts: Scripts, now_ms: int) -> None:
    for batch in KNOWN_BATCHES:
        run_batch(scripts, batch, now_ms)
