"""Which Redis errors a daemon waits out, how it backs off, and what health shows meanwhile."""

from __future__ import annotations

import threading
import time

import pytest
import redis as redis_py

from batcher.backoff import Backoff, describe_fault, fault_kind, retry_on_fault
from batcher.coordinator import scale_memory_ratio
from batcher.monitoring import figures

E = redis_py.exceptions


@pytest.mark.parametrize(("exc", "kind"), [
    (E.OutOfMemoryError("command not allowed when used memory > 'maxmemory'."), "oom"),
    (E.ReadOnlyError("You can't write against a read only replica."), "readonly"),
    (E.MasterDownError("Link with MASTER is down"), "masterdown"),
    (E.BusyLoadingError("Redis is loading the dataset in memory"), "loading"),
    (E.ResponseError("BUSY Redis is busy running a script."), "busy"),
    (E.ConnectionError("Connection refused"), "connection"),
    (E.TimeoutError("Timeout reading from socket"), "timeout"),
    (E.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
     None),
    (E.ResponseError("ERR Error running script: user_script:3: bad argument"), None),
])
def test_transient_faults_are_waited_out_and_bugs_are_not(exc: Exception, kind: str | None
                                                          ) -> None:
    assert fault_kind(exc) == kind


def test_back_off_doubles_to_its_cap_and_resets_after_a_good_round() -> None:
    stop = threading.Event()
    stop.set()  # no real waiting in a unit test
    b = Backoff("coordinator", first=0.25, cap=1.0)
    waits = [b.failed(E.ConnectionError("down"), stop) for _ in range(5)]
    assert 0.18 <= waits[0] <= 0.32 and all(w <= 1.25 for w in waits)
    assert b.delay == 1.0 and b.reason is not None and b.reason.startswith("connection")
    b.succeeded()
    assert b.reason is None and b.delay == 0.25


def test_health_shows_a_fault_being_waited_out_then_one_waited_out_lately() -> None:
    now = 1_000_000
    ongoing = describe_fault(f"{now - 5000}|{now - 100}||worker|oom: full".encode(), now)
    assert ongoing is not None and ongoing[0] == "critical"
    assert "worker" in ongoing[1] and "oom: full" in ongoing[1]
    over = describe_fault(f"{now - 9000}|{now - 2000}|{now - 2000}|coordinator|busy: x", now)
    assert over is not None and over[0] == "degraded"
    assert describe_fault(f"{now - 90_000}|{now - 80_000}|{now - 80_000}|w|x", now) is None
    # a daemon that stopped recording (killed while waiting) is not reported forever
    assert describe_fault(f"{now - 90_000}|{now - 80_000}||w|x", now) is None
    h = figures.health(figures.HealthInput(
        utilization=0.1, early_pressure=0.85, emergency_pressure=0.95,
        recent_p95_processing_ms=None, performance_target_ms=1000, throughput_eps_60s=0,
        throughput_target_eps=1, arrival_eps_60s=None, backlog=0, size_threshold=10,
        dead_last_minute=0, live_workers=None, in_flight_batches=0, redis_fault=ongoing))
    assert h.status == "critical" and h.reasons == [ongoing[1]]


def test_redis_memory_counts_as_pressure_from_its_level_on() -> None:
    assert scale_memory_ratio(0.5, 0.8, 0.85) == 0.0
    assert scale_memory_ratio(0.8, 0.8, 0.85) == pytest.approx(0.85)
    assert scale_memory_ratio(1.2, 0.8, 0.85) == 1.0
    assert 0.85 < scale_memory_ratio(0.9, 0.8, 0.85) < 0.95


def test_a_daemon_loop_waits_out_faults_and_raises_a_bug() -> None:
    stop = threading.Event()
    calls: list[str] = []
    replies: list[BaseException | None] = [E.ConnectionError("down"), E.BusyLoadingError("x"),
                                           None, E.ResponseError("WRONGTYPE bug")]

    def work() -> int:
        reply = replies.pop(0)
        calls.append("work")
        if reply is not None:
            raise reply
        return 7

    b = Backoff("coordinator", first=0.0)
    with pytest.raises(E.ResponseError, match="WRONGTYPE"):
        b.until_stopped(stop, work, lambda result: calls.append(f"then {result}"))
    assert calls == ["work", "work", "work", "then 7", "work"]
    assert b.reason is None and b.faults == 2  # the good round ended the wait


def test_one_call_waited_for_gives_its_result_or_none_once_stopped() -> None:
    stop = threading.Event()
    faults = [E.ConnectionError("down")]

    def work() -> str:
        if faults:
            raise faults.pop()
        return "ok"

    assert Backoff("worker", first=0.0).until_done(stop, work) == "ok"
    stop.set()
    assert Backoff("worker", first=0.0).until_done(stop, work) is None


def test_a_bounded_retry_waits_each_delay_once_then_raises_the_fault(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)

    def down() -> None:
        raise E.ConnectionError("down")

    with pytest.raises(E.ConnectionError):
        retry_on_fault("ack", down, (0.1, 0.3))
    assert slept == [0.1, 0.3]
    slept.clear()

    def bug() -> None:
        raise E.ResponseError("WRONGTYPE")

    with pytest.raises(E.ResponseError):
        retry_on_fault("ack", bug, (0.1, 0.3))
    assert slept == []  # a bug is not retried
