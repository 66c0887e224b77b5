"""Shared fixtures: one real redis-server per session, fakeredis per test, and both at once."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import fakeredis
import pytest
import redis as redis_py
from hypothesis import HealthCheck, settings

from tests.support.redis_server import RedisServer, RedisServerError, find_redis_server

# Anything that falls back to the environment's Redis URL must never reach a developer's (or
# CI's) server on the default port: point the default at a port nothing listens on. Tests
# that need Redis use the session server below, by URL.
os.environ.setdefault("BATCH_REDIS_URL", "redis://127.0.0.1:1/0")

# hypothesis's default per-example deadline (200 ms) and its too-slow health check are
# wall-clock bounds: a loaded machine fails them. Examples are judged by what they assert.
settings.register_profile("batcher", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("batcher")


def pytest_report_header(config: pytest.Config) -> str:
    # Shown once at the top of every run, so a failure report says which server ran.
    try:
        binary = find_redis_server()
    except RedisServerError as exc:
        return f"redis-server: NOT FOUND ({exc})"
    try:
        version = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        version = f"version unknown ({exc})"
    return f"redis-server: {binary}: {version}"


@pytest.fixture(scope="session")
def redis_server(request: pytest.FixtureRequest) -> Iterator[RedisServer]:
    """The session's own redis-server on a free port (never 6379); fails, never skips."""
    try:
        server = RedisServer().start()
    except RedisServerError as exc:
        pytest.fail(f"cannot start the test redis-server: {exc}", pytrace=False)
    _report(request.config, f"redis-server {server.version} started on port {server.port}")
    try:
        yield server
    finally:
        server.close()


def _report(config: pytest.Config, line: str) -> None:
    # Fixture output is captured; write past the capture so the line shows once per run.
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capman = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capman is None:
        return
    with capman.global_and_fixture_disabled():
        reporter.ensure_newline()
        reporter.write_line(line)


def _ensure_running(server: RedisServer) -> None:
    # A chaos test may have killed or stopped the shared server; bring it back for the next.
    if not server.running:
        server.start()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """URL of the session server, every database flushed."""
    _ensure_running(redis_server)
    client = redis_py.Redis.from_url(redis_server.url)
    try:
        client.flushall()
    finally:
        client.close()
    return redis_server.url


@pytest.fixture
def real_redis(redis_url: str) -> Iterator[redis_py.Redis]:
    """A bytes client (decode_responses=False, as RQ needs) on the flushed session server."""
    client = redis_py.Redis.from_url(redis_url, decode_responses=False)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def fake_redis() -> Iterator[fakeredis.FakeRedis]:
    """A fakeredis client with Lua (via lupa) on a private, empty server."""
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=False)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(
    params=[pytest.param("fake"), pytest.param("real", marks=pytest.mark.real)],
    ids=["fake", "real"],
)
def redis(request: pytest.FixtureRequest) -> redis_py.Redis:
    """The same test on fakeredis and on the real server (huey's contract-test idea)."""
    name = "fake_redis" if request.param == "fake" else "real_redis"
    client: redis_py.Redis = request.getfixturevalue(name)
    return client


@pytest.fixture
def clean_batch_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No BATCH_* variable of the developer's shell leaks into what a test's commands read."""
    for name in list(os.environ):
        if name.startswith("BATCH_"):
            monkeypatch.delenv(name)


@pytest.fixture
def json_logs(clean_batch_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """``clean_batch_env``, and the commands log JSON lines (what the tests parse)."""
    monkeypatch.setenv("BATCH_LOG_FORMAT", "json")

