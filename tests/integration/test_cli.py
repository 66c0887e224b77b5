"""The ``batcher`` command line against the session's real redis-server (click's CliRunner)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import redis as redis_py
from click.testing import CliRunner, Result

from batcher.cli import cli
from batcher.config import load_config
from batcher.keys import QueueKeys
from batcher.records import BatchRecord
from batcher.scripts import Scripts
from tests.support.invariants import assert_consistent
from tests.support.redis_server import free_port

QUEUE = "cli"
KEYS = QueueKeys(QUEUE)


pytestmark = pytest.mark.usefixtures("json_logs")


@pytest.fixture
def client(real_redis: redis_py.Redis) -> Iterator[redis_py.Redis]:
    yield real_redis


def run(url: str, *args: str, env: dict[str, str] | None = None,
        stdin: str | None = None) -> Result:
    return CliRunner().invoke(cli, [*args, "--queue", QUEUE, "--redis-url", url], env=env,
                              input=stdin, catch_exceptions=False)


def queue_keys(client: redis_py.Redis) -> list[bytes]:
    return list(client.scan_iter(match=KEYS.scan_pattern()))


def assert_check_clean(url: str) -> None:
    result = run(url, "check")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "ok: queue 'cli' is consistent" in result.stdout


def scripts_for(url: str, **overrides: object) -> Scripts:
    config = load_config(queue=QUEUE, redis_url=url, **overrides)
    return Scripts(redis_py.Redis.from_url(url), config)


# -- enqueue ---------------------------------------------------------------------------------

def test_enqueue_prints_counts_and_a_duplicate_is_success(redis_url: str,
                                                          client: redis_py.Redis) -> None:
    first = run(redis_url, "enqueue", '{"title": "a"}', "--id", "e1", "--priority", "urgent")
    again = run(redis_url, "enqueue", '{"title": "a"}', "--id", "e1")
    assert (first.exit_code, first.stdout) == (0, "accepted=1 duplicates=0 rejected=0\n")
    assert (again.exit_code, again.stdout) == (0, "accepted=0 duplicates=1 rejected=0\n")
    envelope = orjson.loads(client.hget(KEYS.payloads, "e1"))
    assert envelope == {"g": "cli", "id": "e1", "source": "cli", "priority": 2,
                        "payload": {"title": "a"}}
    assert_check_clean(redis_url)


def test_enqueue_without_id_makes_a_uuid_and_json_lists_it(redis_url: str) -> None:
    result = run(redis_url, "enqueue", '{"x": 1}', "--json", "--source", "rss")
    assert result.exit_code == 0
    body = orjson.loads(result.stdout)
    assert body["accepted"] == 1 and len(body["accepted_ids"][0]) == 36
    assert (body["duplicate_ids"], body["rejected_ids"]) == ([], [])


def test_enqueue_file_sends_every_line(redis_url: str, client: redis_py.Redis,
                                       tmp_path: Path) -> None:
    path = tmp_path / "entries.jsonl"
    path.write_text('{"id": "a", "source": "s", "priority": 1, "payload": {"n": 1}}\n\n'
                    '{"id": "b", "payload": {"n": 2}}\n')
    result = run(redis_url, "enqueue", "--file", str(path))
    assert (result.exit_code, result.stdout) == (0, "accepted=2 duplicates=0 rejected=0\n")
    assert client.zcard(KEYS.pending) == 2
    from_stdin = run(redis_url, "enqueue", "--file", "-",
                     stdin='{"id": "b", "payload": {}}\n{"id": "c", "payload": {}}\n')
    assert from_stdin.stdout == "accepted=1 duplicates=1 rejected=0\n"
    assert_check_clean(redis_url)


@pytest.mark.parametrize(
    ("args", "env", "words"),
    [
        (["enqueue", "{}", "--priority", "7"], None, "--priority '7'"),
        (["enqueue", "{not json"], None, "not valid JSON"),
        (["enqueue", "[1, 2]"], None, "must be a JSON object"),
        (["enqueue", '{"t": "' + "x" * 2000 + '"}'], {"BATCH_MAX_ENTRY_BYTES": "1024"},
         "exceeds max_entry_bytes=1024"),
        (["enqueue", "{}", "--id", ""], None, "must be 1-200 printable characters"),
    ],
    ids=["priority", "non-json", "non-object", "oversize", "empty-id"],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(
    redis_url: str, client: redis_py.Redis, args: list[str], env: dict[str, str] | None,
    words: str,
) -> None:
    result = run(redis_url, *args, env=env)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and words in result.stderr, result.stderr
    assert queue_keys(client) == []
    assert_check_clean(redis_url)


def test_bad_file_line_exits_2_naming_the_line_and_writes_nothing(
    redis_url: str, client: redis_py.Redis, tmp_path: Path
) -> None:
    path = tmp_path / "entries.jsonl"
    path.write_text('{"id": "ok", "payload": {}}\n{"id": "bad", "priority": 5, "payload": {}}\n')
    result = run(redis_url, "enqueue", "--file", str(path))
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "line 2" in result.stderr
    assert "priority must be 0" in result.stderr
    broken = run(redis_url, "enqueue", "-f", "-", stdin='{"id": "a", "payload": {}}\n{oops\n')
    assert broken.exit_code == 2 and "- line 2: not valid JSON" in broken.stderr
    assert queue_keys(client) == []
    assert_check_clean(redis_url)


def test_bad_setting_exits_2_naming_the_variable(redis_url: str) -> None:
    result = run(redis_url, "stats", env={"BATCH_MAX_BUFFER_SIZE": "0"})
    assert result.exit_code == 2
    assert result.stderr == "batcher: BATCH_MAX_BUFFER_SIZE='0': must be an integer >= 1\n"


def test_bad_queue_name_exits_2(redis_url: str) -> None:
    result = CliRunner().invoke(cli, ["stats", "--queue", "a:b", "--redis-url", redis_url])
    assert result.exit_code == 2 and "BATCH_QUEUE='a:b'" in result.stderr


def test_full_buffer_exits_3_with_counts(redis_url: str, client: redis_py.Redis) -> None:
    lines = "".join(f'{{"id": "f{i}", "payload": {{}}}}\n' for i in range(3))
    result = run(redis_url, "enqueue", "-f", "-", stdin=lines,
                 env={"BATCH_MAX_BUFFER_SIZE": "2"})
    assert result.exit_code == 3
    assert result.stdout == "accepted=2 duplicates=0 rejected=1\n"
    assert "batcher: buffer full: 1 of 3 entries rejected" in result.stderr
    assert client.zcard(KEYS.pending) == 2
    assert_check_clean(redis_url)


def test_unreachable_redis_exits_4() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    for args in (["enqueue", "{}"], ["stats"], ["check"]):
        result = run(url, *args)
        assert result.exit_code == 4, args
        assert result.stderr.startswith("batcher: Redis unreachable at redis://127.0.0.1:")
        assert result.stderr.count("\n") == 1


# -- check -----------------------------------------------------------------------------------

def test_check_reports_a_missing_payload_and_exits_1(redis_url: str,
                                                     client: redis_py.Redis) -> None:
    run(redis_url, "enqueue", '{"a": 1}', "--id", "gone")
    run(redis_url, "enqueue", '{"a": 2}', "--id", "kept")
    client.hdel(KEYS.payloads, "gone")
    result = run(redis_url, "check")
    assert result.exit_code == 1
    assert "PROBLEM: 1 pending/delayed ids have no payload: 'gone'" in result.stdout
    assert "pending bytes gauge" in result.stdout
    assert "accepted=2" in result.stdout
    assert result.stderr.startswith("batcher: check failed for queue 'cli'")


def test_check_reports_a_counter_drift_and_an_orphan_batch(redis_url: str,
                                                           client: redis_py.Redis) -> None:
    run(redis_url, "enqueue", '{"a": 1}', "--id", "a")
    client.hincrby(KEYS.stats, "accepted", 3)
    client.hset(KEYS.batch("orphan"), mapping={"status": "claimed", "n": 0})
    result = run(redis_url, "check")
    assert result.exit_code == 1
    assert "accepted (4) != pending (1)" in result.stdout
    assert "1 batch records are not in flight (no lease): 'orphan'" in result.stdout


def test_check_and_coordinator_refuse_an_evicting_server(redis_url: str,
                                                         client: redis_py.Redis) -> None:
    client.config_set("maxmemory-policy", "allkeys-lru")
    try:
        checked = run(redis_url, "check")
        started = run(redis_url, "coordinator")
    finally:
        client.config_set("maxmemory-policy", "noeviction")
    assert checked.exit_code == 1
    assert "maxmemory-policy is 'allkeys-lru'" in checked.stdout
    assert started.exit_code == 1
    assert "--allow-eviction" in started.stderr and started.stderr.count("\n") == 1


# -- stats, flush, keys, result --------------------------------------------------------------

def test_stats_json_and_table(redis_url: str) -> None:
    run(redis_url, "enqueue", '{"a": 1}', "--id", "s1", "-p", "1")
    as_json = run(redis_url, "stats", "--json")
    assert as_json.exit_code == 0
    stats = orjson.loads(as_json.stdout)
    assert stats["buffer"]["pending"] == 1
    assert stats["buffer"]["by_priority"] == {"0": 0, "1": 1, "2": 0}
    assert stats["counters"]["accepted"] == 1
    table = run(redis_url, "stats")
    assert table.exit_code == 0
    for section in ("buffer", "performance", "counters", "flush reasons", "sizing", "health"):
        assert section in table.stdout
    assert "1 (urgent 0, high 1, normal 0)" in table.stdout


def test_flush_dispatches_everything_pending(redis_url: str, client: redis_py.Redis) -> None:
    lines = "".join(f'{{"id": "m{i}", "priority": {i % 3}, "payload": {{}}}}\n'
                    for i in range(7))
    run(redis_url, "enqueue", "-f", "-", stdin=lines, env={"BATCH_SIZE_THRESHOLD": "5"})
    result = run(redis_url, "flush", env={"BATCH_SIZE_THRESHOLD": "5"})
    assert (result.exit_code, result.stdout) == (0, "flushed batches=2 entries=7\n")
    assert client.zcard(KEYS.pending) == 0
    assert client.zcard(KEYS.inflight) == 2
    jobs = sum(client.llen(f"rq:queue:{name}") for name in KEYS.rq_queues_by_urgency())
    assert jobs == 2
    assert client.hget(KEYS.stats, "flushes:manual") == b"2"
    assert_check_clean(redis_url)


def test_result_prints_the_stored_json_or_exits_1(redis_url: str) -> None:
    run(redis_url, "enqueue", '{"q": "why"}', "--id", "r1")
    run(redis_url, "flush")
    s = scripts_for(redis_url)
    batch_id = s.client.zrange(KEYS.inflight, 0, 0)[0].decode()
    assert isinstance(s.claim(batch_id, 1), BatchRecord)
    s.ack(batch_id, 1, processing_ms=5, started_ms=0, results={"r1": b'{"answer":42}'})
    found = run(redis_url, "result", "r1")
    assert (found.exit_code, found.stdout) == (0, '{"answer":42}\n')
    missing = run(redis_url, "result", "nope")
    assert missing.exit_code == 1 and "no result for 'nope'" in missing.stderr
    assert_check_clean(redis_url)


def test_keys_lists_type_size_and_the_redis_cli_command(redis_url: str) -> None:
    run(redis_url, "enqueue", '{"a": 1}', "--id", "k1")
    result = run(redis_url, "keys")
    assert result.exit_code == 0
    lines = [line for line in result.stdout.splitlines() if "batcher:{cli}:pending" in line]
    assert len(lines) == 1
    assert "zset" in lines[0] and " 1 " in lines[0]
    assert "redis-cli ZRANGE 'batcher:{cli}:pending' 0 9 WITHSCORES" in lines[0]
    assert "redis-cli HSCAN 'batcher:{cli}:payloads' 0 COUNT 10" in result.stdout


# -- dead ------------------------------------------------------------------------------------

def _kill_entries(url: str, ids: list[str]) -> None:
    """Enqueue, flush, claim and fail once with max_attempts=1: the entries die 'failed'."""
    lines = "".join(f'{{"id": "{i}", "payload": {{"i": "{i}"}}}}\n' for i in ids)
    assert run(url, "enqueue", "-f", "-", stdin=lines).exit_code == 0
    assert run(url, "flush").exit_code == 0
    s = scripts_for(url, max_attempts=1)
    for raw in s.client.zrange(KEYS.inflight, 0, -1):
        batch_id = raw.decode()
        assert isinstance(s.claim(batch_id, 1), BatchRecord)
        assert s.fail(batch_id, 1, "ValueError: boom", backoff_ms=0) == "dead"


def test_dead_list_requeue_purge_round_trip(redis_url: str, client: redis_py.Redis) -> None:
    _kill_entries(redis_url, ["d1", "d2", "d3"])
    listed = run(redis_url, "dead", "list")
    assert listed.exit_code == 0
    assert "dead entries of queue 'cli': 3" in listed.stdout
    assert "ValueError: boom" in listed.stdout and "failed" in listed.stdout
    records = orjson.loads(run(redis_url, "dead", "list", "--json").stdout)
    assert [(r["id"], r["reason"], r["attempts"]) for r in records] == [
        ("d1", "failed", 1), ("d2", "failed", 1), ("d3", "failed", 1)]
    assert records[0]["envelope"]["payload"] == {"i": "d1"}
    assert_check_clean(redis_url)

    one = run(redis_url, "dead", "requeue", "d1", "nope")
    assert one.stdout == "requeued=1 already_pending=0 missing=1\n"
    assert client.zrange(KEYS.pending, 0, -1) == [b"d1"]
    purged = run(redis_url, "dead", "purge", "d2")
    assert purged.stdout == "purged=1 missing=0\n"
    rest = run(redis_url, "dead", "requeue")
    assert rest.stdout == "requeued=1 already_pending=0 missing=0\n"
    assert sorted(client.zrange(KEYS.pending, 0, -1)) == [b"d1", b"d3"]
    assert client.zcard(KEYS.dead) == 0
    assert_check_clean(redis_url)
    assert_consistent(client, KEYS)


def test_dead_purge_without_ids_purges_all(redis_url: str, client: redis_py.Redis) -> None:
    _kill_entries(redis_url, [f"p{i}" for i in range(5)])
    result = run(redis_url, "dead", "purge")
    assert (result.exit_code, result.stdout) == (0, "purged=5 missing=0\n")
    assert client.hget(KEYS.stats, "purged") == b"5"
    assert run(redis_url, "dead", "list", "--json").stdout == "[]\n"
    assert_check_clean(redis_url)


# -- fetch -----------------------------------------------------------------------------------

def test_fetch_once_enqueues_the_sample_feeds(redis_url: str, client: redis_py.Redis) -> None:
    from batcher.demo.feed_server import SAMPLE_FEEDS_DIR, serve_feeds

    server, base = serve_feeds()
    try:
        result = run(redis_url, "fetch", "--feeds", str(SAMPLE_FEEDS_DIR / "feeds.toml"),
                     "--once", "--base-url", base, "--per-host-delay", "0")
    finally:
        server.stop()
    assert result.exit_code == 0, result.stderr
    assert "tech_daily: fetched=1" in result.stdout
    accepted = sum(int(n) for n in re.findall(r" accepted=(\d+)", result.stdout))
    assert client.zcard(KEYS.pending) == accepted == 60  # the sample feeds' 60 entries
    assert_check_clean(redis_url)


def test_weight_set_list_and_reset(redis_url: str, client: redis_py.Redis) -> None:
    assert run(redis_url, "weight", "set", "wire", "3").stdout == "weight wire=3\n"
    listed = run(redis_url, "weight", "list", "--json")
    assert (listed.exit_code, orjson.loads(listed.stdout)) == (0, {"wire": 3.0})
    bad = run(redis_url, "weight", "set", "wire", "0")
    assert bad.exit_code == 2 and "weight must be > 0" in bad.stderr
    assert run(redis_url, "weight", "reset", "wire").exit_code == 0
    assert client.hlen(KEYS.weights) == 0


def test_budget_set_and_show(redis_url: str) -> None:
    done = run(redis_url, "budget", "set", "openai-mini", "--rpm", "60", "--itpm", "90000")
    assert (done.exit_code, done.stdout) == (0, "budget openai-mini: rpm=60 itpm=90000 otpm=0\n")
    shown = run(redis_url, "budget", "show", "openai-mini", "--json")
    figures = orjson.loads(shown.stdout)
    assert figures["req"]["limit_per_minute"] == 60 and figures["in"]["left"] == 90_000
    assert figures["out"]["limit_per_minute"] == 0
    text = run(redis_url, "budget", "show", "openai-mini").stdout
    assert "requests: 60/min, left 60" in text and "output tokens: none" in text
    assert run(redis_url, "budget", "show").exit_code == 2  # no name, no BATCH_BUDGET
    assert run(redis_url, "budget", "set", "bad name").exit_code == 2


def test_enqueue_with_a_batch_key_stores_it_first_in_the_envelope(
        redis_url: str, client: redis_py.Redis) -> None:
    done = run(redis_url, "enqueue", '{"t": 1}', "--id", "k1", "--batch-key", "summarize")
    assert done.exit_code == 0
    raw = client.hget(KEYS.payloads, "k1")
    assert raw is not None and raw.startswith(b'{"g":"cli","k":"summarize",')
    assert run(redis_url, "enqueue", "{}", "--batch-key", "no spaces").exit_code == 2
