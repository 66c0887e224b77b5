"""A handler for the hosts-apart test: writes every call to a file (no network needed), and on
the host named by ``HOSTS_APART_HOLD`` holds its first batch until the test releases it.

Files in ``HOSTS_APART_DIR`` (the filesystem is shared by every namespace):
``<host>.handled`` one ``<batch id> <attempt> <entry id>`` line per entry handled;
``held`` the held batch's ``<batch id> <attempt>``, written once its handler runs (so its
claim has been made); ``release``, created by the test, lets the held handler return.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from batcher.models import Batch

POLL_SECONDS = 0.02


def handle(batch: Batch) -> dict[str, Any]:
    directory = Path(os.environ["HOSTS_APART_DIR"])
    host = os.environ["HOSTS_APART_HOST"]
    with (directory / f"{host}.handled").open("a") as out:
        out.write("".join(f"{batch.id} {batch.attempt} {e.id}\n" for e in batch.entries))
    held = directory / "held"
    if os.environ.get("HOSTS_APART_HOLD") == host and not held.exists():
        held.write_text(f"{batch.id} {batch.attempt}")
        while not (directory / "release").exists():
            time.sleep(POLL_SECONDS)
    return {e.id: e.payload for e in batch.entries}
