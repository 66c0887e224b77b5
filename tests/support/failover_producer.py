"""One producer process of the failover run: enqueue paced chunks for a while, re-sending what
Redis did not confirm until it does, and write ``<id> <unix time confirmed>`` per confirmed id.

    python -m tests.support.failover_producer PREFIX SECONDS CHUNKS_PER_SECOND OUT_FILE [PAD]

PAD: bytes of padding per payload (default 0): heavier writes fill the replication buffers.

Settings come from ``BATCH_*``. An id is confirmed when ``queue_many`` returned it accepted or
a duplicate (a re-send of an id the master had applied). ``BatcherUnavailableError`` (Redis
down, a failover under way, ``ReplicaAckError`` when too few replicas confirmed) leaves its
``unconfirmed_ids`` to send again: enqueue is idempotent by id. The last stdout line is a JSON
summary.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from typing import Any

from batcher.errors import BatcherUnavailableError, BufferFullError
from batcher.producer import BatchStateManager

CHUNK = 10
PAUSE_SECONDS = 0.2
# once producing stops, the ids still unconfirmed are re-sent for at most this long
SETTLE_SECONDS = 120.0


def _send(manager: BatchStateManager, todo: list[dict[str, Any]],
          tally: Counter[str]) -> list[dict[str, Any]]:
    """One attempt; the entries still to send."""
    try:
        manager.queue_many(todo)
        return []
    except BufferFullError as exc:
        tally["buffer_full"] += 1
        again = set(exc.result.rejected_ids)
    except BatcherUnavailableError as exc:
        tally["replica_unconfirmed" if type(exc).__name__ == "ReplicaAckError"
              else "unavailable"] += 1
        again = set(exc.unconfirmed_ids) or {e["id"] for e in todo}
    return [e for e in todo if e["id"] in again]


def produce(prefix: str, seconds: float, rate: float, out_path: str,
            pad: int = 0) -> Counter[str]:
    manager = BatchStateManager()
    tally: Counter[str] = Counter()
    todo: list[dict[str, Any]] = []
    start = time.monotonic()
    n = 0
    with open(out_path, "a", encoding="ascii") as out:
        while todo or time.monotonic() - start < seconds:
            if time.monotonic() - start > seconds + SETTLE_SECONDS:
                break
            if not todo and time.monotonic() - start < seconds:
                todo = [{"id": f"{prefix}{n + i}", "payload": {"n": n + i, "pad": "x" * pad}}
                        for i in range(CHUNK)]
                n += CHUNK
            left = _send(manager, todo, tally)
            done = {e["id"] for e in todo} - {e["id"] for e in left}
            if done:
                now = time.time()
                out.write("".join(f"{i} {now:.3f}\n" for i in sorted(done)))
                out.flush()
                tally["confirmed"] += len(done)
            todo = left
            time.sleep(PAUSE_SECONDS if todo else 1 / rate)
    tally["unconfirmed_at_exit"] = len(todo)
    return tally


if __name__ == "__main__":
    prefix, seconds, rate, out_path, *pad = sys.argv[1:]
    print(json.dumps(produce(prefix, float(seconds), float(rate), out_path,
                             int(pad[0]) if pad else 0)), flush=True)
