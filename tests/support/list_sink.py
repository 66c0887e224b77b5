"""A sink for ``FeedFetcher`` that keeps every call in a list (no Redis)."""

from __future__ import annotations

from batcher.models import EnqueueResult


class ListSink:
    """Collects every call; de-duplicates by id like the producer does."""

    def __init__(self, reject_ids: frozenset[str] = frozenset()) -> None:
        self.calls: list[list[dict[str, object]]] = []
        self.seen: set[str] = set()
        self.reject_ids = reject_ids

    def queue_many(self, entries: list[dict[str, object]]) -> EnqueueResult:
        self.calls.append(list(entries))
        accepted, duplicates, rejected = 0, [], []
        for entry in entries:
            eid = str(entry["id"])
            if eid in self.reject_ids:
                rejected.append(eid)
            elif eid in self.seen:
                duplicates.append(eid)
            else:
                self.seen.add(eid)
                accepted += 1
        return EnqueueResult(accepted, duplicates, rejected)

    @property
    def entries(self) -> list[dict[str, object]]:
        return [e for call in self.calls for e in call]
