"""A handler that leaks secrets every way a real one might: in its logs, in a partial
outcome's per-entry errors and in an exception's message (tests/e2e/test_secrets.py)."""

from __future__ import annotations

import os

import structlog

from batcher.models import Batch, BatchOutcome

log = structlog.stdlib.get_logger(__name__)


def handle(batch: Batch) -> BatchOutcome:
    key = os.environ["LLM_API_KEY"]
    url = os.environ["BATCH_REDIS_URL"]
    log.warning("handler.calling_upstream", redis=url, api_key=key,
                headers={"Authorization": f"Bearer {key}"})
    if any(e.payload.get("kind") == "boom" for e in batch.entries):
        raise RuntimeError(f"upstream refused key {key} (Authorization: Bearer {key}) "
                           f"while writing to {url}")
    failed = {e.id: f"rejected with api_key={key} for {url}"
              for e in batch.entries if e.payload.get("kind") == "fail"}
    results = {e.id: {"ok": True} for e in batch.entries if e.id not in failed}
    return BatchOutcome(results=results, failed=failed)
