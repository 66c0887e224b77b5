"""`batcher demo` runs the whole pipeline on its own, exits 0 and writes a real PNG."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.timeout(240)
def test_demo_on_an_embedded_redis_prints_the_report_and_writes_the_chart(
    tmp_path: Path,
) -> None:
    # with --dashboard: the dashboard answers with the run's figures after the report and
    # the demo ends cleanly (exit 0, its dashboard stopped) on SIGTERM
    png = tmp_path / "demo-report.png"
    out_path = tmp_path / "demo.out"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "BATCH_REDIS_URL"}
    with out_path.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "batcher", "demo", "--entries", "300", "--png", str(png),
             "--dashboard", "--dashboard-port", str(port)],
            env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, text=True)
    try:
        while "Ctrl-C to stop" not in out_path.read_text() and proc.poll() is None:
            time.sleep(0.2)
        assert proc.poll() is None, out_path.read_text()[-3000:]
        (queue,) = httpx.get(f"http://127.0.0.1:{port}/api/queues", timeout=30).json()["queues"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, out_path.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stdout = out_path.read_text()
    assert "embedded redis-server" in stdout
    assert "redis-batcher demo report" in stdout
    accepted_line = next(line for line in stdout.splitlines() if "accepted / acked" in line)
    accepted, acked, dead = (int(x) for x in accepted_line.split("│")[2].split("/"))
    assert accepted == acked + dead and accepted >= 300
    assert (queue["counters"]["accepted"], queue["counters"]["acked"]) == (accepted, acked)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/api/queues", timeout=5)  # stopped with the demo
    data = png.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000
