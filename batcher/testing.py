"""Helpers for users' tests: the whole pipeline in-process on fakeredis (``[testing]`` extra).

::

    from batcher.testing import make_manager, run_pending

    def test_my_handler_summarises_every_entry():
        manager = make_manager(size_threshold=5, min_batch_size=1)
        manager.queue_many([{"id": f"e{i}", "source": "t", "priority": 0, "payload": {}}
                            for i in range(12)])
        batches = run_pending(manager, my_handler)
        assert [len(b) for b in batches] == [5, 5, 2]
        assert manager.get_result("e0") == ...

The same Lua scripts run as in production (fakeredis embeds Lua), so flush order, partial
outcomes, retries and dead letters behave as they will on a real server.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis

from batcher.config import BatchProcessingConfig
from batcher.coordinator import new_batch_id
from batcher.models import Batch
from batcher.producer import BatchStateManager
from batcher.scripts import Scripts


def fake_redis() -> redis.Redis:
    """A fresh, private fakeredis server with Lua support (needs ``redis-batcher[testing]``)."""
    try:
        import fakeredis
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError("batcher.testing needs the [testing] extra: "
                          "pip install 'redis-batcher[testing]'") from exc
    client: redis.Redis = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    return client


def make_manager(
    config: BatchProcessingConfig | None = None,
    *,
    client: redis.Redis | None = None,
    **overrides: Any,
) -> BatchStateManager:
    """A ``BatchStateManager`` on fakeredis; ``overrides`` are settings (``queue="t"``, ...)."""
    base = config or BatchProcessingConfig(**{"queue": "test", **overrides})
    if config is not None and overrides:
        base = config.with_overrides(**overrides)
    return BatchStateManager(client if client is not None else fake_redis(), base)


def run_pending(
    manager: BatchStateManager,
    handler: Callable[[Batch], Any],
    *,
    max_batches: int = 10_000,
) -> list[Batch]:
    """Flush everything pending (reason ``manual``) and run each batch through ``handler``.

    Each batch is claimed, handled and acked or failed exactly as an RQ worker would
    (``batcher.processing.run_batch``). Returns the batches the handler saw, in flush order.
    Entries a failure sends to ``delayed`` stay there; call again after their back-off.
    """
    from batcher.processing import WorkerContext, run_batch

    seen: list[Batch] = []

    def recording(batch: Batch) -> Any:
        seen.append(batch)
        return handler(batch)

    scripts = Scripts(manager.redis, manager.config)
    ctx = WorkerContext(manager.config, manager.redis, scripts, recording, warned_handler=True)
    for _ in range(max_batches):
        decision = scripts.flush(new_batch_id(), manual=True)
        if decision.batch is None:
            break
        run_batch(ctx, decision.batch.id, decision.batch.attempt)
    return seen
