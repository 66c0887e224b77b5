"""The pipeline against the fake LLM misbehaving in every way at once (scripts/llm_chaos.py)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SUMMARY = re.compile(
    r"^llm-chaos: accepted=(\d+) acked=(\d+) dead_rejected=(\d+) dead_refused=(\d+) lost=(\d+) "
    r"pauses=(\d+) rate_limit_pauses=(\d+) requests=(\d+)$"
)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_only_the_marked_entries_die_and_nothing_is_lost(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "llm_chaos.py"), "--entries", "300",
         "--rejected", "4", "--refused", "3", "--duration-cap", "300",
         "--log-dir", str(tmp_path / "logs")],
        cwd=ROOT, capture_output=True, text=True, timeout=380,
    )
    report = run.stdout[-4000:] + run.stderr[-2000:]
    assert run.returncode == 0, report
    # the script checks the dead are exactly the marked ids; its summary says how many
    match = SUMMARY.match(run.stdout.strip().splitlines()[-1])
    assert match, report
    accepted, acked, rejected, refused, lost, pauses, rate_limits, requests = map(
        int, match.groups())
    assert (accepted, rejected, refused, lost) == (300, 4, 3, 0), report
    assert acked == accepted - rejected - refused, report
    assert pauses > 0 and rate_limits > 0 and requests > 0, report
    assert "FAIL" not in run.stdout, report
