"""Deprecated alias of ``batcher.budget_guard`` (moved in issue 16): a handler's
``workers.budget_guard.reserve_call`` / ``report_usage`` keep working."""

from batcher.budget_guard import bind, bound, report_usage, reserve_call

__all__ = ["bind", "bound", "report_usage", "reserve_call"]
