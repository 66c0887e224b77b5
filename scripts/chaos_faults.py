"""The chaos run's ``--faults`` schedule: Redis faults a daemon must wait out, one after another.

Each fault lasts a few seconds while producers, coordinators and workers run: ``busy``
(``DEBUG SLEEP``: the server answers nobody), ``oom`` (``CONFIG SET maxmemory`` under what it
uses: every deny-oom write and every MULTI refused), ``pause`` (``CLIENT PAUSE``), ``readonly``
(``REPLICAOF`` an unreachable master: writes refused with READONLY), ``masterdown`` (the same
with ``replica-serve-stale-data no``: MASTERDOWN for reads too) and ``restart`` (SIGKILL and
start again from the AOF: connection loss, then LOADING). No process is killed: a daemon that
exits on its own is counted in ``daemon_exits``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import redis

FAULTS = ("busy", "oom", "pause", "readonly", "masterdown", "restart")
FAULT_SECONDS = 3.0
REDIS_ARGS = ["--enable-debug-command", "yes"]


class FaultInjector(threading.Thread):
    """Injects every fault once, starting when ``progress()`` passes each fault's mark."""

    def __init__(self, server: Any, progress: Callable[[], float]):
        super().__init__(name="faults", daemon=True)
        self.server = server
        self.progress = progress
        self.done: list[str] = []
        self.errors: list[str] = []
        self.stop = threading.Event()

    def _admin(self) -> redis.Redis:
        return redis.Redis.from_url(self.server.url, socket_timeout=30)

    def run(self) -> None:
        marks = [0.1 + 0.7 * i / len(FAULTS) for i in range(len(FAULTS))]
        for fault, mark in zip(FAULTS, marks, strict=True):
            while self.progress() < mark and not self.stop.is_set():
                time.sleep(0.1)
            if self.stop.is_set():
                return
            try:
                getattr(self, f"_{fault}")()
                self.done.append(fault)
                print(f"chaos: fault {fault} injected and cleared", flush=True)
            except Exception as exc:  # noqa: BLE001 - reported; the run then fails
                self.errors.append(f"{fault}: {type(exc).__name__}: {exc}")

    def _busy(self) -> None:
        self._admin().execute_command("DEBUG", "SLEEP", str(FAULT_SECONDS))

    def _oom(self) -> None:
        admin = self._admin()
        used = int(admin.info("memory")["used_memory"])
        admin.config_set("maxmemory", max(1, used - 256 * 1024))
        time.sleep(FAULT_SECONDS)
        admin.config_set("maxmemory", 0)

    def _pause(self) -> None:
        self._admin().execute_command("CLIENT", "PAUSE", str(int(FAULT_SECONDS * 1000)), "ALL")
        time.sleep(FAULT_SECONDS)

    def _replica_of_nobody(self, stale: bool) -> None:
        admin = self._admin()
        admin.config_set("replica-serve-stale-data", "yes" if stale else "no")
        admin.execute_command("REPLICAOF", "127.0.0.1", "1")  # port 1: never answers
        time.sleep(FAULT_SECONDS)
        admin.execute_command("REPLICAOF", "NO", "ONE")
        admin.config_set("replica-serve-stale-data", "yes")

    def _readonly(self) -> None:
        self._replica_of_nobody(stale=True)

    def _masterdown(self) -> None:
        self._replica_of_nobody(stale=False)

    def _restart(self) -> None:
        self.server.kill()
        time.sleep(FAULT_SECONDS / 2)
        self.server.start()
