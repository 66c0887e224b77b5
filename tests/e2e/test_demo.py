"""`batcher demo` runs the whole pipeline on its own, exits 0 and writes a real PNG."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_demo_on_an_embedded_redis_prints_the_report_and_writes_the_chart(
    tmp_path: Path,
) -> None:
    png = tmp_path / "demo-report.png"
    env = {k: v for k, v in os.environ.items() if k != "BATCH_REDIS_URL"}
    run = subprocess.run(
        [sys.executable, "-m", "batcher", "demo", "--entries", "300", "--png", str(png)],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=110,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "embedded redis-server" in run.stdout
    assert "redis-batcher demo report" in run.stdout
    accepted_line = next(line for line in run.stdout.splitlines() if "accepted / acked" in line)
    accepted, acked, dead = (int(x) for x in accepted_line.split("│")[2].split("/"))
    assert accepted == acked + dead and accepted >= 300
    data = png.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000
