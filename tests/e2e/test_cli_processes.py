"""``batcher coordinator`` and ``batcher worker`` as real processes, stopped by real signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis as redis_py

from batcher.config import load_config
from batcher.coordinator import Coordinator
from batcher.keys import QueueKeys
from batcher.producer import BatchStateManager
from tests.support.invariants import assert_consistent
from tests.support.waiting import wait_until

QUEUE = "proc"
KEYS = QueueKeys(QUEUE)


def _env(redis_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCH_")}
    env.update(BATCH_REDIS_URL=redis_url, BATCH_QUEUE=QUEUE, BATCH_LOG_FORMAT="json", **extra)
    return env


class Batcher:
    """Starts ``python -m batcher.cli ...`` with stderr in a file (a pipe nobody reads could
    fill up and stall the child); kills whatever is still running at teardown."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: Batcher = []

    def start(self, *args: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
        log_path = self.log_dir / f"{args[0]}-{len(self.procs)}.log"
        with log_path.open("wb") as log_file:
            proc = subprocess.Popen([sys.executable, "-m", "batcher.cli", *args], env=env,
                                    stdout=subprocess.DEVNULL, stderr=log_file)
        proc.log_path = log_path  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    @staticmethod
    def stderr(proc: subprocess.Popen[bytes]) -> str:
        return Path(proc.log_path).read_text()  # type: ignore[attr-defined]

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Batcher]:
    batcher = Batcher(tmp_path)
    yield batcher
    batcher.close()


def _wait_until(predicate: Callable[[], object]) -> None:
    wait_until(predicate, "the condition")


def test_coordinator_dispatches_what_is_due(
    redis_url: str, real_redis: redis_py.Redis, procs: Batcher
) -> None:
    config = load_config(queue=QUEUE, redis_url=redis_url, size_threshold=5, min_batch_size=1)
    BatchStateManager(real_redis, config).queue_many(
        [{"id": f"c{i}", "payload": {}} for i in range(5)])
    proc = procs.start("coordinator", env=_env(redis_url, BATCH_SIZE_THRESHOLD="5",
                                             BATCH_MIN_BATCH_SIZE="1"))
    _wait_until(lambda: real_redis.zcard(KEYS.pending) == 0)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=10) == 0
    assert real_redis.hget(KEYS.stats, "flushes:size") == b"1"


def test_burst_simple_worker_processes_a_dispatched_batch(
    redis_url: str, real_redis: redis_py.Redis, procs: Batcher
) -> None:
    config = load_config(queue=QUEUE, redis_url=redis_url)
    BatchStateManager(real_redis, config).queue_many(
        [{"id": f"w{i}", "priority": i % 3, "payload": {"n": i}} for i in range(4)])
    runner = Coordinator(real_redis, config)
    runner.start()
    runner.drain(manual=True)
    assert runner.tally.flushed_entries == 4
    proc = procs.start("worker", "--burst", "--simple", env=_env(redis_url))
    code = proc.wait(timeout=60)
    stderr = procs.stderr(proc)
    assert code == 0, stderr
    assert '"batch.acked"' in stderr
    manager = BatchStateManager(real_redis, config)
    assert [manager.get_result(f"w{i}") for i in range(4)] == [{"n": i} for i in range(4)]
    assert real_redis.hget(KEYS.stats, "acked") == b"4"
    assert_consistent(real_redis, KEYS)
    check = subprocess.run([sys.executable, "-m", "batcher.cli", "check"], env=_env(redis_url),
                           capture_output=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr


def test_worker_processes_forward_sigterm_and_exit_0(
    redis_url: str, procs: Batcher
) -> None:
    proc = procs.start("worker", "--processes", "2", "--simple", env=_env(redis_url))
    client = redis_py.Redis.from_url(redis_url)
    # both children registered with RQ: they are listening
    _wait_until(lambda: client.scard("rq:workers") >= 2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0
    assert client.scard("rq:workers") == 0
