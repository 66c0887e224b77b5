"""docs/grafana/redis-batcher.json queries only metrics the exporter serves.

The exporter is scraped over HTTP after real acks on the real server, so a renamed metric, a
counter without its ``_total`` or a histogram series that does not exist fails here, not on a
user's empty panel.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest
import redis as redis_py
from prometheus_client.parser import text_string_to_metric_families

from batcher.exporter import serve_exporter
from batcher.scripts import Scripts
from tests.support.builders import make_config
from tests.support.known_acks import record_known_acks

pytestmark = pytest.mark.real

BOARD = Path(__file__).parents[2] / "docs" / "grafana" / "redis-batcher.json"
METRIC = re.compile(r"\bbatcher_[a-z0-9_]+")


def _served_names(client: redis_py.Redis) -> set[str]:
    scripts = Scripts(client, make_config())
    sec, usec = client.time()
    record_known_acks(scripts, int(sec) * 1000 + int(usec) // 1000)
    server, thread = serve_exporter(client, scripts.config, port=0, check_workers=True)
    try:
        text = httpx.get(f"http://127.0.0.1:{server.server_port}/metrics", timeout=10).text
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


def _queries(node: object) -> list[str]:
    if isinstance(node, dict):
        found = [v for k, v in node.items() if k in ("expr", "definition") and isinstance(v, str)]
        return found + [q for v in node.values() for q in _queries(v)]
    if isinstance(node, list):
        return [q for v in node for q in _queries(v)]
    return []


def test_every_metric_the_grafana_board_queries_is_served(real_redis: redis_py.Redis) -> None:
    board = json.loads(BOARD.read_text())
    queries = _queries(board)
    used = {m for q in queries for m in METRIC.findall(q)}
    assert len(queries) >= 30 and len(used) >= 25  # the board covers the exporter broadly
    served = _served_names(real_redis)
    assert sorted(used - served) == []


def test_the_grafana_board_has_unique_panel_ids_and_a_queue_variable() -> None:
    board = json.loads(BOARD.read_text())
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    assert {v["name"] for v in board["templating"]["list"]} == {"datasource", "queue"}
    assert all('queue=~"$queue"' in t["expr"] for p in board["panels"] for t in p["targets"])
