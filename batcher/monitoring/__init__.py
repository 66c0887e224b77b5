"""Monitoring: pure figures (``figures``) and the seed's ``BatchPerformanceMetrics`` (``metrics``).

``feed_status`` reads back the feed fetchers' shared schedule (``batcher fetch-status``).

``batcher.stats.read_queue_stats`` reads Redis and builds the typed figures of
``queue_stats`` on these; ``batcher.top``, ``batcher stats`` and ``batcher.exporter`` display them.
"""

from batcher.monitoring.metrics import BatchPerformanceMetrics

__all__ = ["BatchPerformanceMetrics"]
