"""The full-Redis run, small: Redis reaches maxmemory mid-run and the drain goes on."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SUMMARY = re.compile(
    r"^full-redis: accepted=(\d+) acked=(\d+) dead=(\d+) lost=(\d+) refusals=(\d+) "
    r"refused_s=[\d.]+ longest_refused_s=[\d.]+ results_dropped=(\d+) daemons_exited=(\d+) "
    r"after_drain_ok=(\d)$"
)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_a_full_redis_is_drained_and_producers_succeed_again() -> None:
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "full_redis.py"), "--entries", "8000",
         "--budget-mb", "2", "--duration-cap", "240"],
        cwd=ROOT, capture_output=True, text=True, timeout=380, check=False,
    )
    report = run.stdout[-3000:] + run.stderr[-2000:]
    match = SUMMARY.match(run.stdout.strip().splitlines()[-1])
    assert match, report
    accepted, acked, dead, lost, refusals, _dropped, exited, after_ok = map(int, match.groups())
    assert refusals > 0, report  # Redis really was full mid-run
    assert accepted == 8200 and acked == accepted and dead == 0 and lost == 0, report
    assert exited == 0 and after_ok == 1, report
    assert run.returncode == 0, report
