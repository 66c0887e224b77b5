"""redis-batcher: a Redis-backed batch accumulator and dispatcher (see README and DESIGN)."""

from batcher.config import BatchProcessingConfig, load_config
from batcher.errors import (
    BatcherError,
    BatcherUnavailableError,
    BufferFullError,
    ConfigError,
    InvalidEntryError,
    RateLimited,
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
    "load_config",
]
