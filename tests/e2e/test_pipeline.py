"""End to end with real processes: producers, a coordinator and two `batcher worker`s."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import redis

from tests.support.recording import HANDLED_KEY
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
PRODUCERS, PER_PRODUCER = 3, 2000

PRODUCER = """
import sys
from batcher import BatchStateManager
index, count = int(sys.argv[1]), int(sys.argv[2])
manager = BatchStateManager()
entries = [{"id": f"p{index}-{i}", "source": f"producer-{index}", "priority": i % 3,
            "payload": {"producer": index, "i": i, "tags": [], "big": 2**63 - 1}}
           for i in range(count)]
for start in range(0, count, 250):
    manager.queue_many(entries[start:start + 250])
"""


def _env(redis_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "BATCH_REDIS_URL": redis_url,
        "BATCH_QUEUE": "e2e",
        "BATCH_HANDLER": "tests.support.recording:handle",
        "BATCH_MAX_BUFFER_SIZE": "10000",
        "BATCH_TIME_THRESHOLD_SEC": "1",
        "BATCH_HIGH_TIME_THRESHOLD_SEC": "1",
        "BATCH_URGENT_TIME_THRESHOLD_SEC": "1",
        "BATCH_MAX_BUFFER_AGE_SEC": "60",
        "BATCH_LOG_FORMAT": "json",
    }


def _batcher(*args: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    # logs go to a file: an unread PIPE fills up and blocks the process mid-write
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "batcher", *args], env=env, cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=out)


def test_every_entry_is_handled_exactly_once(
    redis_url: str, real_redis: redis.Redis, tmp_path: Path
) -> None:
    env = _env(redis_url)
    log = tmp_path / "processes.log"
    daemons = [_batcher("coordinator", env=env, log=log), _batcher("worker", env=env, log=log),
               _batcher("worker", env=env, log=log)]
    try:
        started = time.monotonic()
        producers = [subprocess.Popen([sys.executable, "-c", PRODUCER, str(i), str(PER_PRODUCER)],
                                      env=env, cwd=ROOT) for i in range(PRODUCERS)]
        assert all(p.wait(120) == 0 for p in producers)
        total = PRODUCERS * PER_PRODUCER
        wait_until(lambda: int(real_redis.hget("batcher:{e2e}:stats", "acked") or 0) >= total,
                   f"{total} entries acked", guard_seconds=240)
        elapsed = time.monotonic() - started
        print(f"end-to-end: {total} entries in {elapsed:.2f} s = {total / elapsed:.0f} entries/s")
    finally:
        for proc in daemons:
            proc.terminate()
        for proc in daemons:
            assert proc.wait(15) == 0, log.read_text()[-3000:]

    handled = real_redis.hgetall(HANDLED_KEY)
    expected = {f"p{i}-{j}".encode() for i in range(PRODUCERS) for j in range(PER_PRODUCER)}
    assert set(handled) == expected
    assert {int(v) for v in handled.values()} == {1}, "an entry was handled twice"
    stats = real_redis.hgetall("batcher:{e2e}:stats")
    assert int(stats[b"accepted"]) == int(stats[b"acked"]) == total
    check = subprocess.run([sys.executable, "-m", "batcher", "check"], env=env, cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    # the handler returns each payload: its result is the payload as the producer sent it
    assert real_redis.get("batcher:{e2e}:result:p1-7") == (
        b'{"producer":1,"i":7,"tags":[],"big":9223372036854775807}')
