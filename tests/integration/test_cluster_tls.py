"""A Redis Cluster over TLS with an ACL user (issue 18): ``rediss+cluster://user:pw@seeds`` with
the BATCH_REDIS_TLS_* files reaches every node, the seeds and the masters the slot map names
(each node listens on TLS only, asks for a client certificate and has no password-less user,
so a queue served at all was served over TLS and logged in), and the password shows nowhere:
not in describe(), an error, the CLI's output or a daemon's log."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as redis_py

from batcher.check import check_queue
from batcher.config import BatchProcessingConfig, load_config
from batcher.connection import describe, ping_or_raise
from batcher.errors import BatcherUnavailableError
from batcher.keys import QueueKeys
from tests.integration.test_cluster_client import ENTRIES, _drain, _enqueue
from tests.support.children import stop_processes
from tests.support.redis_cluster import RedisClusterFixture
from tests.support.tls import Certificates, make_certificates
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(240)
USER, SECRET = "batcher", "Cluster-Secret-4711"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("cluster-tls"))


@pytest.fixture(scope="module")
def cluster(certs: Certificates) -> Iterator[RedisClusterFixture]:
    with RedisClusterFixture(tls=certs, acl=(USER, SECRET)) as formed:
        yield formed


def _tls_files(certs: Certificates) -> dict[str, str]:
    return {"redis_tls_ca_file": str(certs.ca), "redis_tls_cert_file": str(certs.client_cert),
            "redis_tls_key_file": str(certs.client_key)}


def _config(cluster: RedisClusterFixture, certs: Certificates, queue: str,
            rq_url: str) -> BatchProcessingConfig:
    return load_config(queue=queue, redis_url=cluster.url(), rq_redis_url=rq_url,
                       size_threshold=10, min_batch_size=1, max_batch_size=10,
                       log_format="json", **_tls_files(certs))


def _env(config: BatchProcessingConfig, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCH_")}
    env.update(BATCH_REDIS_URL=config.redis_url, BATCH_RQ_REDIS_URL=str(config.rq_redis_url),
               BATCH_QUEUE=config.queue, BATCH_LOG_FORMAT="json",
               BATCH_REDIS_TLS_CA_FILE=str(config.redis_tls_ca_file),
               BATCH_REDIS_TLS_CERT_FILE=str(config.redis_tls_cert_file),
               BATCH_REDIS_TLS_KEY_FILE=str(config.redis_tls_key_file),
               BATCH_SIZE_THRESHOLD="5", BATCH_MIN_BATCH_SIZE="1", BATCH_MAX_BATCH_SIZE="10",
               BATCH_TIME_THRESHOLD_SEC="1", BATCH_HIGH_TIME_THRESHOLD_SEC="1",
               BATCH_URGENT_TIME_THRESHOLD_SEC="1", BATCH_REAP_INTERVAL_SEC="0.2",
               PYTHONPATH=str(ROOT), **extra)
    return env


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "batcher.cli", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_queues_on_three_tls_masters_run_enqueue_flush_claim_ack(
    cluster: RedisClusterFixture, certs: Certificates, redis_url: str,
) -> None:
    assert cluster.url().startswith(f"rediss+cluster://{USER}:{SECRET}@")
    for queue in cluster.queues_on_distinct_masters(3, prefix="tls"):
        config = _config(cluster, certs, queue, redis_url)
        client = config.redis_client()
        try:
            _enqueue(config, client)
            assert _drain(config, client) == ENTRIES
            owner = cluster.owner_of(config.keys.state)
            with owner.client() as direct:
                assert direct.hget(config.keys.counters, "acked") == str(ENTRIES).encode()
            report = check_queue(client, config)
            assert report.ok, report.problems
            shown = describe(client)
            assert f"{USER}:***@" in shown and SECRET not in shown
            assert f"on 127.0.0.1:{owner.port}" in shown
        finally:
            client.connection_pool.disconnect()


def test_without_the_client_certificate_or_with_a_wrong_password_the_error_hides_the_password(
    cluster: RedisClusterFixture, certs: Certificates, redis_url: str, tmp_path: Path,
) -> None:
    config = _config(cluster, certs, "refused", redis_url)
    no_cert = load_config(queue="refused", redis_url=cluster.url(), rq_redis_url=redis_url,
                          redis_tls_ca_file=str(certs.ca))
    wrong = "Wrong-Password-0815"
    bad_password = load_config(queue="refused", rq_redis_url=redis_url,
                               redis_url=cluster.url().replace(SECRET, wrong),
                               **_tls_files(certs))
    for refused, secret in ((no_cert, SECRET), (bad_password, wrong)):
        client = refused.redis_client()
        with pytest.raises(BatcherUnavailableError) as caught:
            ping_or_raise(client)
        text = str(caught.value)
        assert secret not in text and f"{USER}:***@" in text, text
        client.connection_pool.disconnect()
    # the same files and password do reach the cluster
    ping_or_raise(config.redis_client())
    # the CLI says why it cannot connect, without the password
    stats = _cli(_env(bad_password), "stats")
    assert stats.returncode != 0
    assert wrong not in stats.stdout + stats.stderr and "***" in stats.stderr, stats.stderr
    # a daemon waits for a cluster it cannot log in to, and its log names it the same way
    log = tmp_path / "coordinator.log"
    with log.open("wb") as out:
        waiting = subprocess.Popen([sys.executable, "-m", "batcher.cli", "coordinator"],
                                   env=_env(bad_password), cwd=ROOT, stdout=out, stderr=out)
    try:
        wait_until(lambda: log.read_text().count('"redis.waiting"') >= 2,
                   "the coordinator waiting for the cluster, twice", guard_seconds=60)
    finally:
        waiting.terminate()
        waiting.wait(timeout=30)
    text = log.read_text()
    assert wrong not in text and f"{USER}:***@" in text, text[-2000:]


def test_daemons_and_the_cli_over_tls_ack_everything_and_never_log_the_password(
    cluster: RedisClusterFixture, certs: Certificates, redis_url: str, tmp_path: Path,
) -> None:
    queue = cluster.queues_on_distinct_masters(1, prefix="tlsd")[0]
    env = _env(_config(cluster, certs, queue, redis_url))
    logs = [tmp_path / "coordinator.log", tmp_path / "worker.log"]
    procs = []
    for log, command in zip(logs, (["coordinator"], ["worker", "--simple"]), strict=True):
        with log.open("wb") as out:
            procs.append(subprocess.Popen([sys.executable, "-m", "batcher.cli", *command],
                                          env=env, cwd=ROOT, stdout=out, stderr=out))
    outputs = []
    try:
        for i in range(20):
            enqueued = _cli(env, "enqueue", "--id", f"t{i}", f'{{"n": {i}}}')
            assert enqueued.returncode == 0, enqueued.stderr
            outputs.append(enqueued.stdout + enqueued.stderr)
        owner = cluster.owner_of(QueueKeys(queue).state)
        with owner.client() as direct:
            def acked() -> bool:
                for proc, log in zip(procs, logs, strict=True):
                    assert proc.poll() is None, log.read_text()[-3000:]
                return int(direct.hget(QueueKeys(queue).counters, "acked") or 0) >= 20

            wait_until(acked, "20 entries acked by the daemons over TLS", guard_seconds=120)
        for command in (["stats"], ["check"], ["result", "t7"]):
            done = _cli(env, *command)
            assert done.returncode == 0, done.stdout + done.stderr
            outputs.append(done.stdout + done.stderr)
        assert outputs[-1].strip() == '{"n":7}'
    finally:
        stop_processes(procs)
    texts = [*outputs, *(log.read_text() for log in logs)]
    assert '"batch.flushed"' in texts[-2] and '"batch.acked"' in texts[-1]  # what was read
    assert not [text for text in texts if SECRET in text]


def test_a_node_refuses_a_client_without_tls_or_without_the_password(
    cluster: RedisClusterFixture,
) -> None:
    node = cluster.masters()[0]
    with pytest.raises(redis_py.ConnectionError):
        redis_py.Redis(host="127.0.0.1", port=node.port, socket_timeout=2,
                       username=USER, password=SECRET).ping()
    options = node.security.client_options()
    options.pop("password")
    options.pop("username")
    with pytest.raises(redis_py.AuthenticationError):
        redis_py.Redis(host="127.0.0.1", port=node.port, socket_timeout=2, **options).ping()
