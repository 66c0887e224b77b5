"""SIGTERM and Redis outages on real `batcher worker` / `batcher coordinator` processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis as redis_py

from batcher.config import BatchProcessingConfig
from batcher.coordinator import Coordinator
from batcher.producer import BatchStateManager
from tests.support.invariants import assert_consistent
from tests.support.redis_server import RedisServer
from tests.support.waiting import HANG_GUARD_SECONDS, wait_blocked, wait_until

ROOT = Path(__file__).resolve().parents[2]
QUEUE = "sig"


def _config(url: str) -> BatchProcessingConfig:
    return BatchProcessingConfig(queue=QUEUE, redis_url=url, log_format="json")


def _env(url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BATCH_", "SIM_"))}
    env.update(BATCH_REDIS_URL=url, BATCH_QUEUE=QUEUE, BATCH_LOG_FORMAT="json",
               BATCH_HANDLER="workers.handlers.simulated:handle", **extra)
    return env


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "batcher", *args], env=env, cwd=ROOT,
                                stdout=out, stderr=subprocess.STDOUT)


def _wait_for(what: str, ready: Callable[[], bool], log: Path) -> None:
    try:
        wait_until(ready, what)
    except AssertionError:
        pytest.fail(f"timed out waiting for {what}; log:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        _stop(proc)


def _dispatch_one_batch(client: redis_py.Redis, config: BatchProcessingConfig, n: int) -> str:
    BatchStateManager(client, config).queue_many(
        [{"id": f"e{i}", "source": "t", "priority": 0, "payload": {"i": i}} for i in range(n)])
    coordinator = Coordinator(client, config)
    coordinator.start()
    coordinator.drain(manual=True)
    (key,) = client.scan_iter(match=f"{config.keys.base}:batch:*")
    return bytes(key).decode()


@pytest.mark.parametrize("mode", ["simple", "fork"])
def test_sigterm_mid_batch_lets_the_worker_finish_and_ack_it(
    mode: str, redis_url: str, real_redis: redis_py.Redis, tmp_path: Path,
    procs: list[subprocess.Popen[bytes]],
) -> None:
    config = _config(redis_url)
    batch_key = _dispatch_one_batch(real_redis, config, 3)
    log = tmp_path / "worker.log"
    argv = ["worker", *(["--simple"] if mode == "simple" else [])]
    worker = _spawn(argv, _env(redis_url, SIM_BASE_MS="2500"), log)
    procs.append(worker)
    _wait_for("the batch to be claimed",
              lambda: real_redis.hget(batch_key, "status") == b"claimed", log)

    worker.send_signal(signal.SIGTERM)

    assert worker.wait(timeout=20) == 0, log.read_text()[-3000:]
    assert not real_redis.exists(batch_key)
    assert real_redis.hget(config.keys.stats, "acked") == b"3"
    assert all(real_redis.exists(config.keys.result(f"e{i}")) for i in range(3))
    assert_consistent(real_redis, config.keys)


def test_sigterm_stops_a_coordinator_blocked_in_its_wait(
    redis_url: str, real_redis: redis_py.Redis, tmp_path: Path,
    procs: list[subprocess.Popen[bytes]],
) -> None:
    log = tmp_path / "coordinator.log"
    coordinator = _spawn(["coordinator"], _env(redis_url), log)
    procs.append(coordinator)
    # idle and blocked in BLPOP on its wakeup list: the signal must end that wait
    wait_blocked(real_redis, "blpop")

    coordinator.send_signal(signal.SIGTERM)

    assert coordinator.wait(timeout=HANG_GUARD_SECONDS) == 0, log.read_text()[-3000:]
    assert b"coordinator.stopped" in log.read_bytes()


@pytest.mark.real
def test_coordinator_waits_out_a_redis_outage_and_then_flushes(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    with RedisServer() as server:
        log = tmp_path / "coordinator.log"
        coordinator = _spawn(["coordinator"], _env(server.url), log)
        procs.append(coordinator)
        _wait_for("the coordinator to start",
                  lambda: b"coordinator.started" in log.read_bytes(), log)
        server.kill()
        _wait_for("the outage to be noticed",
                  lambda: b"coordinator.redis_unavailable" in log.read_bytes(), log)
        # it keeps retrying (a second attempt logged) instead of exiting
        _wait_for("a retry during the outage",
                  lambda: log.read_bytes().count(b"coordinator.redis_unavailable") >= 2, log)
        assert coordinator.poll() is None, log.read_text()[-3000:]
        server.start()
        _wait_for("the reconnection",
                  lambda: b"coordinator.redis_recovered" in log.read_bytes(), log)
        client = redis_py.Redis.from_url(server.url)
        config = _config(server.url)
        BatchStateManager(client, config).queue_many(
            [{"id": f"e{i}", "source": "t", "payload": {}} for i in range(25)])
        _wait_for("a size flush", lambda: client.zcard(config.keys.pending) == 0, log)

        coordinator.send_signal(signal.SIGTERM)
        assert coordinator.wait(timeout=10) == 0, log.read_text()[-3000:]
        client.close()
