"""Daemons started before Redis wait for it instead of exiting (no crash loop)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.redis_server import RedisServer, free_port

ROOT = Path(__file__).resolve().parents[2]


def _wait_for(path: Path, text: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if text in path.read_text():
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("command", [["coordinator"], ["worker", "--simple"]])
def test_daemon_waits_for_redis_then_runs_and_stops_cleanly(
    command: list[str], tmp_path: Path
) -> None:
    port = free_port()
    log = tmp_path / "daemon.log"
    env = {**os.environ, "BATCH_REDIS_URL": f"redis://127.0.0.1:{port}/0",
           "BATCH_LOG_FORMAT": "json"}
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "batcher", *command], env=env, cwd=ROOT,
                                stdout=out, stderr=out)
    try:
        assert _wait_for(log, "redis.waiting", 15), log.read_text()
        assert proc.poll() is None, "the daemon exited while Redis was down"
        with RedisServer(port=port):
            started = "coordinator.started" if command[0] == "coordinator" else "worker.starting"
            assert _wait_for(log, started, 20), log.read_text()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(10) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
