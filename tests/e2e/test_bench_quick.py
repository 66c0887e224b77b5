"""The benchmark's --quick run works end to end; its figures are not asserted (no timing)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SECTIONS = ("meta", "ingest", "e2e", "lateness", "flatness", "memory", "fairness", "budget",
            "startup", "ratios", "verdicts")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_quick_benchmark_writes_every_section(tmp_path: Path) -> None:
    out = tmp_path / "latest.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench.py"), "--quick", "--no-install",
         "--json", str(out), "--docs-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=280, check=False, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    assert set(SECTIONS) <= set(results)
    for system in ("ours_simple", "ours_fork", "rq_simple", "rq_packed_simple"):
        assert results["e2e"][system]["median"] > 0
    assert results["memory"]["pending_bytes_per_entry"] > 0
    assert results["startup"]["ours_first_ack_s"]["median"] > 0
    assert proc.stdout.strip().splitlines()[-1].startswith("bench check: ")
    assert "<!-- bench:tables:start -->" in (tmp_path / "benchmarks.md").read_text()
