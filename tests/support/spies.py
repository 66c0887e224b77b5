"""Spies on the producer's round trips, for tests that assert how often Redis is called."""

from __future__ import annotations

from typing import Any

from batcher.producer import BatchStateManager


def count_enqueue_calls(manager: BatchStateManager) -> list[int]:
    """Wrap ``manager.scripts.enqueue``; the returned list gets each call's chunk size."""
    calls: list[int] = []
    original = manager.scripts.enqueue

    def counting(chunk: Any, now_ms: int | None = None) -> Any:
        calls.append(len(chunk))
        return original(chunk, now_ms)

    manager.scripts.enqueue = counting  # type: ignore[method-assign]
    return calls


def count_round_trips(monkeypatch: Any) -> list[int]:
    """Count every request redis-py sends (a pipeline is one), process-wide, from now on."""
    from redis.connection import AbstractConnection

    sent = [0]
    original = AbstractConnection.send_packed_command

    def counting(self: Any, command: Any, check_health: bool = True) -> None:
        sent[0] += 1
        original(self, command, check_health)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counting)
    return sent
