"""Daemons started before Redis wait for it instead of exiting (no crash loop)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.redis_server import RedisServer, free_port
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]


def _wait_for(path: Path, text: str) -> None:
    wait_until(lambda: text in path.read_text(), f"{text!r} in the log:\n{path.read_text()}")


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
        _wait_for(log, "redis.waiting")
        assert proc.poll() is None, "the daemon exited while Redis was down"
        with RedisServer(port=port):
            started = "coordinator.started" if command[0] == "coordinator" else "worker.starting"
            _wait_for(log, started)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(10) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
