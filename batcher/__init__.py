"""redis-batcher: a Redis-backed batch accumulator and dispatcher (see README and DESIGN).

The public names load on first use (PEP 562): a worker or coordinator process imports only
the modules it runs, which keeps its start-up (part of every end-to-end figure) short.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from batcher.config import BatchProcessingConfig, load_config
    from batcher.errors import (
        BatcherError,
        BatcherUnavailableError,
        BufferFullError,
        ConfigError,
        InvalidEntryError,
        RateLimited,
        RedisFullError,
        ReplicaAckError,
    )
    from batcher.models import Batch, BatchOutcome, EnqueueResult, Entry, FlushReason
    from batcher.monitoring import BatchPerformanceMetrics
    from batcher.presets import (
        configure,
        create_high_performance_batch_manager,
        create_memory_efficient_batch_manager,
        create_optimized_batch_manager,
        get_batch_performance_report,
        get_global_manager,
        log_batch_performance_summary,
    )
    from batcher.producer import BatchStateManager

_HOMES = {
    "batcher.config": ("BatchProcessingConfig", "load_config"),
    "batcher.errors": ("BatcherError", "BatcherUnavailableError", "BufferFullError",
                       "ConfigError", "InvalidEntryError", "RateLimited", "RedisFullError",
                       "ReplicaAckError"),
    "batcher.models": ("Batch", "BatchOutcome", "EnqueueResult", "Entry", "FlushReason"),
    "batcher.monitoring": ("BatchPerformanceMetrics",),
    "batcher.presets": ("configure", "create_high_performance_batch_manager",
                        "create_memory_efficient_batch_manager",
                        "create_optimized_batch_manager", "get_batch_performance_report",
                        "get_global_manager", "log_batch_performance_summary"),
    "batcher.producer": ("BatchStateManager",),
}
_MODULE_OF = {name: module for module, names in _HOMES.items() for name in names}

__all__ = [
    "BatchPerformanceMetrics",
    "configure",
    "create_high_performance_batch_manager",
    "create_memory_efficient_batch_manager",
    "create_optimized_batch_manager",
    "get_batch_performance_report",
    "get_global_manager",
    "log_batch_performance_summary",
    "Batch",
    "BatchOutcome",
    "BatchProcessingConfig",
    "BatchStateManager",
    "BatcherError",
    "BatcherUnavailableError",
    "BufferFullError",
    "ConfigError",
    "EnqueueResult",
    "Entry",
    "FlushReason",
    "InvalidEntryError",
    "RateLimited",
    "RedisFullError",
    "ReplicaAckError",
    "load_config",
]


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'batcher' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
