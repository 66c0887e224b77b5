"""Many queues and a sharded queue with real processes (issue 18 items 2 and 3).

One coordinator process and one worker process serve two queues from one settings file:
``e2e-hot`` split in 3 shards and ``e2e-quiet``. Several producer processes enqueue. Every entry
is handled and acked exactly once, ``batcher check`` passes, nothing is lost, each source's
entries meet the handler in the order they were enqueued (within its shard), and ``stats
--json`` shows the sharded queue as one with a line per shard.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import redis

from batcher.keys import QueueKeys, shard_names
from tests.support.invariants import assert_consistent
from tests.support.order_log import HANDLED_KEY, ORDER_PREFIX
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
HOT, QUIET, SHARDS = "e2e-hot", "e2e-quiet", 3
HOT_PRODUCERS, SOURCES, PER_SOURCE = 3, 4, 150
QUIET_ENTRIES = 100
# a run on the loaded 2-core machine: a hang guard, never a speed claim
GUARD_SECONDS = 240.0

SETTINGS = f"""
[defaults]
time_threshold_seconds = 1
high_time_threshold_seconds = 1
urgent_time_threshold_seconds = 1
max_buffer_age_seconds = 120
max_buffer_size = 10000
handler = "tests.support.order_log:handle"

[queues.{HOT}]
shards = {SHARDS}
size_threshold = 20
max_batch_size = 40

[queues.{QUIET}]
size_threshold = 7
"""

# each producer owns its sources and sends each one's entries in order, i = 0, 1, 2, ...
PRODUCER = """
import sys
import time
from batcher import BatchStateManager
from batcher.settings_file import config_for_queue
queue = sys.argv[1]
index, sources, per_source = (int(a) for a in sys.argv[2:5])
manager = BatchStateManager(config=config_for_queue(queue))
entries = [{"id": f"{queue}-p{index}-s{s}-{i}", "source": f"p{index}-s{s}", "payload": {"i": i}}
           for i in range(per_source) for s in range(sources)]
for start in range(0, len(entries), 40):
    manager.queue_many(entries[start:start + 40])
    time.sleep(0.002)  # the next call a ms later: its entries come after these on the clock
"""


def _env(redis_url: str, settings: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCH_")}
    env.update(PYTHONPATH=str(ROOT), BATCH_REDIS_URL=redis_url, BATCH_LOG_FORMAT="json",
               BATCH_SETTINGS_FILE=str(settings))
    return env


def _batcher(*args: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    # logs go to a file: an unread PIPE fills up and blocks the process mid-write
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "batcher", *args], env=env, cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=out)


def _counter(client: redis.Redis, queue: str, name: str) -> int:
    return int(client.hget(QueueKeys(queue).counters, name) or 0)


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "batcher", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_one_coordinator_and_one_worker_serve_a_sharded_and_a_plain_queue(
    redis_url: str, real_redis: redis.Redis, tmp_path: Path
) -> None:
    settings = tmp_path / "queues.toml"
    settings.write_text(SETTINGS)
    env = _env(redis_url, settings)
    log = tmp_path / "processes.log"
    queues = ["--queue", HOT, "--queue", QUIET]
    daemons = [_batcher("coordinator", *queues, env=env, log=log),
               _batcher("worker", *queues, env=env, log=log)]
    shards = shard_names(HOT, SHARDS)
    served = [*shards, QUIET]
    hot_total = HOT_PRODUCERS * SOURCES * PER_SOURCE
    try:
        producers = [subprocess.Popen([sys.executable, "-c", PRODUCER, HOT, str(i),
                                       str(SOURCES), str(PER_SOURCE)], env=env, cwd=ROOT)
                     for i in range(HOT_PRODUCERS)]
        producers.append(subprocess.Popen([sys.executable, "-c", PRODUCER, QUIET, "0", "1",
                                           str(QUIET_ENTRIES)], env=env, cwd=ROOT))
        assert all(p.wait(120) == 0 for p in producers)
        total = hot_total + QUIET_ENTRIES
        wait_until(lambda: sum(_counter(real_redis, q, "acked") for q in served) >= total,
                   f"{total} entries acked", guard_seconds=GUARD_SECONDS)
    finally:
        for proc in daemons:
            proc.terminate()
        for proc in daemons:
            assert proc.wait(30) == 0, log.read_text()[-3000:]

    # every shard got work: the sources spread over them
    per_shard = {q: _counter(real_redis, q, "accepted") for q in shards}
    assert all(per_shard.values()) and sum(per_shard.values()) == hot_total, per_shard
    accepted = sum(_counter(real_redis, q, "accepted") for q in served)
    acked = sum(_counter(real_redis, q, "acked") for q in served)
    handled = {k.decode(): int(v) for k, v in real_redis.hgetall(HANDLED_KEY).items()}
    duplicates = sum(n - 1 for n in handled.values())
    lost = accepted - acked
    print(f"sharded e2e: accepted={accepted} acked={acked} lost={lost} "
          f"duplicates={duplicates} per_shard={per_shard}")
    assert (accepted, acked, lost, duplicates) == (total, total, 0, 0)
    assert len(handled) == total
    for q in served:
        assert_consistent(real_redis, QueueKeys(q))

    # per source, the handler met the entries in the order they were enqueued, exactly:
    # entries of one call share a ms, and every flush (deadline ones too) keeps their order
    orders = {k.decode(): [tuple(map(int, item.split(b":")))
                           for item in real_redis.lrange(k, 0, -1)]
              for k in real_redis.scan_iter(match=f"{ORDER_PREFIX}*")}
    assert len(orders) == HOT_PRODUCERS * SOURCES + 1
    for key, seen in orders.items():
        expected = QUIET_ENTRIES if QUIET in key else PER_SOURCE
        assert [i for i, _ in seen] == list(range(expected)), f"{key}: out of order"
        clock = [ms for _, ms in seen]
        assert clock == sorted(clock), f"{key}: handled out of enqueue order"
        assert len(set(clock)) > 1  # several calls: the check had something to order
    # a source's entries all went to one shard (the key names the shard's queue)
    assert {k.split(":")[2] for k in orders} == {*shards, QUIET}

    checked = _cli(env, "check", "--queue", HOT)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"shards={SHARDS}" in checked.stdout
    assert _cli(env, "check", "--queue", QUIET).returncode == 0

    shown = _cli(env, "stats", "--json", "--queue", HOT)
    assert shown.returncode == 0, shown.stderr
    stats = orjson.loads(shown.stdout)
    assert stats["queue"] == HOT
    assert (stats["counters"]["accepted"], stats["counters"]["acked"]) == (hot_total, hot_total)
    assert [s["queue"] for s in stats["shards"]] == shards
    assert [s["acked"] for s in stats["shards"]] == [per_shard[q] for q in shards]
    quiet = orjson.loads(_cli(env, "stats", "--json", "--queue", QUIET).stdout)
    assert "shards" not in quiet and quiet["counters"]["acked"] == QUIET_ENTRIES
