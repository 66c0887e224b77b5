"""BATCH_REDIS_URL naming a Redis Cluster (``redis+cluster://``): what the settings accept and
refuse, and what a client built from it says about itself, without any server."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from redis.crc import key_slot

from batcher.config import load_config
from batcher.connection import describe, parse_cluster_url, redact, same_server
from batcher.errors import ConfigError
from batcher.oom import OomTolerantRedis

CLUSTER = "redis+cluster://10.0.0.1:7000,10.0.0.2:7001"
RQ = "redis://rq-host:6390/0"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("BATCH_"):
            monkeypatch.delenv(name)


def test_cluster_url_lists_seed_nodes_credentials_and_tls() -> None:
    address = parse_cluster_url("rediss+cluster://app:s%40cret@h1:7000,[::1]:7001/0")
    assert address.seeds == (("h1", 7000), ("::1", 7001))
    assert (address.username, address.password, address.tls) == ("app", "s@cret", True)
    assert not parse_cluster_url(CLUSTER).tls


def test_cluster_url_is_accepted_with_rqs_own_standalone_redis() -> None:
    cfg = load_config(redis_url=CLUSTER, rq_redis_url=RQ)
    assert cfg.rq_apart


def test_cluster_url_without_rq_redis_url_is_refused_naming_why() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(redis_url=CLUSTER)
    assert str(caught.value) == (
        f"BATCH_REDIS_URL='{CLUSTER}': names a Redis Cluster: set BATCH_RQ_REDIS_URL to a "
        "standalone Redis for RQ's keys (RQ is not cluster-safe)")


def test_rq_redis_url_naming_a_cluster_is_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(redis_url=CLUSTER, rq_redis_url="redis+cluster://rq:7000")
    assert "BATCH_RQ_REDIS_URL='redis+cluster://rq:7000': must be empty or a redis://" in (
        str(caught.value))
    assert "not a cluster" in str(caught.value)


@pytest.mark.parametrize(("url", "why"), [
    ("redis+cluster://h1:7000,h2", "seed 'h2' is not host:port"),
    ("redis+cluster://h1:0", "seed 'h1:0' is not host:port"),
    ("redis+cluster://h1:7000/2", "a Redis Cluster has only database 0"),
    ("redis+cluster://h1:7000?db=0", "a cluster URL takes no query or fragment"),
    ("redis+cluster://", "seed '' is not host:port"),
])
def test_malformed_cluster_url_says_what_is_wrong(url: str, why: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(redis_url=url, rq_redis_url=RQ)
    assert f"BATCH_REDIS_URL='{url}': must be a redis://" in str(caught.value)
    assert why in str(caught.value)


def test_tls_files_need_the_tls_cluster_scheme(tmp_path: object) -> None:
    ca = os.path.join(str(tmp_path), "ca.pem")
    with open(ca, "w") as f:
        f.write("not read until a connection is made")
    with pytest.raises(ConfigError, match="must be a rediss:// URL"):
        load_config(redis_url=CLUSTER, rq_redis_url=RQ, redis_tls_ca_file=ca)
    cfg = load_config(redis_url="rediss+cluster://h:7000", rq_redis_url=RQ,
                      redis_tls_ca_file=ca)
    pool = cfg.redis_client().connection_pool
    assert pool.connection_kwargs["ssl_ca_certs"] == ca
    assert "SSL" in pool.connection_class.__name__


def test_cluster_password_never_shows() -> None:
    url = "redis+cluster://app:hunter2@h1:7000,h2:7001"
    assert redact(url) == "redis+cluster://app:***@h1:7000,h2:7001"
    with pytest.raises(ConfigError) as caught:
        load_config(redis_url=url)  # refused: no BATCH_RQ_REDIS_URL
    assert "hunter2" not in str(caught.value)
    cfg = load_config(redis_url=url, rq_redis_url=RQ)
    shown = describe(cfg.redis_client())
    assert "hunter2" not in shown and "app:***@h1:7000,h2:7001" in shown
    assert f"slot {key_slot(cfg.keys.state.encode())}" in shown


def test_each_queue_gets_a_client_pinned_to_its_own_slot_sharing_the_topology() -> None:
    a = load_config(queue="a", redis_url=CLUSTER, rq_redis_url=RQ).redis_client()
    b = load_config(queue="b", redis_url=CLUSTER, rq_redis_url=RQ).redis_client(
        oom_tolerant=True)
    pa, pb = a.connection_pool, b.connection_pool
    assert (pa.slot, pb.slot) == (key_slot(b"batcher:{a}:state"), key_slot(b"batcher:{b}:state"))
    assert pa.topology is pb.topology  # one slot map per cluster and process
    assert isinstance(b, OomTolerantRedis)  # a daemon's client keeps its kind
    # a key of another slot (a budget's) gets a client of the same kind pinned there
    budget = same_server(b, "batcher:budget:{llm}")
    assert isinstance(budget, OomTolerantRedis)
    assert budget.connection_pool.slot == key_slot(b"batcher:budget:{llm}")
    assert same_server(b, "batcher:budget:{llm}") is budget


def test_a_standalone_client_serves_every_key_itself() -> None:
    client = load_config(redis_url="redis://h:1/0").redis_client()
    assert same_server(client, "batcher:budget:{llm}") is client


def test_a_standalone_url_does_not_import_the_cluster_client() -> None:
    # nothing of the cluster path runs (or is imported, at start-up) for one server
    code = ("import sys; from batcher.config import load_config; "
            "load_config(redis_url='redis://h:1/0').redis_client(); "
            "print('batcher.cluster' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={k: v for k, v in os.environ.items()
                                          if not k.startswith("BATCH_")})
    assert out.stdout.split() == ["False"]
