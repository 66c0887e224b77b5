"""The default handler: each entry's result is its own payload."""

from __future__ import annotations

from typing import Any

from batcher.models import Batch


def handle(batch: Batch) -> dict[str, Any]:
    """Return ``{entry id: payload}`` for every entry of ``batch``; never raises."""
    return {entry.id: entry.payload for entry in batch.entries}
