"""Deprecated alias of ``batcher.llm.handler`` (moved in issue 16, the ``[llm]`` extra):
``BATCH_HANDLER=workers.handlers.llm:summarize`` keeps working."""

from batcher.llm.handler import summarize

__all__ = ["summarize"]
