"""``batcher check`` fires each of its problems: Redis corrupted on purpose, one way at a time.

A queue with an entry in every place (pending, delayed, in flight, dead, acked) is built with
the real scripts; each case breaks one invariant the way a bug or a manual edit would, and
the check must name exactly that problem and exit 1.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import redis as redis_py
from click.testing import CliRunner, Result

from batcher.check import check_queue
from batcher.cli import cli
from batcher.keys import QueueKeys
from batcher.records import BatchRecord
from batcher.scripts import Scripts
from tests.support.builders import T0, entry, make_scripts
from tests.support.redis_server import RedisServer

QUEUE = "chk"
K = QueueKeys(QUEUE)


pytestmark = pytest.mark.usefixtures("clean_batch_env")


def _one_batch(s: Scripts, batch_id: str, ids: list[str], now_ms: int) -> None:
    s.enqueue([entry(i) for i in ids], now_ms=now_ms)
    decision = s.flush(batch_id, manual=True, now_ms=now_ms)
    assert decision.batch is not None and decision.batch.size == len(ids)


def build_queue(client: redis_py.Redis) -> Scripts:
    """x1 dead, d1 delayed (one failed call), a1 acked, f1 in flight (batch 'fly'), p1, p2
    pending. ``batcher check`` finds it consistent."""
    s = make_scripts(client, queue=QUEUE, max_attempts=3)
    once = make_scripts(client, queue=QUEUE, max_attempts=1)
    _one_batch(s, "bx", ["x1"], T0)
    assert isinstance(s.claim("bx", 1, now_ms=T0), BatchRecord)
    once.ack("bx", 1, processing_ms=1, started_ms=T0, results={},
             failed={"x1": ("boom", 0)}, now_ms=T0)
    _one_batch(s, "bd", ["d1"], T0 + 1)
    assert isinstance(s.claim("bd", 1, now_ms=T0 + 1), BatchRecord)
    s.ack("bd", 1, processing_ms=1, started_ms=T0, results={},
          failed={"d1": ("boom", 10**9)}, now_ms=T0 + 1)
    _one_batch(s, "ba", ["a1"], T0 + 2)
    assert isinstance(s.claim("ba", 1, now_ms=T0 + 2), BatchRecord)
    s.ack("ba", 1, processing_ms=1, started_ms=T0, results={"a1": b"1"}, now_ms=T0 + 2)
    _one_batch(s, "fly", ["f1"], T0 + 3)
    s.enqueue([entry("p1"), entry("p2")], now_ms=T0 + 4)
    return s


def run_check(url: str) -> Result:
    return CliRunner().invoke(cli, ["check", "--queue", QUEUE, "--redis-url", url],
                              catch_exceptions=False)


def problems(result: Result) -> list[str]:
    return [line.removeprefix("PROBLEM: ") for line in result.stdout.splitlines()
            if line.startswith("PROBLEM: ")]


def _size(client: redis_py.Redis, entry_id: str) -> int:
    return int(client.hstrlen(K.payloads, entry_id))


def test_the_built_queue_is_consistent_and_check_says_so(
    redis_url: str, real_redis: redis_py.Redis
) -> None:
    build_queue(real_redis)
    result = run_check(redis_url)
    assert result.exit_code == 0, result.stdout
    assert problems(result) == []
    facts = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    assert (facts["pending"], facts["delayed"], facts["inflight_batches"], facts["dead"],
            facts["acked"], facts["accepted"]) == ("2", "1", "1", "1", "1", "6")
    assert facts["aof_appendonly"] == "no"  # the session server runs without AOF
    assert facts["maxmemory_policy"] == "noeviction"
    assert result.stdout.endswith("ok: queue 'chk' is consistent\n")


def _pending_bytes(c: redis_py.Redis) -> int:
    return _size(c, "p1") + _size(c, "p2")


def _evicting(c: redis_py.Redis) -> list[str]:
    c.config_set("maxmemory-policy", "allkeys-lru")
    return ["maxmemory-policy is 'allkeys-lru', not 'noeviction': Redis may evict pending "
            "entries under memory pressure"]


def _payload_lost(c: redis_py.Redis) -> list[str]:
    before = _pending_bytes(c)
    c.hdel(K.payloads, "p1")
    return ["1 pending/delayed ids have no payload: 'p1'",
            f"pending bytes gauge (state 'bytes') is {before}, but the pending payloads add "
            f"up to {_size(c, 'p2')}"]


def _pending_and_delayed(c: redis_py.Redis) -> list[str]:
    c.zadd(K.pending, {"d1": 1})
    c.hincrby(K.state, "bytes", _size(c, "d1"))  # the gauge agrees: only the overlap is wrong
    return ["1 ids are both pending and delayed: 'd1'",
            "accepted (6) != pending (3) + delayed (1) + in flight (1) + dead (1) + acked (1) "
            "+ purged (0) = 7: 1 entries counted twice"]


def _delayed_score_lost(c: redis_py.Redis) -> list[str]:
    c.hdel(K.delayed_score, "d1")
    return ["1 delayed ids have no delayed:score: 'd1'"]


def _stray_delayed_score(c: redis_py.Redis) -> list[str]:
    c.hset(K.delayed_score, "ghost", 5)
    return ["delayed:score holds 2 ids, delayed 1"]


def _orphan_payload(c: redis_py.Redis) -> list[str]:
    c.hset(K.payloads, "orphan", "{}")
    return ["payloads holds 4 ids but pending ∪ delayed has 3 with a payload; 1 payloads are "
            "in neither: 'orphan'"]


def _gauge_drift(c: redis_py.Redis) -> list[str]:
    c.hincrby(K.state, "bytes", 7)
    return [f"pending bytes gauge (state 'bytes') is {_pending_bytes(c) + 7}, but the pending "
            f"payloads add up to {_pending_bytes(c)}"]


def _stray_attempts(c: redis_py.Redis) -> list[str]:
    c.hset(K.attempts, "x1", 1)  # dead, yet still counted as retrying
    return ["1 ids in attempts are neither pending nor delayed: 'x1'"]


def _lease_without_record(c: redis_py.Redis) -> list[str]:
    c.zadd(K.inflight, {"ghost": T0})
    return ["1 in-flight batches have no batch record: 'ghost'"]


def _bad_status(c: redis_py.Redis) -> list[str]:
    c.hset(K.batch("fly"), "status", "lost")
    return ["1 batch records have an invalid status: fly=lost"]


def _record_without_lease(c: redis_py.Redis) -> list[str]:
    c.zrem(K.inflight, "fly")
    return ["1 batch records are not in flight (no lease): 'fly'"]


def _dead_without_record(c: redis_py.Redis) -> list[str]:
    c.hdel(K.dead_payloads, "x1")
    return ["1 dead ids have no dead:payloads record: 'x1'"]


def _stray_dead_record(c: redis_py.Redis) -> list[str]:
    c.hset(K.dead_payloads, "ghost", "{}")
    return ["dead:payloads holds 2 records for 1 dead ids"]


def _entries_unaccounted(c: redis_py.Redis) -> list[str]:
    c.hincrby(K.stats, "accepted", 2)
    return ["accepted (8) != pending (2) + delayed (1) + in flight (1) + dead (1) + acked (1) "
            "+ purged (0) = 6: 2 entries unaccounted for"]


def _entries_counted_twice(c: redis_py.Redis) -> list[str]:
    c.hincrby(K.stats, "acked", 1)
    return ["accepted (6) != pending (2) + delayed (1) + in flight (1) + dead (1) + acked (2) "
            "+ purged (0) = 7: 1 entries counted twice"]


CORRUPTIONS: dict[str, Callable[[redis_py.Redis], list[str]]] = {
    "evicting server": _evicting,
    "pending id without payload": _payload_lost,
    "pending and delayed": _pending_and_delayed,
    "delayed id without score": _delayed_score_lost,
    "delayed:score count": _stray_delayed_score,
    "orphan payload": _orphan_payload,
    "pending bytes gauge": _gauge_drift,
    "stray attempts": _stray_attempts,
    "lease without record": _lease_without_record,
    "bad batch status": _bad_status,
    "record without lease": _record_without_lease,
    "dead id without record": _dead_without_record,
    "dead:payloads count": _stray_dead_record,
    "accepted > held": _entries_unaccounted,
    "accepted < held": _entries_counted_twice,
}


@pytest.fixture
def restore_policy(real_redis: redis_py.Redis) -> Iterator[None]:
    yield
    real_redis.config_set("maxmemory-policy", "noeviction")


@pytest.mark.parametrize("corrupt", CORRUPTIONS.values(), ids=CORRUPTIONS.keys())
def test_check_names_each_broken_invariant_and_exits_1(
    corrupt: Callable[[redis_py.Redis], list[str]], redis_url: str,
    real_redis: redis_py.Redis, restore_policy: None,
) -> None:
    build_queue(real_redis)
    expected = corrupt(real_redis)
    result = run_check(redis_url)
    assert result.exit_code == 1
    assert problems(result) == expected
    assert result.stderr == (f"batcher: check failed for queue 'chk': {len(expected)} "
                             "problem(s)\n")


def test_a_long_problem_list_quotes_five_ids_then_an_ellipsis(
    redis_url: str, real_redis: redis_py.Redis
) -> None:
    build_queue(real_redis)
    real_redis.hset(K.attempts, mapping={f"gone{i}": 1 for i in range(7)})
    report = check_queue(real_redis, make_scripts(real_redis, queue=QUEUE).config)
    (line,) = report.problems
    assert line.startswith("7 ids in attempts are neither pending nor delayed: 'gone")
    assert line.count("'gone") == 5 and line.endswith(", ...")


def test_check_reports_the_servers_aof_settings() -> None:
    with RedisServer(extra_args=["--appendonly", "yes", "--appendfsync", "always"]) as server:
        client = redis_py.Redis.from_url(server.url)
        try:
            build_queue(client)
            result = run_check(server.url)
        finally:
            client.close()
    assert result.exit_code == 0, result.stdout
    assert "aof_appendonly=yes\naof_appendfsync=always\n" in result.stdout
