"""scripts/bench_feeds.py at a small scale: several fetcher processes over a few hundred
local feeds fetch each feed exactly once and accept every distinct entry (no timing)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_three_fetchers_fetch_each_of_300_feeds_exactly_once(tmp_path: Path) -> None:
    out = tmp_path / "feeds.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_feeds.py"), "--feeds", "300",
         "--fetchers", "3", "--threads", "4", "--json", str(out)],
        capture_output=True, text=True, timeout=280, check=False, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert (result["fetched_twice"], result["missed"], result["requests"]) == (0, 0, 300)
    # description-only items and the post number "1" shared by every feed: none lost
    assert (result["accepted"], result["duplicates"]) == (900, 0)
    assert result["fetch_totals"]["fetched"] == 300
