"""One producer process of the chaos run: enqueue known ids until every one is confirmed.

    python scripts/chaos_producer.py INDEX PRODUCERS ENTRIES OUT_FILE SEED

Producer INDEX of PRODUCERS owns the ids ``n`` with ``n % PRODUCERS == INDEX``. An id is
written (one line) to OUT_FILE once Redis confirmed it, as accepted or as a duplicate (a
re-sent id whose first reply was lost). Ids refused for a full buffer, or unconfirmed because
Redis was down (``BatcherUnavailableError.unconfirmed_ids``), are sent again until confirmed:
enqueue is idempotent by id. Settings come from ``BATCH_*``. The last stdout line is a JSON
summary.
"""

from __future__ import annotations

import json
import random
import sys
import time
from collections import Counter
from typing import Any

import redis

from batcher.errors import BatcherUnavailableError, BufferFullError
from batcher.producer import BatchStateManager

BUFFER_FULL_PAUSE_SECONDS = (0.05, 0.2)
UNAVAILABLE_PAUSE_SECONDS = 0.5
CHUNK_SIZES = (20, 200)


def entry_id(n: int, entries: int) -> str:
    """Fixed width, so the run can count confirmed ids from the files' sizes."""
    return f"c{n:0{max(6, len(str(entries - 1)))}d}"


def _entry(n: int, entries: int, rng: random.Random) -> dict[str, Any]:
    return {"id": entry_id(n, entries), "source": "chaos", "priority": rng.choice((0, 0, 1, 2)),
            "payload": {"n": n, "pad": "x" * rng.randint(0, 200)}}


def _send(
    manager: BatchStateManager, todo: list[dict[str, Any]], tally: Counter[str],
    rng: random.Random,
) -> tuple[list[str], list[dict[str, Any]], float]:
    """One attempt: (confirmed ids, entries still to send, pause before sending them)."""
    try:
        result = manager.queue_many(todo)
        tally["duplicates"] += len(result.duplicate_ids)
        return [e["id"] for e in todo], [], 0.0
    except BufferFullError as exc:
        tally["buffer_full"] += 1
        tally["duplicates"] += len(exc.result.duplicate_ids)
        again = set(exc.result.rejected_ids)
        pause = rng.uniform(*BUFFER_FULL_PAUSE_SECONDS)
    except BatcherUnavailableError as exc:
        tally["unavailable"] += 1
        again = set(exc.unconfirmed_ids) or {e["id"] for e in todo}
        pause = UNAVAILABLE_PAUSE_SECONDS
    except redis.RedisError:
        # not one of ours: nothing in this call is known to be written
        tally["redis_errors"] += 1
        again = {e["id"] for e in todo}
        pause = UNAVAILABLE_PAUSE_SECONDS
    confirmed = [e["id"] for e in todo if e["id"] not in again]
    return confirmed, [e for e in todo if e["id"] in again], pause


def produce(index: int, producers: int, entries: int, out_path: str, seed: int) -> Counter[str]:
    rng = random.Random(seed * 1009 + index)
    manager = BatchStateManager()
    numbers = list(range(index, entries, producers))
    tally: Counter[str] = Counter()
    with open(out_path, "a", encoding="ascii") as out:
        start = 0
        while start < len(numbers):
            size = rng.randint(*CHUNK_SIZES)
            todo = [_entry(n, entries, rng) for n in numbers[start:start + size]]
            start += size
            while todo:
                confirmed, todo, pause = _send(manager, todo, tally, rng)
                if confirmed:
                    out.write("".join(f"{i}\n" for i in confirmed))
                    out.flush()
                    tally["confirmed"] += len(confirmed)
                if todo:
                    tally["resent"] += len(todo)
                    time.sleep(pause)
    return tally


def main(argv: list[str]) -> None:
    index, producers, entries, out_path, seed = argv
    tally = produce(int(index), int(producers), int(entries), out_path, int(seed))
    print(json.dumps({"producer": int(index), **tally}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
