"""The dashboard in a real browser: headless Chromium (Debian's ``chromium``, driven by
Playwright) against ``batcher dashboard`` on the test's redis-server, with a coordinator and
a worker running a real pipeline.

It checks what an operator relies on: the page loads without console errors, its figures
are the ones ``batcher stats --json`` prints, the charts grow, the write buttons are absent
until the token unlocks them, and the buttons change Redis. It takes the README's
screenshots (copied into docs/images/ when BATCHER_UPDATE_SCREENSHOTS=1).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis as redis_py
from playwright.sync_api import Browser, Page, expect, sync_playwright

from batcher import control
from batcher.config import load_config
from batcher.keys import QueueKeys
from batcher.producer import BatchStateManager
from tests.support.held import HOLD_KEY
from tests.support.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("BATCHER_CHROMIUM", "/usr/bin/chromium")
QUEUE = "feeds"
KEYS = QueueKeys(QUEUE)
TOKEN = "test-write-token-0123"
IMAGES = ROOT / "docs" / "images"
BAD = ["bad-1", "bad-2", "bad-3"]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def _env(redis_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BATCH_", "BATCHER_"))}
    env.update(
        PYTHONPATH=str(ROOT), BATCH_REDIS_URL=redis_url, BATCH_QUEUE=QUEUE,
        BATCH_HANDLER="tests.support.held:handle", BATCH_MAX_ATTEMPTS="1",
        BATCH_SIZE_THRESHOLD="5", BATCH_MIN_BATCH_SIZE="1", BATCH_TIME_THRESHOLD_SEC="1",
        BATCH_HIGH_TIME_THRESHOLD_SEC="1", BATCH_URGENT_TIME_THRESHOLD_SEC="1",
        BATCH_MAX_BUFFER_AGE_SEC="600", BATCH_LOG_FORMAT="json")
    return env


class Procs:
    def __init__(self, log: Path) -> None:
        self.log = log
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, *args: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
        with self.log.open("ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", "batcher", *args], env=env,
                                    cwd=ROOT, stdout=subprocess.DEVNULL, stderr=out)
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    p = Procs(tmp_path / "processes.log")
    yield p
    p.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium (.ci/run does), or set "
                    "BATCHER_CHROMIUM", pytrace=False)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                              args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield b
        b.close()


def _wait(predicate: Callable[[], Any], what: str, log: Path, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"{what} not reached; processes said:\n{log.read_text()[-3000:]}")


def _start_dashboard(procs: Procs, env: dict[str, str], *extra: str) -> str:
    port = free_port()
    procs.start("dashboard", "--port", str(port), "--refresh", "0.5", *extra, env=env)
    import httpx

    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(f"{url}/api/session", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    _wait(up, "dashboard listening", procs.log)
    return url


def _page(browser: Browser, errors: list[str]) -> Page:
    page = browser.new_page(viewport={"width": 1360, "height": 900})
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("dialog", lambda d: d.accept())  # the confirmations the write buttons ask
    return page


def _stats(env: dict[str, str]) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "batcher", "stats", "--json"], env=env,
                         cwd=ROOT, capture_output=True, check=True, timeout=60)
    return orjson.loads(out.stdout)  # type: ignore[no-any-return]


def _shot(page: Page, name: str, tmp_path: Path) -> None:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("BATCHER_UPDATE_SCREENSHOTS") == "1":
        IMAGES.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, IMAGES / name)


def _enqueue(redis_url: str, entries: list[dict[str, Any]]) -> None:
    manager = BatchStateManager(config=load_config(queue=QUEUE, redis_url=redis_url))
    assert manager.queue_many(entries).accepted == len(entries)


def test_dashboard_shows_the_pipeline_and_its_buttons_change_redis(
    redis_url: str, real_redis: redis_py.Redis, procs: Procs, browser: Browser,
    tmp_path: Path,
) -> None:
    env = _env(redis_url)
    procs.start("coordinator", env=env)
    procs.start("worker", env=env)
    url = _start_dashboard(procs, {**env, "BATCHER_DASHBOARD_TOKEN": TOKEN})
    _enqueue(redis_url, [{"id": f"item-{i}", "source": f"feed-{i % 3}", "priority": i % 3,
                          "payload": {"title": f"story {i}"}} for i in range(40)]
             + [{"id": i, "source": "feed-x", "priority": 0, "payload": {"bad": True}}
                for i in BAD])
    _wait(lambda: int(real_redis.hget(KEYS.stats, "acked") or 0) == 40
          and real_redis.zcard(KEYS.dead) == 3, "40 acked and 3 dead", procs.log)

    errors: list[str] = []
    page = _page(browser, errors)
    page.goto(f"{url}/queues/{QUEUE}")
    expect(page.locator('[data-figure="dead"]')).to_have_text("3")
    assert page.locator("button[data-action]").count() == 0  # locked: no write button

    page.goto(f"{url}/login")
    page.fill('input[name="token"]', TOKEN)
    page.click('button[type="submit"]')
    expect(page.locator(f'#queues tr[data-queue="{QUEUE}"]')).to_be_visible()

    page.goto(f"{url}/queues/{QUEUE}")
    page.click('button[data-action="pause"]')
    _wait(lambda: control.paused_until_ms(real_redis, load_config(queue=QUEUE))
          == control.PAUSED_FOREVER_MS, "the pause in Redis", procs.log)
    _enqueue(redis_url, [{"id": f"late-{i}", "source": "feed-late", "priority": p,
                          "payload": {"title": f"late {i}"}}
                         for i, p in enumerate([2, 2, 1, 1, 0, 0, 0])])
    expect(page.locator('[data-figure="paused"]')).to_have_text("paused")

    # paused, nothing in flight: the figures hold still, so they must equal the CLI's
    stats = _stats(env)
    b, c = stats["buffer"], stats["counters"]
    expected = {"pending": b["pending"], "pending-2": b["by_priority"]["2"],
                "pending-1": b["by_priority"]["1"], "pending-0": b["by_priority"]["0"],
                "delayed": b["delayed"], "dead": b["dead"],
                "in-flight-entries": b["in_flight_entries"], "accepted": c["accepted"],
                "acked": c["acked"], "batches-failed": stats["performance"]["batches_failed"]}
    assert (b["pending"], b["by_priority"], c["acked"], b["dead"]) == (
        7, {"0": 3, "1": 2, "2": 2}, 40, 3)
    for figure, value in expected.items():
        expect(page.locator(f'[data-figure="{figure}"]')).to_have_text(str(value))
    expect(page.locator('[data-figure="size-threshold"]')).to_have_attribute(
        "data-value", str(stats["sizing"]["size_threshold"]))
    for reason, n in c["flushes"].items():
        expect(page.locator(f'[data-flush="{reason}"]')).to_have_text(str(n))

    # the charts gain a point at every refresh
    chart = page.locator('[data-chart^="Throughput"]')
    before = int(chart.get_attribute("data-points") or 0)
    page.wait_for_function(
        f"document.querySelector('[data-chart^=\"Throughput\"]').dataset.points > {before + 2}")

    # requeue one dead entry: back to pending (the queue is paused, so it stays there)
    page.click('tr[data-dead="bad-2"] button[data-action="requeue"]')
    _wait(lambda: real_redis.zscore(KEYS.pending, "bad-2") is not None, "bad-2 pending",
          procs.log)
    assert real_redis.zscore(KEYS.dead, "bad-2") is None
    expect(page.locator('[data-figure="dead"]')).to_have_text("2")
    expect(page.locator('[data-figure="pending"]')).to_have_text("8")

    # hold the next batch in the handler, flush now, and open its batch page
    real_redis.set(HOLD_KEY, "1")
    page.click('button[data-action="flush"]')
    held = page.locator("#inflight tr", has=page.locator("td", has_text="claimed")).first
    expect(held).to_be_visible()
    link = held.locator("a")
    expect(page.locator("#events tbody tr").first).to_be_visible()
    expect(page.locator("#error")).to_be_hidden()
    _shot(page, "dashboard-queue.png", tmp_path)
    link.click()
    expect(page.locator('[data-figure="status"]')).to_have_text("claimed")
    expect(page.locator("tr[data-entry]").first).to_be_visible()
    shown = page.locator("tr[data-entry]").count()
    assert shown == int(page.locator('[data-figure="entries"]').inner_text()) >= 1
    _shot(page, "dashboard-batch.png", tmp_path)
    real_redis.delete(HOLD_KEY)
    expect(page.locator("#batch-gone")).to_be_visible()  # acked: the record is gone

    page.goto(f"{url}/queues/{QUEUE}")
    page.click('button[data-action="resume"]')
    _wait(lambda: real_redis.hget(KEYS.state, "paused_until_ms") is None, "the resume",
          procs.log)
    _wait(lambda: real_redis.zcard(KEYS.pending) == 0 and real_redis.zcard(KEYS.inflight) == 0,
          "the queue drained", procs.log)
    page.goto(url)
    expect(page.locator(f'#queues tr[data-queue="{QUEUE}"] [data-figure="dead"]')).to_have_text(
        str(real_redis.zcard(KEYS.dead)))
    _shot(page, "dashboard-overview.png", tmp_path)
    assert errors == []
    expect(page.locator("#error")).to_be_hidden()  # every refresh rendered


def test_a_dashboard_without_a_token_has_no_write_buttons_and_refuses_writes(
    redis_url: str, real_redis: redis_py.Redis, procs: Procs, browser: Browser,
) -> None:
    env = _env(redis_url)
    _enqueue(redis_url, [{"id": "x1", "source": "s", "priority": 0, "payload": {}}])
    real_redis.zadd(KEYS.dead, {"ghost": 1})  # a dead row, whose buttons would show if any
    url = _start_dashboard(procs, env)
    errors: list[str] = []
    page = _page(browser, errors)
    page.goto(f"{url}/queues/{QUEUE}")
    expect(page.locator('[data-figure="pending"]')).to_have_text("1")
    expect(page.locator('tr[data-dead="ghost"]')).to_be_visible()
    assert page.locator("button[data-action]").count() == 0
    assert page.locator("#session").inner_text().strip() == "read-only"
    reply = page.request.post(f"{url}/api/queues/{QUEUE}/actions/pause",
                              headers={"x-batcher-action": "pause"})
    assert reply.status == 403
    assert real_redis.hget(KEYS.state, "paused_until_ms") is None
    assert errors == []
    refused = subprocess.run([sys.executable, "-m", "batcher", "dashboard", "--host", "0.0.0.0"],
                             env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "without a write token" in refused.stderr
