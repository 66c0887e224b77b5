"""Monitoring: pure figures (``figures``) and the seed's ``BatchPerformanceMetrics`` (``metrics``).

``batcher.stats.detailed_stats`` reads Redis and builds on these; ``batcher.top`` and
``batcher.exporter`` display what it returns.
"""

from batcher.monitoring.metrics import BatchPerformanceMetrics

__all__ = ["BatchPerformanceMetrics"]
