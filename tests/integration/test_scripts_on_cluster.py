"""Every Lua script on a Redis Cluster (issue 18 item 1, groundwork).

A run of every script (the queue's, the budget's, the feed schedule's) on the session's
standalone server is recorded with MONITOR: each EVALSHA with the commands its script ran.
The same command stream then goes, in order, through redis-py's ``RedisCluster`` to a 3+3
cluster. What it shows:

- each queue script's keys, declared or not, are in the one slot of its queue's hash tag, and
  the cluster runs every call without CROSSSLOT or a "non local key" refusal, ending with the
  same keys as the standalone server;
- which scripts touch keys they do not declare (built in Lua from a declared prefix): the
  cluster runs them today only because the prefix carries the hash tag;
- ``bookkeeping.lua`` (RQ's commands replayed past an OOM refusal) declares no key and runs
  RQ's keys, which span slots: it cannot run on a cluster, it belongs to RQ's standalone Redis.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import pytest
import redis as redis_py
from redis.crc import key_slot

from batcher.budget import Budget, BudgetLimits
from batcher.feeds.fetch import FeedConfig, FetchReport
from batcher.feeds.schedule import FetchSchedule
from batcher.keys import QueueKeys
from batcher.oom import replay
from batcher.producer import build_envelope
from batcher.records import BatchRecord
from batcher.scripts import SCRIPT_NAMES, lua_source
from tests.support.builders import T0, make_scripts
from tests.support.monitor import CommandLog, ScriptCall, keys_of
from tests.support.redis_cluster import RedisClusterFixture

QUEUE = "cl"
KEYS = QueueKeys(QUEUE)
QUEUE_SLOT = key_slot(KEYS.pending.encode())
ALL_SCRIPTS = [*SCRIPT_NAMES, "fetch_claim", "fetch_release", "bookkeeping"]
# commands of a client's own housekeeping, not the batcher's data: not replayed
NOT_REPLAYED = {b"client", b"hello", b"select", b"info", b"script", b"multi", b"exec",
                b"ping", b"command", b"echo", b"discard"}
# keys a script touches without declaring them, after the queue's base; ``x*``: built in Lua
# from the declared key x (one list per source, one ZSET per batch key, one active set per
# batch key and priority). ``payloads`` is a key name passed in ARGV (enqueue.lua: ACL reasons).
# All carry the queue's hash tag, so the cluster runs them; a client that routes by KEYS, or
# a future Redis that enforces declared keys, would not.
UNDECLARED = {
    "enqueue": {"active:0*", "k:*", "payloads", "src:*"},
    "flush": {"active:0*", "active:1*", "active:2*", "k:*", "src:*"},
    "promote": {"src:*"},
    "expire": {"src:*"},
    "requeue": {"src:*"},
}


def _scenario(client: redis_py.Redis) -> None:
    """Each script at least once, on paths that write (not only early refusals)."""
    s = make_scripts(client, queue=QUEUE, size_threshold=4, min_batch_size=1,
                     max_batch_size=4, max_attempts=2)

    def entries(prefix: str, n: int, source: str, key: str | None = None) -> list[Any]:
        return [build_envelope(f"{prefix}{i}", source, 0, {"n": i}, index=i,
                               max_entry_bytes=10_000, batch_key=key) for i in range(n)]

    s.enqueue(entries("a", 4, "feed-a") + entries("b", 4, "feed-b"), now_ms=T0)
    s.enqueue(entries("k", 4, "feed-k", key="summarize"), now_ms=T0)
    assert s.flush("b1", manual=True, now_ms=T0 + 10).batch is not None
    assert s.flush("b2", manual=True, now_ms=T0 + 10).batch is not None
    assert s.flush("b3", manual=True, now_ms=T0 + 10).batch is not None
    # b1: acked with results, one entry failed (to delayed); then ack without results
    record = s.claim("b1", 1, now_ms=T0 + 20)
    assert isinstance(record, BatchRecord)
    ids = list(record.envelopes)
    ack = s.ack("b1", 1, processing_ms=5, started_ms=T0 + 20, now_ms=T0 + 30,
                results={i: b'"ok"' for i in ids[1:]}, failed={ids[0]: ("boom", 1)})
    assert ack.ok and ack.delayed == 1
    assert not isinstance(s.claim("b2", 1, now_ms=T0 + 20), str)
    assert s.ack("b2", 1, processing_ms=5, started_ms=T0 + 20, results={}, now_ms=T0 + 30).ok
    # b3: fails, its back-off runs out, the reaper's step, then the queue is paused
    assert not isinstance(s.claim("b3", 1, now_ms=T0 + 20), str)
    s.fail("b3", 1, "RuntimeError: boom", backoff_ms=100, now_ms=T0 + 30)
    assert s.redispatch("b3", 1, job_alive=False, now_ms=T0 + 10_000).outcome == "retry"
    assert not isinstance(s.claim("b3", 2, now_ms=T0 + 10_010), str)
    s.pause("b3", 2, "quota", "over quota", probe_ms=1000, now_ms=T0 + 10_020)
    # the delayed entry comes back; a new one expires; dead entries are requeued and purged
    assert s.promote(now_ms=T0 + 10_000) == 1
    s.enqueue(entries("old", 2, "feed-old"), now_ms=T0 + 20_000)
    assert s.expire(now_ms=T0 + 20_000 + 3_601_000) >= 2
    assert s.requeue(["old0"]) == (1, 0, 0)
    assert s.requeue(["old1"], purge=True) == (0, 1, 0)

    budget = Budget(client, "llm")
    budget.set_limits(BudgetLimits(rpm=60, input_tpm=1000, output_tpm=1000), now_ms=T0)
    assert budget.reserve(1, 10, 10, now_ms=T0) == 0.0
    budget.settle((0, -5, 0), now_ms=T0)

    schedule = FetchSchedule(client, QUEUE)
    schedule.register([FeedConfig(url=f"http://feeds.test/{i}.xml", source=f"f{i}")
                       for i in range(3)])
    claimed = schedule.claim(3).feeds
    assert len(claimed) == 3
    schedule.record(claimed[0], FetchReport(source="f0", url=claimed[0].feed.url,
                                            status="ok", http_status=200), now_ms=T0)
    assert schedule.defer([(c.feed.url, 1000) for c in claimed[1:]]) == 2

    # RQ's bookkeeping as batcher.oom sends it past an OOM refusal (here on a healthy Redis)
    replay(client, [(("HSET", "rq:job:b1-1", "status", "finished"), {}),
                    (("LREM", "rq:queue:batcher.cl", "0", "b1-1"), {}),
                    (("SADD", "rq:workers", "w1"), {})])


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterFixture]:
    with RedisClusterFixture() as formed:
        yield formed


def _touched(client: redis_py.Redis, call: ScriptCall) -> set[bytes]:
    return {k for inner in call.inner for k in keys_of(client, inner)}


def _undeclared_kinds(client: redis_py.Redis, call: ScriptCall) -> set[str]:
    """The undeclared keys of one call, after the queue's base; ``prefix*`` when the script
    built the key from a declared prefix."""
    base = KEYS.base.encode() + b":"
    kinds = set()
    for key in _touched(client, call) - set(call.declared):
        assert key.startswith(base), key
        prefixes = [d for d in call.declared if key.startswith(d)]
        name = max(prefixes, key=len) + b"*" if prefixes else key
        kinds.add(name[len(base):].decode())
    return kinds


@pytest.mark.real
@pytest.mark.timeout(240)
def test_every_script_touches_one_slot_and_runs_on_a_cluster(
    real_redis: redis_py.Redis, redis_url: str, cluster: RedisClusterFixture,
) -> None:
    with CommandLog(redis_url) as log:
        _scenario(real_redis)
    calls = log.script_calls(ALL_SCRIPTS)
    assert {c.name for c in calls} == set(ALL_SCRIPTS), "a script the scenario never ran"

    undeclared: dict[str, set[str]] = defaultdict(set)
    for call in calls:
        touched = _touched(real_redis, call) | set(call.declared)
        slots = {key_slot(k) for k in touched}
        if call.name == "bookkeeping":
            assert not call.declared and len(slots) > 1
            continue
        assert len(slots) == 1, f"{call.name} touches {len(slots)} slots: {sorted(touched)}"
        if call.name != "budget":
            assert slots == {QUEUE_SLOT}, call.name
        if kinds := _undeclared_kinds(real_redis, call):
            undeclared[call.name] |= kinds
    print("scripts that touch keys they do not declare:",
          {name: sorted(kinds) for name, kinds in sorted(undeclared.items())})
    assert dict(undeclared) == UNDECLARED, dict(undeclared)

    refused = _replay_on_cluster(cluster, log.client_commands())
    print("refused on the cluster:", refused)
    # its three RQ keys live on two masters: wherever it lands, one at least is not local
    assert set(refused) == {"bookkeeping"}
    assert "slot" in refused["bookkeeping"] or "non local" in refused["bookkeeping"]
    # RQ's keys aside: the random node bookkeeping.lua lands on may own one of them
    standalone = {bytes(k) for k in real_redis.scan_iter(count=1000)
                  if not k.startswith(b"rq:")}
    on_cluster = {bytes(k) for m in cluster.masters()
                  for k in m.client().scan_iter(count=1000) if not k.startswith(b"rq:")}
    assert on_cluster == standalone


def _replay_on_cluster(cluster: RedisClusterFixture,
                       commands: list[list[bytes]]) -> dict[str, str]:
    """Send the recorded client commands through RedisCluster; the refusals, by script."""
    client = cluster.client()
    names: dict[bytes, str] = {}
    for name in ALL_SCRIPTS:
        sha = client.script_load(lua_source(name))
        names[sha.encode() if isinstance(sha, str) else bytes(sha)] = name
    refused: dict[str, str] = {}
    try:
        for args in commands:
            if args[0].lower() in NOT_REPLAYED:
                continue
            what = names.get(args[1], "?") if args[0].lower() == b"evalsha" else \
                args[0].decode()
            try:
                # the command's name as a str: the cluster client looks its routing up by it
                reply = client.execute_command(args[0].decode().upper(), *args[1:])
            except redis_py.ResponseError as exc:
                refused[what] = str(exc)
                continue
            # bookkeeping.lua runs each command with pcall: a refusal is one of its replies
            errors = [str(r) for r in reply if isinstance(r, Exception)] \
                if isinstance(reply, list) else []
            if errors:
                refused[what] = "; ".join(errors)
    finally:
        client.close()
    return refused
