"""The chaos run's verdict, read from Redis after every process stopped.

An accepted id (confirmed to a producer) is *acked* when its ``result:<id>`` exists: ack.lua
writes it in the same atomic step that retires the entry, the AOF (``appendfsync always``)
keeps it across the restarts, and the run's results outlive it (``BATCH_RESULT_TTL_SEC``,
one day by default). It is *dead* when the dead set holds it with a reason. Anything else is
lost.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

import orjson
from chaos_handler import FAILED_KEY, HANDLED_KEY

from batcher.connection import connect
from batcher.keys import QueueKeys

WINDOW = 1000
STATS_SHOWN = ("accepted", "duplicates", "acked", "dead", "redeliveries", "redelivered_batches",
               "lost_dispatches", "stale_claims", "stale_acks", "stale_fails", "rejected")


class RunFacts(Protocol):
    kills: int
    redis_restarts: int
    env: dict[str, str]

    def ids_file(self, index: int) -> Path: ...


@dataclass
class Verdict:
    ok: bool
    summary: str
    lines: list[str] = field(default_factory=list)


def _windows(ids: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(ids), WINDOW):
        yield ids[start:start + WINDOW]


def accepted_ids(run: RunFacts, producers: int) -> list[str]:
    ids: set[str] = set()
    for i in range(producers):
        path = run.ids_file(i)
        if path.exists():
            ids.update(path.read_text(encoding="ascii").split())
    return sorted(ids)


def _int(raw: Any) -> int:
    return int(raw) if raw is not None else 0


def _check(env: dict[str, str]) -> tuple[int, str]:
    done = subprocess.run([sys.executable, "-m", "batcher", "check"], env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    out = (done.stdout + done.stderr).strip()
    return done.returncode, out


def _acked_without_result(lost: list[str], acked: set[str], successes: dict[bytes, int],
                          results_dropped: int) -> list[str]:
    """A full Redis had acks go through without results (counted in ``results_dropped``):
    on a drained queue an id handled successfully and not dead was acked. Those move from
    ``lost`` to ``acked``, when the counter covers them all; the rest stay lost."""
    dropped = [i for i in lost if successes.get(i.encode(), 0) >= 1]
    if len(dropped) > results_dropped:
        return lost
    acked.update(dropped)
    return [i for i in lost if i not in acked]


def verify(url: str, queue: str, run: RunFacts, drained: bool, producers: int, *,  # noqa: C901
           results_may_drop: bool = False) -> Verdict:
    client = connect(url)
    keys = QueueKeys(queue)
    accepted = accepted_ids(run, producers)
    acked: set[str] = set()
    dead_reasons: dict[str, str] = {}
    for window in _windows(accepted):
        pipe = client.pipeline(transaction=False)
        for entry_id in window:
            pipe.exists(keys.result(entry_id))
            pipe.hget(keys.dead_payloads, entry_id)
        replies = pipe.execute()
        for i, entry_id in enumerate(window):
            if replies[2 * i]:
                acked.add(entry_id)
            record = replies[2 * i + 1]
            if record is not None:
                dead_reasons[entry_id] = str(orjson.loads(record).get("reason") or "")
    lost = [i for i in accepted if i not in acked and i not in dead_reasons]
    stats = {k.decode(): v.decode() for k, v in
             cast(dict[bytes, bytes], client.hgetall(keys.counters)).items()}
    handled = cast(dict[bytes, bytes], client.hgetall(HANDLED_KEY))
    failed = cast(dict[bytes, bytes], client.hgetall(FAILED_KEY))
    successes = {k: int(v) - _int(failed.get(k)) for k, v in handled.items()}
    if results_may_drop and drained:
        lost = _acked_without_result(lost, acked, successes, _int(stats.get("results_dropped")))
    both = acked & set(dead_reasons)
    no_reason = [i for i, r in dead_reasons.items() if not r]
    duplicates = sum(1 for n in successes.values() if n > 1)
    called_again = sum(1 for v in handled.values() if int(v) > 1)
    redeliveries = _int(stats.get("redeliveries"))
    check_rc, check_out = _check(run.env)

    lines = [
        "stats " + " ".join(f"{k}={stats.get(k, 0)}" for k in STATS_SHOWN),
        f"ids called more than once={called_again} (retries after failures included); "
        f"handled successfully more than once={duplicates} <= redelivered entries="
        f"{redeliveries}: {'yes' if duplicates <= redeliveries else 'NO'}",
        "dead by reason " + " ".join(
            f"{r}={sum(1 for x in dead_reasons.values() if x == r)}"
            for r in sorted(set(dead_reasons.values()))),
        f"batcher check exit {check_rc}: " + " | ".join(check_out.splitlines()[-12:]),
    ]
    problems = []
    if not drained:
        problems.append("the queue did not drain before --duration-cap")
    if lost:
        problems.append(f"lost ids (first 10): {' '.join(lost[:10])}")
    if both:
        problems.append(f"ids both acked and dead: {' '.join(sorted(both)[:10])}")
    if no_reason:
        problems.append(f"dead ids without a reason: {' '.join(no_reason[:10])}")
    if _int(stats.get("accepted")) != len(accepted):
        problems.append(f"counters.accepted={stats.get('accepted')} but producers confirmed "
                        f"{len(accepted)} ids")
    if check_rc != 0:
        problems.append("batcher check failed")
    lines += [f"PROBLEM: {p}" for p in problems]
    summary = (f"chaos: accepted={len(accepted)} acked={len(acked)} dead={len(dead_reasons)} "
               f"lost={len(lost)} duplicates={duplicates} kills={run.kills} "
               f"redis_restarts={run.redis_restarts}")
    return Verdict(not problems, summary, lines)
