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
from batcher.producer import BatchStateManager

__all__ = [
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
