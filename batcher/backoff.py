"""Waiting out a Redis that cannot serve us for now: the one retry helper of the library.

The coordinator, the worker, the producer and the fetcher meet the same transient faults: a
full Redis (OOM), a replica (READONLY), a restart replaying its data (LOADING), a long script
(BUSY), a replica whose master is gone (MASTERDOWN), a paused or lost connection
(:func:`fault_kind`). Every wait for Redis goes through here, in one of two shapes:

- a daemon never gives up: :class:`Backoff` logs the fault, records it where ``batcher
  stats`` shows it (the queue's state hash, field ``redis_fault``, when Redis takes the
  write), waits a capped exponential back-off with jitter and goes on
  (:meth:`Backoff.until_stopped` for a loop, :meth:`Backoff.until_done` for one call);
- a caller holding something a lease or a user waits on retries on a fixed schedule, then
  raises (:func:`retry_on_fault`).

Both wait through :func:`pause`, which a fault may end early: on a Redis Cluster, once
another master serves the slot of the node that failed (a replica promoted), the retry goes
at once instead of a back-off step later.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import redis
import structlog

log = structlog.stdlib.get_logger(__name__)
T = TypeVar("T")

FIRST_DELAY_SECONDS = 0.25
MAX_DELAY_SECONDS = 5.0
FAULT_FIELD = "redis_fault"


def fault_kind(exc: BaseException) -> str | None:
    """The kind of a Redis error a daemon waits out, or None for one it must not hide."""
    e = redis.exceptions
    if isinstance(exc, e.OutOfMemoryError):
        return "oom"
    if isinstance(exc, e.ReadOnlyError):
        return "readonly"
    if isinstance(exc, e.MasterDownError):
        return "masterdown"
    if isinstance(exc, e.BusyLoadingError):  # a ConnectionError: test it first
        return "loading"
    if isinstance(exc, e.ExecAbortError):  # a MULTI refused whole (OOM on a queued write)
        return "oom" if "OOM" in str(exc) or "memory" in str(exc) else "execabort"
    if isinstance(exc, e.TimeoutError):
        return "timeout"
    if isinstance(exc, e.ConnectionError):
        return "connection"
    if isinstance(exc, e.TryAgainError | e.ClusterDownError):
        return "cluster"
    if isinstance(exc, e.ResponseError):
        text = str(exc)
        if text.startswith(("BUSY", "NOREPLICAS", "UNBLOCKED")):
            return text.split(" ", 1)[0].lower()
        if "maxmemory" in text:  # a script's OOM, re-worded by the Lua error path
            return "oom"
    return None


def waitable(exc: BaseException) -> bool:
    return fault_kind(exc) is not None


def pause(exc: BaseException, seconds: float, stop: threading.Event | None = None) -> bool:
    """Wait ``seconds`` before retrying after ``exc`` (cut short by ``stop``); True when the
    wait ended early because the fault's cause is gone.

    A fault of a client pinned to a Redis Cluster slot carries its own wait
    (``batcher.cluster.SlotPool.until_new_owner``), which ends as soon as a master other than
    the failed node serves the slot: after a failover the retry reaches the promoted replica
    when it is promoted, not up to a whole back-off step later (seconds at the cap). While no
    other master serves the slot, it waits the whole delay, as for any other fault."""
    until_new_owner = getattr(exc, "until_new_owner", None)  # batcher.cluster.WAIT_ATTR
    if until_new_owner is not None:
        return bool(until_new_owner(seconds, stop))
    if stop is not None:
        stop.wait(seconds)
    else:
        time.sleep(seconds)
    return False


class Backoff:
    """Capped exponential back-off with jitter for one daemon (``who``) and one queue.

    ``failed`` logs, records and waits; ``succeeded`` after a good round logs the recovery
    once and resets the delay.
    """

    def __init__(self, who: str, *, queue: str | None = None, client: redis.Redis | None = None,
                 state_key: str | None = None, first: float = FIRST_DELAY_SECONDS,
                 cap: float = MAX_DELAY_SECONDS, event: str | None = None):
        self.who, self.queue, self.client, self.state_key = who, queue, client, state_key
        self.event = event or f"{who}.redis_unavailable"
        self.first, self.cap = first, cap
        self.delay = first
        self.reason: str | None = None  # the fault being waited out, None when healthy
        self.since = 0.0
        self.since_ms = 0
        self.faults = 0

    def failed(self, exc: BaseException, stop: threading.Event | None = None, *,
               wait: bool = True) -> float:
        """Log and record ``exc``, then wait the current delay (cut short by ``stop``);
        ``wait=False`` only returns the delay, for a caller that schedules its own retry."""
        kind = fault_kind(exc) or "error"
        text = str(exc) or type(exc).__name__
        now_ms = self._server_ms_or_zero()
        if self.reason is None:
            self.since = time.monotonic()
            self.since_ms = now_ms
        self.faults += 1
        self.reason = f"{kind}: {text[:200]}"
        delay = self.delay * random.uniform(0.75, 1.25)
        log.warning(self.event, queue=self.queue, fault=kind, error=text,
                    retry_in_s=round(delay, 3))
        self._record(f"{self.since_ms}|{now_ms}||{self.who}|{self.reason}")
        self.grow()
        if wait:
            pause(exc, delay, stop)
        return delay

    def grow(self) -> None:
        """Double the next delay, up to the cap (a restart that was not a Redis fault)."""
        self.delay = min(self.delay * 2, self.cap)

    def until_stopped(self, stop: threading.Event, work: Callable[[], T],
                      then: Callable[[T], object] = lambda _: None) -> None:
        """``work()`` then ``then(result)`` again and again until ``stop`` is set; a fault a
        daemon waits out is logged, recorded and waited out, any other error raised. The
        recovery is recorded between the two, so a long ``then`` (a wait) does not hide it."""
        while not stop.is_set():
            try:
                result = work()
                self.succeeded()
                then(result)
            except redis.RedisError as exc:
                if not waitable(exc):
                    raise
                self.failed(exc, stop)

    def until_done(self, stop: threading.Event, work: Callable[[], T]) -> T | None:
        """``work()``'s result once Redis lets it run, waiting faults out; None when ``stop``
        was set first. Any other error is raised."""
        while not stop.is_set():
            try:
                result = work()
            except redis.RedisError as exc:
                if not waitable(exc):
                    raise
                self.failed(exc, stop)
            else:
                self.succeeded()
                return result
        return None

    def succeeded(self) -> None:
        if self.reason is None:
            return
        waited = round(time.monotonic() - self.since, 3)
        log.info(f"{self.who}.redis_recovered", queue=self.queue, fault=self.reason,
                 waited_s=waited)
        now_ms = self._server_ms_or_zero()
        self._record(f"{self.since_ms}|{now_ms}|{now_ms}|{self.who}|{self.reason}")
        self.reason = None
        self.delay = self.first

    def _server_ms_or_zero(self) -> int:
        if self.client is None:
            return int(time.time() * 1000)
        try:
            sec, usec = self.client.time()
            return int(sec) * 1000 + int(usec) // 1000
        except redis.RedisError:
            return int(time.time() * 1000)

    def _record(self, value: str) -> None:
        # best effort: the fault itself often refuses this write (READONLY, LOADING)
        if self.client is None or self.state_key is None:
            return
        try:
            self.client.hset(self.state_key, FAULT_FIELD, value)
        except redis.RedisError:
            pass


def retry_on_fault(what: str, work: Callable[[], T], delays: Sequence[float],
                   **fields: Any) -> T:
    """``work()``, called again after each of ``delays`` (seconds) while it raises a fault
    :func:`fault_kind` knows; the last fault is raised once the delays are used up, any other
    error at once. For a caller that must give up in bounded time: a worker holding a
    batch's lease, a producer whose caller waits. ``fields`` go to the ``redis.retrying`` log."""
    for delay in (*delays, None):
        try:
            return work()
        except redis.RedisError as exc:
            kind = fault_kind(exc)
            if delay is None or kind is None:
                raise
            log.warning("redis.retrying", what=what, delay_s=delay, fault=kind, error=str(exc),
                        **fields)
            pause(exc, delay)
    raise AssertionError("unreachable")  # pragma: no cover


def describe_fault(raw: bytes | str | None, now_ms: int, recent_ms: int = 60_000
                   ) -> tuple[str, str] | None:
    """A health rule's (level, reason) for the state's ``redis_fault`` field, if it matters:
    a fault still waited out is critical, one that ended in the last ``recent_ms`` degraded."""
    if raw is None:
        return None
    text = raw.decode() if isinstance(raw, bytes) else raw
    parts = text.split("|", 4)
    if len(parts) != 5:
        return None
    try:
        since, last = int(parts[0]), int(parts[1])
        ended = int(parts[2]) if parts[2] else None
    except ValueError:
        return None
    who, reason = parts[3], parts[4]
    if ended is None:
        if now_ms - last > recent_ms:  # its daemon stopped recording: it is gone, not waiting
            return None
        return ("critical", f"{who} waiting out a Redis fault for "
                            f"{max(0, now_ms - since) / 1000:.0f} s: {reason}")
    if now_ms - ended <= recent_ms:
        return ("degraded", f"{who} waited out a Redis fault for "
                            f"{(ended - since) / 1000:.1f} s, "
                            f"{(now_ms - ended) / 1000:.0f} s ago: {reason}")
    return None
