"""A handler that appends ``<entry id>`` per handled entry to ``$FAILOVER_DIR/handled`` (one
write per batch, O_APPEND: whole lines from every worker process), so a run counts the entries
that met a handler more than once."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from batcher.models import Batch


def handle(batch: Batch) -> dict[str, Any]:
    path = Path(os.environ["FAILOVER_DIR"]) / "handled"
    with path.open("a", encoding="ascii") as out:
        out.write("".join(f"{e.id}\n" for e in batch.entries))
    return {e.id: e.payload for e in batch.entries}
