"""The dashboard's JSON API and its write gate, served by uvicorn in a thread, on the real
redis-server. The browser test (tests/e2e/test_dashboard_browser.py) drives the pages."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import httpx
import pytest
import redis as redis_py
import uvicorn

from batcher import control
from batcher.dashboard import DashboardSettings, create_app, is_loopback
from batcher.records import BatchRecord
from batcher.stats import detailed_stats
from tests.support.builders import entry, make_config, make_scripts
from tests.support.redis_server import free_port

pytestmark = pytest.mark.real
TOKEN = "api-test-token-0123"
ACTION = {"x-batcher-action": "1"}


Factory = Callable[..., httpx.Client]


@pytest.fixture
def serve(real_redis: redis_py.Redis) -> Iterator[Factory]:
    """Start the app with a token (or None) on a free port; an httpx client on it."""
    running: list[tuple[uvicorn.Server, threading.Thread, httpx.Client]] = []

    def start(token: str | None = TOKEN) -> httpx.Client:
        port = free_port()
        app = create_app(DashboardSettings(real_redis, make_config(), token))
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                               log_config=None, access_log=False))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started and thread.is_alive():
            threading.Event().wait(0.02)
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
        running.append((server, thread, client))
        return client

    yield start
    for server, thread, client in running:
        client.close()
        server.should_exit = True
        thread.join(timeout=10)


def _with_entries(real_redis: redis_py.Redis) -> None:
    make_scripts(real_redis).enqueue([entry(f"e{i}", i % 3) for i in range(4)])


def test_queue_figures_are_detailed_stats(real_redis: redis_py.Redis, serve: Factory) -> None:
    _with_entries(real_redis)
    app = serve()
    got = app.get("/api/queues/t").json()
    want = detailed_stats(real_redis, make_config())
    assert got["stats"]["buffer"] == {**want["buffer"], "oldest_age_ms":
                                      got["stats"]["buffer"]["oldest_age_ms"]}
    assert got["stats"]["counters"] == want["counters"]
    assert (got["write"], got["token_configured"]) == (False, True)
    listed = app.get("/api/queues").json()["queues"]
    assert [q["queue"] for q in listed] == ["t"]


def test_writes_need_the_token_and_the_action_header(
    real_redis: redis_py.Redis, serve: Factory
) -> None:
    _with_entries(real_redis)
    app = serve()
    assert app.post("/api/queues/t/actions/pause", headers=ACTION).status_code == 403
    bearer = {"authorization": f"Bearer {TOKEN}"}
    assert app.post("/api/queues/t/actions/pause", headers=bearer).status_code == 403
    wrong = {"authorization": "Bearer nope", **ACTION}
    assert app.post("/api/queues/t/actions/pause", headers=wrong).status_code == 403
    assert control.paused_until_ms(real_redis, make_config()) == 0
    ok = app.post("/api/queues/t/actions/pause", headers={**bearer, **ACTION})
    assert ok.status_code == 200
    assert control.paused_until_ms(real_redis, make_config()) == control.PAUSED_FOREVER_MS


def test_login_sets_a_cookie_that_is_not_the_token(
    real_redis: redis_py.Redis, serve: Factory
) -> None:
    app = serve()
    assert app.post("/login", data={"token": "wrong"}).status_code == 403
    assert app.get("/api/session").json()["write"] is False
    reply = app.post("/login", data={"token": TOKEN}, follow_redirects=False)
    assert reply.status_code == 303
    cookie = reply.cookies.get("batcher_write")
    assert cookie and TOKEN not in cookie
    assert app.get("/api/session").json()["write"] is True
    flushed = app.post("/api/queues/t/actions/flush", headers=ACTION)
    assert flushed.status_code == 200 and flushed.json()["still_pending"] == 0


def test_without_a_token_nothing_unlocks(real_redis: redis_py.Redis, serve: Factory) -> None:
    app = serve(None)
    assert app.post("/login", data={"token": ""}).status_code == 403
    assert app.get("/api/session").json() == {"write": False, "token_configured": False}
    assert app.post("/api/queues/t/actions/resume", headers=ACTION).status_code == 403


def test_requeue_by_id_moves_one_dead_entry(real_redis: redis_py.Redis, serve: Factory) -> None:
    scripts = make_scripts(real_redis, max_attempts=1)
    scripts.enqueue([entry("d1"), entry("d2")])
    flushed = scripts.flush("b1", manual=True).batch
    assert flushed is not None and isinstance(scripts.claim("b1", 1), BatchRecord)
    assert scripts.fail("b1", 1, "boom", backoff_ms=0) == "dead"
    app = serve()
    dead = app.get("/api/queues/t").json()["dead"]
    assert {d["id"]: d["error"] for d in dead} == {"d1": "boom", "d2": "boom"}
    reply = app.post("/api/queues/t/actions/requeue", json={"ids": ["d1"]},
                     headers={"authorization": f"Bearer {TOKEN}", **ACTION})
    assert reply.json() == {"moved": 1, "purged": 0, "missing": 0}
    assert real_redis.zrange("batcher:{t}:pending", 0, -1) == [b"d1"]
    assert [d["id"] for d in app.get("/api/queues/t").json()["dead"]] == ["d2"]
    bad = app.post("/api/queues/t/actions/purge", json={"ids": "d2"},
                   headers={"authorization": f"Bearer {TOKEN}", **ACTION})
    assert bad.status_code == 400


def test_batch_detail_lists_entries_best_first_and_says_when_gone(
    real_redis: redis_py.Redis, serve: Factory,
) -> None:
    scripts = make_scripts(real_redis)
    scripts.enqueue([entry("low", 0), entry("urgent", 2)])
    assert scripts.flush("b9", manual=True).batch is not None
    app = serve()
    detail = app.get("/api/queues/t/batches/b9").json()
    assert [e["id"] for e in detail["entries"]] == ["urgent", "low"]
    assert detail["meta"]["status"] == "dispatched"
    # the dispatch lease (30 s by default) from the flush
    assert detail["lease_ms"] == int(detail["meta"]["created_ms"]) + 30_000
    assert app.get("/api/queues/t/batches/nope").json() == {"id": "nope", "gone": True}
    assert app.get("/api/queues/bad%20name").status_code == 404


def test_only_loopback_addresses_count_as_loopback() -> None:
    assert [is_loopback(h) for h in ("127.0.0.1", "::1", "localhost", "0.0.0.0", "10.0.0.1",
                                     "example.org")] == [True, True, True, False, False, False]
