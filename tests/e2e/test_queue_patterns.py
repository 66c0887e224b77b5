"""A coordinator and a worker given a pattern serve the queues that appear after they
started (issue 18 item 2), as real processes.

Both start with ``--queue 'late-*'`` before any such queue exists (the worker used to exit
with "no queue matches"); then a producer creates ``late-a``, and once that is served,
``late-b`` (the running worker takes it on beside late-a). Each daemon looks
for new matching queues every 10 s, so the run takes that long; every entry is handled and
acked exactly once and nothing is lost.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import redis

from batcher.keys import QueueKeys
from tests.e2e.test_sharded_queues import ROOT, _batcher, _counter, _env
from tests.support.invariants import assert_consistent
from tests.support.order_log import HANDLED_KEY
from tests.support.waiting import wait_until

QUEUES, ENTRIES = ("late-a", "late-b"), 60
GUARD_SECONDS = 120.0  # two 10 s looks and the work: a hang guard, never a speed claim

SETTINGS = """
[defaults]
size_threshold = 10
min_batch_size = 1
time_threshold_seconds = 1
high_time_threshold_seconds = 1
urgent_time_threshold_seconds = 1
handler = "tests.support.order_log:handle"
"""

PRODUCER = """
import sys
from batcher import BatchStateManager
from batcher.settings_file import config_for_queue
queue, n = sys.argv[1], int(sys.argv[2])
manager = BatchStateManager(config=config_for_queue(queue))
manager.queue_many([{"id": f"{queue}-{i}", "source": f"s{i % 3}", "payload": {"i": i}}
                    for i in range(n)])
"""


def _logged(log: Path, event: str) -> bool:
    return log.exists() and f'"{event}"' in log.read_text()


def test_daemons_given_a_pattern_serve_queues_created_after_they_started(
    redis_url: str, real_redis: redis.Redis, tmp_path: Path
) -> None:
    settings = tmp_path / "queues.toml"
    settings.write_text(SETTINGS)
    env = _env(redis_url, settings)
    coordinator_log, worker_log = tmp_path / "coordinator.log", tmp_path / "worker.log"
    daemons = [_batcher("coordinator", "--queue", "late-*", env=env, log=coordinator_log),
               _batcher("worker", "--queue", "late-*", env=env, log=worker_log)]
    try:
        # both up and waiting, with no queue to serve yet
        wait_until(lambda: _logged(coordinator_log, "coordinator.no_queue_yet")
                   and _logged(worker_log, "worker.no_queue_yet"), "both daemons waiting")
        assert all(d.poll() is None for d in daemons)
        # late-a ends the wait; late-b appears while the worker already runs on late-a
        for queue in QUEUES:
            produced = subprocess.run([sys.executable, "-c", PRODUCER, queue, str(ENTRIES)],
                                      env=env, cwd=ROOT, timeout=60, check=False)
            assert produced.returncode == 0
            wait_until(lambda q=queue: _counter(real_redis, q, "acked") >= ENTRIES,
                       f"{ENTRIES} entries of {queue} acked", guard_seconds=GUARD_SECONDS)
        total = ENTRIES * len(QUEUES)
    finally:
        for proc in daemons:
            proc.terminate()
        for proc in daemons:
            assert proc.wait(30) == 0, (coordinator_log.read_text()[-2000:]
                                        + worker_log.read_text()[-2000:])

    accepted = sum(_counter(real_redis, q, "accepted") for q in QUEUES)
    acked = sum(_counter(real_redis, q, "acked") for q in QUEUES)
    handled = {k.decode(): int(v) for k, v in real_redis.hgetall(HANDLED_KEY).items()}
    duplicates = sum(n - 1 for n in handled.values())
    print(f"pattern e2e: accepted={accepted} acked={acked} lost={accepted - acked} "
          f"duplicates={duplicates}")
    assert (accepted, acked, accepted - acked, duplicates) == (total, total, 0, 0)
    assert sorted(handled) == sorted(f"{q}-{i}" for q in QUEUES for i in range(ENTRIES))
    # the running worker said it took on late-b (late-a it found before it started)
    text = worker_log.read_text()
    added = [line for line in text.splitlines() if '"worker.queues_added"' in line]
    assert len(added) == 1 and "late-b" in added[0], added
    for queue in QUEUES:
        assert_consistent(real_redis, QueueKeys(queue))
