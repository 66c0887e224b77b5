"""A CA, server and client certificates made with ``openssl``, and a TLS-only redis-server."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import redis

from tests.support.redis_server import RedisServer, RedisServerError


@dataclass(frozen=True)
class Certificates:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    binary = shutil.which("openssl")
    if binary is None:
        raise RedisServerError("no openssl on PATH: apt-get install -y openssl (.ci/run does)")
    subprocess.run([binary, *args], cwd=cwd, check=True, capture_output=True)


def make_certificates(directory: Path) -> Certificates:
    """A throw-away CA and two certificates it signed: the server's (for 127.0.0.1 and
    localhost) and a client's."""
    directory.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=batcher test CA",
             cwd=directory)
    for name, extra in (("server", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
                        ("client", "extendedKeyUsage=clientAuth")):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
                 "-out", f"{name}.csr", "-subj", f"/CN=batcher-{name}", cwd=directory)
        (directory / f"{name}.ext").write_text(extra + "\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "2", "-out", f"{name}.crt",
                 "-extfile", f"{name}.ext", cwd=directory)
    return Certificates(directory / "ca.crt", directory / "server.crt",
                        directory / "server.key", directory / "client.crt",
                        directory / "client.key")


class TlsRedisServer(RedisServer):
    """redis-server listening on TLS only (``--port 0``), client certificates required."""

    def __init__(self, certs: Certificates, extra_args: list[str] | None = None) -> None:
        super().__init__(extra_args)
        self.certs = certs

    @property
    def url(self) -> str:
        return f"rediss://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        return [*super().command(), "--port", "0", "--tls-port", str(self.port),
                "--tls-cert-file", str(self.certs.server_cert),
                "--tls-key-file", str(self.certs.server_key),
                "--tls-ca-cert-file", str(self.certs.ca), "--tls-auth-clients", "yes"]

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(
            self.url, ssl_ca_certs=str(self.certs.ca), ssl_certfile=str(self.certs.client_cert),
            ssl_keyfile=str(self.certs.client_key), socket_timeout=5)

    def _probe_client(self) -> redis.Redis:
        return self.client()
