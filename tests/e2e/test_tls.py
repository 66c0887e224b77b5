"""TLS: producer (CLI and API), coordinator, worker and the observing commands over rediss://."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as redis_py

from batcher.config import load_config
from batcher.errors import ConfigError
from batcher.keys import QueueKeys
from batcher.producer import BatchStateManager
from tests.e2e.test_cli_processes import Batcher, _env, procs  # noqa: F401 - fixture
from tests.support.tls import Certificates, TlsRedisServer, make_certificates
from tests.support.waiting import wait_until

QUEUE = "proc"
KEYS = QueueKeys(QUEUE)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def tls_server(certs: Certificates) -> Iterator[TlsRedisServer]:
    server = TlsRedisServer(certs).start()
    try:
        yield server
    finally:
        server.close()


def _tls_env(server: TlsRedisServer, **extra: str) -> dict[str, str]:
    return _env(server.url, BATCH_REDIS_TLS_CA_FILE=str(server.certs.ca),
                BATCH_REDIS_TLS_CERT_FILE=str(server.certs.client_cert),
                BATCH_REDIS_TLS_KEY_FILE=str(server.certs.client_key), **extra)


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "batcher.cli", *args], env=env,
                          capture_output=True, text=True, timeout=60)


def test_the_pipeline_runs_end_to_end_over_tls(
    tls_server: TlsRedisServer, procs: Batcher  # noqa: F811
) -> None:
    env = _tls_env(tls_server, BATCH_SIZE_THRESHOLD="5", BATCH_MIN_BATCH_SIZE="1")
    enqueued = _cli(env, "enqueue", "--id", "cli-1", '{"via": "cli"}')
    assert enqueued.returncode == 0, enqueued.stderr
    assert "accepted=1" in enqueued.stdout
    config = load_config(queue=QUEUE, redis_url=tls_server.url,
                         redis_tls_ca_file=env["BATCH_REDIS_TLS_CA_FILE"],
                         redis_tls_cert_file=env["BATCH_REDIS_TLS_CERT_FILE"],
                         redis_tls_key_file=env["BATCH_REDIS_TLS_KEY_FILE"])
    manager = BatchStateManager(config=config)  # the API builds its own TLS client
    accepted = manager.queue_many([{"id": f"api-{i}", "payload": {"i": i}} for i in range(4)])
    assert accepted.accepted == 4
    coordinator = procs.start("coordinator", env=env)
    worker = procs.start("worker", env=env)  # the forking worker: each horse connects anew
    observer = tls_server.client()

    def all_acked() -> bool:
        assert coordinator.poll() is None, procs.stderr(coordinator)
        assert worker.poll() is None, procs.stderr(worker)
        return int(observer.hget(KEYS.stats, "acked") or 0) >= 5

    wait_until(all_acked, "5 entries acked over TLS")
    assert manager.get_result("api-3") == {"i": 3}
    stats = _cli(env, "stats", "--json")
    assert stats.returncode == 0, stats.stderr
    assert json.loads(stats.stdout)["counters"]["acked"] == 5
    check = _cli(env, "check")
    assert check.returncode == 0, check.stdout + check.stderr
    assert _cli(env, "result", "cli-1").stdout.strip() == '{"via":"cli"}'


def test_without_the_client_certificate_or_tls_the_server_refuses(
    tls_server: TlsRedisServer,
) -> None:
    # the run above proves the settings are used: without them there is no connection
    env = _tls_env(tls_server)
    del env["BATCH_REDIS_TLS_CERT_FILE"], env["BATCH_REDIS_TLS_KEY_FILE"]
    no_cert = _cli(env, "stats")
    assert no_cert.returncode == 4, no_cert.stderr
    # an empty variable counts as unset
    plain = _cli({**env, "BATCH_REDIS_URL": tls_server.url.replace("rediss", "redis"),
                  "BATCH_REDIS_TLS_CA_FILE": ""}, "stats")
    assert plain.returncode == 4, plain.stderr


def test_tls_files_need_a_rediss_url_and_exist(certs: Certificates, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="BATCH_REDIS_TLS_CA_FILE is set: BATCH_REDIS_URL "
                                          "must be a rediss:// URL"):
        load_config(redis_url="redis://127.0.0.1:1/0", redis_tls_ca_file=str(certs.ca))
    with pytest.raises(ConfigError, match="BATCH_REDIS_TLS_CA_FILE=.*must be a readable file"):
        load_config(redis_url="rediss://127.0.0.1:1/0",
                    redis_tls_ca_file=str(tmp_path / "missing.crt"))
    with pytest.raises(ConfigError, match="go together"):
        load_config(redis_url="rediss://127.0.0.1:1/0",
                    redis_tls_cert_file=str(certs.client_cert))


def test_a_plain_client_cannot_read_the_tls_port(tls_server: TlsRedisServer) -> None:
    with pytest.raises(redis_py.ConnectionError):
        redis_py.Redis(host="127.0.0.1", port=tls_server.port, socket_timeout=2).ping()
