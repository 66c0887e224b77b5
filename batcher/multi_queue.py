"""Many queues in one coordinator process: one flush loop per queue, each in its own thread.

Why threads and not one loop taking turns: each queue's loop already waits on its own wakeup
list (BLPOP) until its next deadline, and on a Redis Cluster each queue lives in its own slot,
often on another master, where one BLPOP cannot watch them all. A loop per queue keeps every
queue's flush deadlines exact, and fair by construction: a hot queue's loop flushes its own
backlog (one pipelined burst per round trip) while a quiet queue's loop, blocked on Redis,
wakes the moment its own batch is due. The loops share only the stop event and the GIL, which
a loop gives up whenever it waits on Redis.

A loop that fails on anything but a Redis fault (which each loop waits out itself) stops the
whole process, so a broken queue is never silently left unserved.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

import structlog

from batcher.config import BatchProcessingConfig
from batcher.coordinator import MAX_BLOCK_SECONDS, Coordinator

log = structlog.stdlib.get_logger(__name__)

# how often a coordinator serving a pattern looks for new queues that match it
RESCAN_SECONDS = 10.0
# how often the main thread looks at the stop event (signals arrive in the main thread)
WAIT_SECONDS = 0.5


class CoordinatorGroup:
    """The coordinators of one process, one thread each, stopped together."""

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop
        self.threads: dict[str, threading.Thread] = {}
        self.failures: list[tuple[str, BaseException]] = []

    def add(self, config: BatchProcessingConfig) -> None:
        """Start serving ``config.queue`` (once: a queue already served is left alone)."""
        if config.queue in self.threads:
            return
        # each queue's clients come from its own settings: on a Redis Cluster, a client
        # for the queue's slot (BatchProcessingConfig.redis_client)
        client = config.redis_client(oom_tolerant=True)
        blocking = config.redis_client(blocking_seconds=MAX_BLOCK_SECONDS)
        coordinator = Coordinator(client, config, blocking_client=blocking)
        thread = threading.Thread(target=self._run, args=(coordinator,),
                                  name=f"coordinator-{config.queue}", daemon=True)
        self.threads[config.queue] = thread
        thread.start()

    def _run(self, coordinator: Coordinator) -> None:
        try:
            coordinator.run(self.stop)
        except BaseException as exc:  # noqa: BLE001 - reported, then the process stops
            log.exception("coordinator.crashed", queue=coordinator.config.queue)
            self.failures.append((coordinator.config.queue, exc))
            self.stop.set()

    def wait(self, rescan: Callable[[], Sequence[BatchProcessingConfig]] | None = None,
             rescan_seconds: float | None = None) -> None:
        """Until the stop event is set and every loop has finished its round; with
        ``rescan``, serve the new queues it returns every ``rescan_seconds`` (default
        ``RESCAN_SECONDS``)."""
        rescan_seconds = RESCAN_SECONDS if rescan_seconds is None else rescan_seconds
        next_scan = time.monotonic() + rescan_seconds
        while not self.stop.is_set():
            self.stop.wait(WAIT_SECONDS)
            if rescan is None or time.monotonic() < next_scan or self.stop.is_set():
                continue
            next_scan = time.monotonic() + rescan_seconds
            try:
                for config in rescan():
                    if config.queue not in self.threads:
                        log.info("coordinator.queue_found", queue=config.queue)
                        self.add(config)
            except Exception as exc:  # noqa: BLE001 - a failed scan is retried next time
                log.warning("coordinator.rescan_failed", error=str(exc))
        for thread in list(self.threads.values()):
            thread.join()
