"""Helpers of ``scripts/bench.py``: a private redis-server, workloads, processes, reports.

Kept out of the ``batcher`` package on purpose: the benchmark starts baselines (plain RQ,
celery-batches) that the library must never depend on.
"""
