"""``batcher.testing``: the pipeline in-process on fakeredis, as users' tests run it."""

from __future__ import annotations

from batcher import Batch, BatchOutcome
from batcher.testing import make_manager, run_pending


def _entries(n: int, priority: int = 0) -> list[dict[str, object]]:
    return [{"id": f"e{i}", "source": "t", "priority": priority, "payload": {"i": i}}
            for i in range(n)]


def test_run_pending_handles_every_entry_in_batches_of_the_threshold() -> None:
    manager = make_manager(size_threshold=5, min_batch_size=1)
    manager.queue_many(_entries(12))
    batches = run_pending(manager, lambda b: {e.id: e.payload["i"] * 2 for e in b.entries})
    assert [len(b) for b in batches] == [5, 5, 2]
    assert manager.get_result("e7") == 14
    stats = manager.get_detailed_stats()
    assert stats["counters"]["acked"] == 12
    assert stats["counters"]["flushes"]["manual"] == 3


def test_run_pending_gives_urgent_entries_first() -> None:
    manager = make_manager(size_threshold=5, min_batch_size=1)
    manager.queue_many(_entries(3))
    manager.queue_many([{"id": "hot", "source": "t", "priority": 2, "payload": {}}])
    (batch,) = run_pending(manager, lambda b: None)
    assert [e.id for e in batch.entries][0] == "hot"


def test_partial_outcome_delays_only_the_failed_entries() -> None:
    manager = make_manager(size_threshold=5, min_batch_size=1)
    manager.queue_many(_entries(4))

    def handler(batch: Batch) -> BatchOutcome:
        return BatchOutcome(results={"e0": "ok"}, failed={"e1": "model omitted it"})

    run_pending(manager, handler)
    stats = manager.get_detailed_stats()
    assert stats["counters"]["acked"] == 3
    assert stats["buffer"]["delayed"] == 1
    assert manager.get_result("e0") == "ok"


def test_a_raising_handler_keeps_the_batch_for_retry() -> None:
    manager = make_manager(size_threshold=5, min_batch_size=1)
    manager.queue_many(_entries(2))

    def broken(batch: Batch) -> None:
        raise RuntimeError("LLM down")

    run_pending(manager, broken)
    stats = manager.get_detailed_stats()
    assert stats["counters"]["acked"] == 0
    assert stats["buffer"]["in_flight_entries"] == 2
    assert stats["performance"]["batches_failed"] == 1


def test_the_package_exports_load_lazily_and_completely() -> None:
    import batcher

    for name in batcher.__all__:
        assert getattr(batcher, name) is not None, name
    assert set(batcher.__all__) == set(batcher._MODULE_OF)
