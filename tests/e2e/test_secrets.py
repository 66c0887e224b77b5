"""Secrets stay secret: a run with a Redis password and an LLM API key, every output grepped.

The handler (tests/support/leaky.py) puts both secrets in its logs, in per-entry errors and in
an exception; the URL carries the password. Nothing the processes print, nothing the
commands show and nothing stored in Redis may contain either.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as redis_py

from batcher.keys import QueueKeys
from tests.e2e.test_cli_processes import Batcher, _env, procs  # noqa: F401 - fixture
from tests.support.redis_server import RedisServer, free_port
from tests.support.waiting import wait_until

QUEUE = "proc"
KEYS = QueueKeys(QUEUE)
PASSWORD = "pw-Qx7Zr9Lm2Tk"
API_KEY = "Kx93LmQpZr7TnW2vB"  # no sk- prefix: masked because it is LLM_API_KEY's value


@pytest.fixture
def locked_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    redis_py.Redis(port=server.port).config_set("requirepass", PASSWORD)
    try:
        yield server
    finally:
        server.close()


def _dump(client: redis_py.Redis) -> str:
    """Every key and value in the server, as text."""
    readers = {"string": lambda k: client.get(k), "hash": lambda k: client.hgetall(k),
               "list": lambda k: client.lrange(k, 0, -1), "set": lambda k: client.smembers(k),
               "zset": lambda k: client.zrange(k, 0, -1, withscores=True),
               "stream": lambda k: client.xrange(k)}
    out = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key).decode()
        out.append(f"{key!r} {kind} {readers.get(kind, lambda k: b'')(key)!r}")
    return "\n".join(out)


def test_no_output_of_a_run_shows_the_redis_password_or_the_api_key(
    locked_server: RedisServer, procs: Batcher  # noqa: F811
) -> None:
    url = f"redis://default:{PASSWORD}@127.0.0.1:{locked_server.port}/0"
    env = _env(url, LLM_API_KEY=API_KEY, BATCH_HANDLER="tests.support.leaky:handle",
               BATCH_MAX_ATTEMPTS="1", BATCH_SIZE_THRESHOLD="5", BATCH_MIN_BATCH_SIZE="1",
               BATCH_TIME_THRESHOLD_SEC="1", BATCH_HIGH_TIME_THRESHOLD_SEC="1",
               BATCH_URGENT_TIME_THRESHOLD_SEC="1")
    outputs: dict[str, str] = {}

    def cli(*args: str, name: str | None = None, **extra: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([sys.executable, "-m", "batcher.cli", *args], text=True,
                              env={**env, **extra}, capture_output=True, timeout=120)
        outputs[name or " ".join(args)] = done.stdout + done.stderr
        return done

    # batches of 5 in the order sent (one source: FIFO): the three partial failures share
    # the first batch with two successes, and the exception's batch (ok-2..5, boom-1) is
    # another, so both kinds of error reach the dead set
    lines = [{"id": f"fail-{i}", "payload": {"kind": "fail"}} for i in range(3)]
    lines += [{"id": f"ok-{i}", "payload": {"kind": "ok"}} for i in range(6)]
    entries = Path(locked_server.dir / "entries.jsonl")
    entries.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    assert cli("enqueue", "--file", str(entries)).returncode == 0
    assert cli("enqueue", "--id", "boom-1", '{"kind": "boom"}').returncode == 0
    coordinator = procs.start("coordinator", env=env)
    worker = procs.start("worker", env=env)
    client = redis_py.Redis.from_url(url)

    def settled() -> bool:
        stats = client.hmget(KEYS.stats, "accepted", "acked")
        dead = client.zcard(KEYS.dead)
        return int(stats[0] or 0) == 10 and int(stats[1] or 0) + dead == 10 and dead >= 4

    wait_until(settled, "10 entries acked or dead")
    assert cli("stats").returncode == 0
    assert cli("stats", "--json").returncode == 0
    assert cli("check").returncode == 0, outputs["check"]
    assert cli("dead", "list").returncode == 0
    assert cli("dead", "list", "--json").returncode == 0
    assert cli("top", "--once").returncode == 0
    port = free_port()
    exporter = procs.start("exporter", "--port", str(port), "--addr", "127.0.0.1", env=env)
    metrics: list[str] = []

    def scraped() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                metrics.append(r.read().decode())
                return True
        except OSError:
            return False

    wait_until(scraped, "the exporter answering")
    outputs["exporter /metrics"] = metrics[0]
    # failures that name the server: a wrong password, and an unparsable URL with one
    bad_pw = url.replace(PASSWORD, PASSWORD + "x")
    assert cli("stats", name="wrong password", BATCH_REDIS_URL=bad_pw).returncode == 4
    bad_url = f"redis://default:{PASSWORD}@127.0.0.1:notaport/0"
    assert cli("stats", name="bad url", BATCH_REDIS_URL=bad_url).returncode == 2
    for proc in (coordinator, worker, exporter):
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        outputs[f"stderr of {proc.args}"] = procs.stderr(proc)
    outputs["redis"] = _dump(client)

    for name, text in outputs.items():
        assert PASSWORD not in text, f"the Redis password in {name}: {text[:2000]}"
        assert API_KEY not in text, f"the API key in {name}: {text[:2000]}"
    # the secrets were there to leak: each path shows the mask where they were
    worker_log = procs.stderr(worker)
    assert '"handler.calling_upstream"' in worker_log
    assert "Bearer ***" in worker_log and ":***@127.0.0.1" in worker_log
    dead = json.loads(outputs["dead list --json"].splitlines()[-1])
    assert any("Bearer ***" in d["error"] for d in dead), dead
    assert any("api_key=***" in d["error"] for d in dead), dead
    assert ":***@" in outputs["wrong password"] and ":***@" in outputs["bad url"]
