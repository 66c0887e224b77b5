"""The adaptive size controller, driven by a simulated latency model, and the time factor."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from batcher.sizing import (
    Decision,
    Fit,
    SizingInput,
    SizingState,
    effective_threshold_factor,
    effective_thresholds_seconds,
    fit_linear,
    next_threshold,
)

TARGET_MS = 200.0  # 90 % of it is 180 ms
BATCHES_PER_ROUND = 10
WINDOW = 50


@dataclass
class Simulation:
    """Workers whose batch of n takes base_ms + per_entry_ms·n (± jitter), and a controller."""

    base_ms: float
    per_entry_ms: float
    threshold: int
    jitter: float = 0.0
    size_triggered_ratio: float = 1.0
    min_size: int = 5
    max_size: int = 200
    seed: int = 0
    window: list[tuple[int, float]] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.state = SizingState(self.threshold)
        self.rng = random.Random(self.seed)

    def round(self) -> Decision:
        n = self.state.threshold
        for _ in range(BATCHES_PER_ROUND):
            ms = self.base_ms + self.per_entry_ms * n
            ms *= 1.0 + self.rng.uniform(-self.jitter, self.jitter)
            self.window.append((n, ms))
        del self.window[:-WINDOW]
        inp = SizingInput(
            self.window, self.size_triggered_ratio, TARGET_MS, self.min_size, self.max_size
        )
        decision = next_threshold(self.state, inp)
        self.state = decision.state
        self.decisions.append(decision)
        return decision

    def run(self, rounds: int) -> list[Decision]:
        return [self.round() for _ in range(rounds)]


def settled(decisions: list[Decision]) -> list[int]:
    """The thresholds of the non-probe steps: a probe sits ±10 % off the settled size on purpose."""
    return [d.after for d in decisions if d.mode != "probe"]


def test_fit_linear_recovers_a_and_b_from_noise_free_samples() -> None:
    samples = [(n, 20.0 + 4.0 * n) for n in (5, 10, 10, 25, 40, 41)]
    fit = fit_linear(samples)
    assert fit is not None
    assert fit.a_ms == pytest.approx(20.0)
    assert fit.b_ms_per_entry == pytest.approx(4.0)
    assert fit.n_samples == 6


def test_fit_linear_returns_none_for_a_single_distinct_size() -> None:
    assert fit_linear([(30, 140.0), (30, 150.0), (30, 145.0)]) is None
    assert fit_linear([]) is None


def test_settles_at_the_ideal_size_within_20_adjustments() -> None:
    sim = Simulation(base_ms=20.0, per_entry_ms=4.0, threshold=25)
    sim.run(20)
    later = sim.run(40)
    assert all(39 <= n <= 41 for n in settled(later)), settled(later)


def test_settles_again_after_the_per_entry_cost_doubles() -> None:
    sim = Simulation(base_ms=20.0, per_entry_ms=4.0, threshold=25)
    sim.run(40)
    sim.per_entry_ms = 8.0  # ideal n = (180 - 20) / 8 = 20
    sim.run(20)
    later = sim.run(40)
    assert all(19 <= n <= 21 for n in settled(later)), settled(later)


@pytest.mark.parametrize("seed", range(8))
def test_stays_within_3_of_the_ideal_under_20_percent_jitter(seed: int) -> None:
    sim = Simulation(base_ms=20.0, per_entry_ms=4.0, threshold=25, jitter=0.2, seed=seed)
    sim.run(20)
    later = sim.run(40)
    assert all(37 <= n <= 43 for n in settled(later)), settled(later)
    sim.per_entry_ms = 8.0
    sim.run(20)
    later = sim.run(40)
    assert all(17 <= n <= 23 for n in settled(later)), settled(later)


def test_probes_alternate_around_the_settled_size() -> None:
    sim = Simulation(base_ms=20.0, per_entry_ms=4.0, threshold=25)
    sim.run(20)
    probes = [d.after for d in sim.run(20) if d.mode == "probe"]
    assert len(probes) == 4
    assert sorted(set(probes)) == [36, 44]
    assert probes[0] != probes[1]


def test_a_quiet_queue_never_grows_even_far_under_target() -> None:
    sim = Simulation(base_ms=20.0, per_entry_ms=1.0, threshold=10, size_triggered_ratio=0.0)
    for decision in sim.run(40):
        assert decision.after <= decision.before
        assert decision.mode != "probe"
    assert sim.state.threshold == 10


def test_a_quiet_queue_still_shrinks_when_over_target() -> None:
    sim = Simulation(base_ms=20.0, per_entry_ms=8.0, threshold=40, size_triggered_ratio=0.0)
    sim.run(20)
    assert sim.state.threshold <= 20


def test_aimd_grows_by_one_with_too_few_samples() -> None:
    state = SizingState(25)
    inp = SizingInput([(25, 120.0)] * 5, 1.0, TARGET_MS, 5, 200)
    decision = next_threshold(state, inp)
    assert (decision.mode, decision.after) == ("aimd", 26)


def test_aimd_cuts_a_quarter_when_over_the_goal() -> None:
    state = SizingState(40)
    inp = SizingInput([(40, 340.0)] * 20, 1.0, TARGET_MS, 5, 200)
    decision = next_threshold(state, inp)
    assert (decision.mode, decision.after) == ("aimd", 30)
    assert decision.evidence["mean_ms"] == 340.0
    assert decision.evidence["goal_ms"] == 180.0


def test_singular_samples_keep_to_the_last_good_fit() -> None:
    fit = Fit(20.0, 4.0, 50)
    state = SizingState(38, fit, adjustments=1)
    inp = SizingInput([(38, 172.0)] * 50, 1.0, TARGET_MS, 5, 200)
    decision = next_threshold(state, inp)
    assert (decision.mode, decision.after) == ("fit", 40)
    assert decision.evidence["basis"] == "last_fit"
    assert decision.state.last_fit == fit


def test_a_stale_last_fit_gives_way_to_aimd_but_is_kept() -> None:
    fit = Fit(20.0, 4.0, 50)
    state = SizingState(40, fit, adjustments=1)
    inp = SizingInput([(40, 340.0)] * 50, 1.0, TARGET_MS, 5, 200)
    decision = next_threshold(state, inp)
    assert (decision.mode, decision.after) == ("aimd", 30)
    assert decision.state.last_fit == fit


def test_evidence_explains_a_fit_decision() -> None:
    samples = [(n, 20.0 + 4.0 * n) for n in (20, 25, 30) for _ in range(4)]
    decision = next_threshold(SizingState(30), SizingInput(samples, 1.0, TARGET_MS, 5, 200))
    assert decision.mode == "fit"
    assert decision.after == 40  # (180 - 20) / 4, within ×1.5 of 30
    ev = decision.evidence
    assert ev["a_ms"] == pytest.approx(20.0)
    assert ev["b_ms_per_entry"] == pytest.approx(4.0)
    assert ev["samples"] == 12
    assert ev["target_ms"] == TARGET_MS
    assert ev["ideal_n"] == pytest.approx(40.0)


def test_no_samples_holds_the_threshold() -> None:
    decision = next_threshold(SizingState(25), SizingInput([], 1.0, TARGET_MS, 5, 200))
    assert (decision.mode, decision.before, decision.after) == ("hold", 25, 25)


def assert_bounded(decision: Decision, min_size: int, max_size: int) -> None:
    before, after = decision.before, decision.after
    assert min_size <= after <= max_size
    assert after <= max(before * 1.5, before + 1)
    assert after >= before / 2


@pytest.mark.parametrize(
    ("per_entry_ms", "start", "min_size", "max_size"),
    [(0.1, 5, 5, 200), (40.0, 200, 5, 200), (4.0, 25, 30, 35), (0.1, 12, 5, 50)],
)
def test_step_bounds_and_clamp_hold_at_every_step(
    per_entry_ms: float, start: int, min_size: int, max_size: int
) -> None:
    sim = Simulation(
        base_ms=20.0, per_entry_ms=per_entry_ms, threshold=start, jitter=0.2,
        min_size=min_size, max_size=max_size,
    )
    for decision in sim.run(60):
        assert_bounded(decision, min_size, max_size)


@given(
    threshold=st.integers(5, 200),
    samples=st.lists(
        st.tuples(st.integers(1, 200), st.floats(0.0, 5000.0, allow_nan=False)), max_size=60
    ),
    ratio=st.floats(0.0, 1.0),
    adjustments=st.integers(0, 20),
)
def test_bounds_hold_for_any_samples(
    threshold: int, samples: list[tuple[int, float]], ratio: float, adjustments: int
) -> None:
    state = SizingState(threshold, Fit(10.0, 2.0, 30), adjustments, adjustments % 3)
    decision = next_threshold(state, SizingInput(samples, ratio, TARGET_MS, 5, 200))
    assert_bounded(decision, 5, 200)
    assert decision.state.threshold == decision.after
    if ratio < 0.5:
        assert decision.after <= decision.before


def test_state_round_trips_through_redis_hash_fields() -> None:
    state = SizingState(37, Fit(19.75, 4.125, 48), adjustments=12, probe_phase=3)
    fields = state.to_fields()
    assert all(isinstance(v, str) for v in fields.values())
    assert SizingState.from_fields(fields, default_threshold=25) == state
    as_bytes = {k.encode(): v.encode() for k, v in fields.items()}
    assert SizingState.from_fields(as_bytes, default_threshold=25) == state


def test_state_without_fields_starts_from_the_default() -> None:
    assert SizingState.from_fields({}, default_threshold=25) == SizingState(25)
    no_fit = SizingState(30).to_fields()
    assert SizingState.from_fields(no_fit, default_threshold=25) == SizingState(30)


@pytest.mark.parametrize(
    ("utilisation", "factor"),
    [(0.0, 1.0), (0.5, 1.0), (0.675, 0.625), (0.85, 0.25), (1.0, 0.25)],
)
def test_effective_threshold_factor(utilisation: float, factor: float) -> None:
    assert effective_threshold_factor(utilisation, early=0.85) == pytest.approx(factor)


def test_effective_thresholds_scale_every_priority_when_adaptive() -> None:
    thresholds = (300.0, 120.0, 60.0)
    assert effective_thresholds_seconds(thresholds, 0.9, 0.85, adaptive=True) == (75.0, 30.0, 15.0)
    assert effective_thresholds_seconds(thresholds, 0.9, 0.85, adaptive=False) == thresholds
    assert effective_thresholds_seconds(thresholds, 0.2, 0.85, adaptive=True) == thresholds


def test_factor_is_monotonic_between_half_and_early() -> None:
    values = [effective_threshold_factor(u / 100, 0.85) for u in range(0, 101)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))
    assert not math.isnan(sum(values))
