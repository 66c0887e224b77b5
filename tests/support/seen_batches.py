"""A handler that keeps every ``Batch`` it is called with and answers from a script of actions.

Importable by path (``tests.support.seen_batches:handle``), so a real RQ worker loads it from
``BATCH_HANDLER`` like any handler; the in-process ``BatchSimpleWorker`` then shares this
module's lists with the test.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from batcher.models import Batch

SEEN: list[Batch] = []
# one action per call, in order: an exception is raised, anything else returned; once the
# script is used up every entry is answered with its payload
ACTIONS: deque[Any] = deque()


def reset(*actions: Any) -> None:
    SEEN.clear()
    ACTIONS.clear()
    ACTIONS.extend(actions)


def handle(batch: Batch) -> Any:
    SEEN.append(batch)
    if not ACTIONS:
        return {e.id: e.payload for e in batch.entries}
    action = ACTIONS.popleft()
    if isinstance(action, BaseException):
        raise action
    return action
