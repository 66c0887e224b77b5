"""The built-in handlers: echo and the simulated LLM."""

from __future__ import annotations

import pytest

from batcher.models import Batch, Entry, FlushReason
from workers.handlers import echo, simulated

SIM_VARS = ("SIM_BASE_MS", "SIM_PER_ENTRY_MS", "SIM_JITTER_MS", "SIM_FAILURE_RATE")


def _batch(n: int) -> Batch:
    entries = [
        Entry(
            id=f"id-{i}",
            source="test",
            priority=i % 3,
            enqueued_ms=1_000 + i,
            attempts=0,
            payload={"i": i, "tags": []},
        )
        for i in range(n)
    ]
    return Batch("q", "b1", 1, FlushReason.SIZE, 2_000, entries)


@pytest.fixture(autouse=True)
def _clean_sim_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SIM_VARS:
        monkeypatch.delenv(name, raising=False)


def test_echo_returns_each_payload_by_id() -> None:
    batch = _batch(3)
    assert echo.handle(batch) == {e.id: e.payload for e in batch.entries}


def test_echo_of_an_empty_batch_is_empty() -> None:
    assert echo.handle(_batch(0)) == {}


def test_simulated_defaults_succeed_at_once() -> None:
    assert simulated.handle(_batch(2)) == {
        "id-0": {"ok": True, "n": 2},
        "id-1": {"ok": True, "n": 2},
    }


def test_simulated_sleeps_base_plus_per_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIM_BASE_MS", "40")
    monkeypatch.setenv("SIM_PER_ENTRY_MS", "10")
    monkeypatch.setenv("SIM_JITTER_MS", "5")
    slept: list[float] = []
    monkeypatch.setattr(simulated.time, "sleep", slept.append)
    simulated.handle(_batch(4))
    # 40 + 4 x 10 = 80 ms, +- 5 ms of jitter, slept once before the results
    assert len(slept) == 1 and 0.075 <= slept[0] <= 0.085


def test_simulated_latency_stays_within_jitter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIM_BASE_MS", "100")
    monkeypatch.setenv("SIM_PER_ENTRY_MS", "2")
    monkeypatch.setenv("SIM_JITTER_MS", "30")
    delays = [simulated.latency_ms(10) for _ in range(200)]
    assert all(90 <= d <= 150 for d in delays)
    assert len(set(delays)) > 1


def test_simulated_jitter_never_makes_a_negative_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIM_JITTER_MS", "50")
    assert all(simulated.latency_ms(1) >= 0 for _ in range(100))


def test_simulated_failure_rate_one_always_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIM_FAILURE_RATE", "1.0")
    for _ in range(20):
        with pytest.raises(RuntimeError, match="simulated failure"):
            simulated.handle(_batch(1))


def test_simulated_failure_rate_zero_never_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIM_FAILURE_RATE", "0")
    for _ in range(50):
        assert simulated.handle(_batch(1)) == {"id-0": {"ok": True, "n": 1}}


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SIM_BASE_MS", "fast"),
        ("SIM_PER_ENTRY_MS", "-1"),
        ("SIM_JITTER_MS", "nan"),
        ("SIM_FAILURE_RATE", "1.5"),
        ("SIM_FAILURE_RATE", "-0.1"),
    ],
)
def test_simulated_bad_setting_raises_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=name):
        simulated.handle(_batch(1))


def test_simulated_reads_the_environment_at_call_time(monkeypatch: pytest.MonkeyPatch) -> None:
    assert simulated.handle(_batch(1))
    monkeypatch.setenv("SIM_FAILURE_RATE", "1")
    with pytest.raises(RuntimeError):
        simulated.handle(_batch(1))
