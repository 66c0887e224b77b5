"""Factory presets and the process-global manager behind the seed's module-level report functions.

A preset is a set of setting values. A factory builds ``BatchProcessingConfig`` from the
preset's values, then the keyword ``overrides`` (by field name) on top; every setting the preset
does not name still comes from its ``BATCH_*`` variable, then from the default. So
``BATCH_QUEUE=feeds`` and ``BATCH_REDIS_URL`` apply to every preset, while
``BATCH_SIZE_THRESHOLD`` does not override a preset that sets the size threshold (pass
``size_threshold=`` instead).

The global manager is for entry points and the seed's functions only; the library never uses
it. Libraries and tests pass a ``BatchStateManager`` around instead.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

import redis as redis_py

from batcher.config import load_config
from batcher.monitoring.queue_stats import QueueStats
from batcher.monitoring.report import log_performance_summary, performance_report
from batcher.producer import BatchStateManager

# the seed's ``flush_callback``: the handler a producer expects, recorded in Redis and never
# called by it (BatchStateManager's ``handler``)
FlushCallback = str | Callable[..., Any] | None

#: The seed's optimised defaults: flush at 25 entries or after 300 s (120 s high, 60 s urgent),
#: adaptive size between 5 and 50, a 1,000-entry / 64 MiB buffer, early flush at 85 %.
OPTIMIZED: Mapping[str, Any] = {
    "size_threshold": 25, "min_batch_size": 5, "max_batch_size": 50,
    "time_threshold_seconds": 300, "high_time_threshold_seconds": 120,
    "urgent_time_threshold_seconds": 60,
    "max_buffer_size": 1000, "max_buffer_bytes": 64 * 1024 * 1024,
    "early_flush_pressure": 0.85, "emergency_flush_pressure": 0.95,
    "enable_adaptive_sizing": True, "enable_adaptive_timeout": True,
    "enable_priority_flushing": True,
}

#: Throughput first: batches of 100 (adaptive 20-200, up to 4 MiB), deadlines of 60 / 30 / 10 s,
#: a 10,000-entry / 256 MiB buffer and up to 500 batches in flight.
HIGH_PERFORMANCE: Mapping[str, Any] = {
    "size_threshold": 100, "min_batch_size": 20, "max_batch_size": 200,
    "max_batch_bytes": 4 * 1024 * 1024,
    "time_threshold_seconds": 60, "high_time_threshold_seconds": 30,
    "urgent_time_threshold_seconds": 10,
    "max_buffer_size": 10_000, "max_buffer_bytes": 256 * 1024 * 1024,
    "max_inflight_batches": 500,
    "early_flush_pressure": 0.85, "emergency_flush_pressure": 0.95,
    "enable_adaptive_sizing": True, "enable_adaptive_timeout": True,
}

#: Small footprint: a 200-entry / 8 MiB buffer, batches of 10 (adaptive 2-25) of at most
#: 256 KiB, entries of at most 64 KiB, deadlines of 120 / 60 / 30 s, early flush at 70 %.
MEMORY_EFFICIENT: Mapping[str, Any] = {
    "size_threshold": 10, "min_batch_size": 2, "max_batch_size": 25,
    "max_batch_bytes": 256 * 1024, "max_entry_bytes": 64 * 1024,
    "time_threshold_seconds": 120, "high_time_threshold_seconds": 60,
    "urgent_time_threshold_seconds": 30,
    "max_buffer_size": 200, "max_buffer_bytes": 8 * 1024 * 1024,
    "early_flush_pressure": 0.7, "emergency_flush_pressure": 0.9,
    "enable_adaptive_sizing": True, "enable_adaptive_timeout": True,
}

PRESETS: Mapping[str, Mapping[str, Any]] = {
    "optimized": OPTIMIZED, "high_performance": HIGH_PERFORMANCE,
    "memory_efficient": MEMORY_EFFICIENT,
}


def create_manager(
    preset: str,
    flush_callback: FlushCallback = None,
    *,
    redis: redis_py.Redis | None = None,
    **overrides: Any,
) -> BatchStateManager:
    """A manager with preset ``preset`` (a key of :data:`PRESETS`), then ``overrides``.

    Raises ``KeyError`` for an unknown preset and ``ConfigError`` for a bad value.
    """
    config = load_config(**{**PRESETS[preset], **overrides})
    return BatchStateManager(redis, config, handler=flush_callback)


def create_optimized_batch_manager(
    flush_callback: FlushCallback = None, *, redis: redis_py.Redis | None = None,
    **overrides: Any,
) -> BatchStateManager:
    """The seed's optimised defaults (:data:`OPTIMIZED`): 25 entries or 300 s, adaptive 5-50."""
    return create_manager("optimized", flush_callback, redis=redis, **overrides)


def create_high_performance_batch_manager(
    flush_callback: FlushCallback = None, *, redis: redis_py.Redis | None = None,
    **overrides: Any,
) -> BatchStateManager:
    """Bigger batches and buffer, shorter deadlines (:data:`HIGH_PERFORMANCE`): 100 entries or
    60 s, adaptive 20-200, a 10,000-entry buffer."""
    return create_manager("high_performance", flush_callback, redis=redis, **overrides)


def create_memory_efficient_batch_manager(
    flush_callback: FlushCallback = None, *, redis: redis_py.Redis | None = None,
    **overrides: Any,
) -> BatchStateManager:
    """A small buffer and small batches (:data:`MEMORY_EFFICIENT`): 200 entries / 8 MiB,
    batches of 10 (at most 256 KiB), 120 s."""
    return create_manager("memory_efficient", flush_callback, redis=redis, **overrides)


# -- the process-global manager ------------------------------------------------------------------

_LOCK = threading.Lock()
_GLOBAL: BatchStateManager | None = None


def configure(
    *,
    manager: BatchStateManager | None = None,
    preset: str = "optimized",
    flush_callback: FlushCallback = None,
    redis: redis_py.Redis | None = None,
    **overrides: Any,
) -> BatchStateManager:
    """Install the process-global manager and return it.

    Either ``manager`` as given, or one built by :func:`create_manager` from ``preset``,
    ``flush_callback``, ``redis`` and ``overrides``. Replaces any previous one.
    """
    global _GLOBAL
    built = manager or create_manager(preset, flush_callback, redis=redis, **overrides)
    with _LOCK:
        _GLOBAL = built
    return built


def get_global_manager() -> BatchStateManager:
    """The process-global manager; the first call without :func:`configure` builds the
    optimised preset from the environment."""
    global _GLOBAL
    with _LOCK:
        if _GLOBAL is None:
            _GLOBAL = create_manager("optimized")
        return _GLOBAL


def reset_global_manager() -> None:
    """Forget the global manager (tests, or a process that re-configures)."""
    global _GLOBAL
    with _LOCK:
        _GLOBAL = None


def get_batch_performance_report(manager: BatchStateManager | None = None) -> dict[str, Any]:
    """The performance report of ``manager`` (default: the global one): metrics, health,
    trends, latency, memory efficiency, the latest size changes and recommendations."""
    return performance_report(_queue_stats(manager))


def log_batch_performance_summary(manager: BatchStateManager | None = None) -> None:
    """Log one ``performance.summary`` event with the key figures of ``manager``'s queue
    (default: the global one)."""
    log_performance_summary(_queue_stats(manager))


def _queue_stats(manager: BatchStateManager | None) -> QueueStats:
    from batcher.stats import read_queue_stats

    chosen = manager or get_global_manager()
    return read_queue_stats(chosen.redis, chosen.config)
