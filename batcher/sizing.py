"""Adaptive batch size and adaptive time thresholds: pure functions, no Redis (DESIGN §4, §5).

The size controller models processing time as ``a + b·n`` (ms for a batch of ``n`` entries),
least-squares fitted on the recent ``(n, processing_ms)`` samples of all workers, and aims at
the largest ``n`` predicted to stay under ``GOAL_FRACTION`` (90 %) of the performance target.
One call of :func:`next_threshold` is one controller step; call it once per handful of new
samples (the coordinator does so about every ten acked batches).

A step, in order:

1. **Fresh fit** when the window has ≥ ``MIN_FIT_SAMPLES`` samples, ≥ ``MIN_FIT_SIZES`` distinct
   ``n``, a positive slope and a slope larger than twice its standard error (so a noisy fit over
   a narrow spread of ``n`` cannot throw the size around). It becomes ``last_fit``.
2. Otherwise, the **last good fit**, as long as it still explains what is observed: the mean
   processing time of the whole window is within ``STALE_FRACTION`` of the goal from the
   fit's prediction at the window's mean size (the point a fit pins down best). At steady
   state the window holds one size (plus the odd probe), too few distinct sizes for a fresh
   fit, and this is what keeps the size put.
3. Otherwise **AIMD** toward the same goal: −25 % when ``mean_ms`` (the mean processing time
   of the batches of the current size, of all when none has it) is over it, +1 when under
   and the recent flushes were size-triggered. A stale fit is still kept in the state (it is
   reconsidered at every step and is replaced by the next fresh fit).

Growth needs size-triggered flushes (``size_triggered_ratio ≥ GROW_MIN_SIZE_RATIO``): a quiet
queue, whose batches are cut by deadlines, never grows, whatever the model says.

Every ``PROBE_EVERY``-th step on a growing-capable queue is a **probe**: the step's target
moved by ±``PROBE_FRACTION`` (at least one entry), up and down alternately, so that the window
keeps more than one size and both the fit and its staleness check stay alive. The step
after a probe recomputes its target from the model, so a probe lasts one step. *The settled
threshold is the one of the non-probe steps* (``Decision.mode != "probe"``); the tolerances
the tests check apply to it, while a probe sits ±10 % away on purpose. A quiet queue is
never probed, since returning from a downward probe would be growth.

Every result is bounded, in this order: at most ×1.5 up (or +1, whichever is larger, so a
threshold of 1 can grow) and ÷2 down from the live threshold, then clamped to
``[min_size, max_size]`` (the clamp wins when the two disagree, e.g. after a config change).

``SizingState.threshold`` is the live threshold (probe included), the one flushes use.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

GOAL_FRACTION = 0.9
MIN_FIT_SAMPLES = 8
MIN_FIT_SIZES = 3
MIN_SLOPE_T = 2.0
STALE_FRACTION = 0.15
GROW_MIN_SIZE_RATIO = 0.5
AIMD_DECREASE = 0.25
MAX_STEP_UP = 1.5
MAX_STEP_DOWN = 2.0
PROBE_EVERY = 5
PROBE_FRACTION = 0.1
# utilisation up to which the time thresholds are not shortened, and their floor factor (§4)
FULL_UTILISATION = 0.5
MIN_TIME_FACTOR = 0.25

# field names in the queue's state hash; ``size_threshold`` is the live threshold flushes read
FIELD_THRESHOLD = "size_threshold"
FIELD_ADJUSTMENTS = "sizing_adjustments"
FIELD_PROBE_PHASE = "sizing_probe_phase"
FIELD_FIT_A = "sizing_fit_a_ms"
FIELD_FIT_B = "sizing_fit_b_ms_per_entry"
FIELD_FIT_N = "sizing_fit_n_samples"

Evidence = dict[str, float | int | str]


@dataclass(frozen=True, slots=True)
class Fit:
    """processing_ms ≈ a_ms + b_ms_per_entry · n, fitted on ``n_samples`` samples."""

    a_ms: float
    b_ms_per_entry: float
    n_samples: int

    def predict_ms(self, n: float) -> float:
        return self.a_ms + self.b_ms_per_entry * n

    def largest_n_under(self, goal_ms: float) -> float:
        """The (fractional) n predicted to take exactly ``goal_ms``; needs a positive slope."""
        return (goal_ms - self.a_ms) / self.b_ms_per_entry


@dataclass(frozen=True, slots=True)
class SizingState:
    """What the controller carries from one step to the next.

    ``threshold`` is the live size threshold; ``adjustments`` counts controller steps (it paces
    the probes); ``probe_phase`` counts probes made (its parity picks the next direction).
    """

    threshold: int
    last_fit: Fit | None = None
    adjustments: int = 0
    probe_phase: int = 0

    def to_fields(self) -> dict[str, str]:
        """The state as string fields of a Redis hash (fit fields are empty without a fit)."""
        fit = self.last_fit
        return {
            FIELD_THRESHOLD: str(self.threshold),
            FIELD_ADJUSTMENTS: str(self.adjustments),
            FIELD_PROBE_PHASE: str(self.probe_phase),
            FIELD_FIT_A: "" if fit is None else repr(fit.a_ms),
            FIELD_FIT_B: "" if fit is None else repr(fit.b_ms_per_entry),
            FIELD_FIT_N: "" if fit is None else str(fit.n_samples),
        }

    @classmethod
    def from_fields(
        cls, fields: Mapping[str, str] | Mapping[bytes, bytes], *, default_threshold: int
    ) -> SizingState:
        """Read a state written by :meth:`to_fields` (str or bytes, as HGETALL returns it).

        Missing fields take their defaults (``default_threshold`` for the threshold, no fit).
        Raises ``ValueError`` when a present field is not a number.
        """
        text = {_text(k): _text(v) for k, v in fields.items()}
        threshold = text.get(FIELD_THRESHOLD) or str(default_threshold)
        fit: Fit | None = None
        if text.get(FIELD_FIT_A) and text.get(FIELD_FIT_B):
            fit = Fit(
                float(text[FIELD_FIT_A]),
                float(text[FIELD_FIT_B]),
                int(text.get(FIELD_FIT_N) or 0),
            )
        return cls(
            threshold=int(threshold),
            last_fit=fit,
            adjustments=int(text.get(FIELD_ADJUSTMENTS) or 0),
            probe_phase=int(text.get(FIELD_PROBE_PHASE) or 0),
        )


@dataclass(frozen=True, slots=True)
class SizingInput:
    """One step's observations and limits.

    ``samples`` are the recent ``(batch size, processing ms)`` pairs of all workers, in any
    order; ``size_triggered_ratio`` is the share (0–1) of recent flushes whose reason was
    ``size``; ``target_ms`` is ``performance_target_ms`` (the controller aims at 90 % of it).
    """

    samples: Sequence[tuple[int, float]]
    size_triggered_ratio: float
    target_ms: float
    min_size: int
    max_size: int


@dataclass(frozen=True, slots=True)
class Decision:
    """One controller step: the live threshold ``before`` and ``after`` it, and why.

    ``mode`` is ``fit`` (moved by the model), ``aimd``, ``probe``, or ``hold`` (not moved by
    the controller: unchanged, or only clamped into ``[min_size, max_size]`` when there were no
    samples); ``evidence["basis"]`` says what was consulted. Emit an event when
    ``after != before``.
    """

    before: int
    after: int
    mode: str
    state: SizingState
    evidence: Evidence


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def fit_linear(samples: Sequence[tuple[int, float]]) -> Fit | None:
    """Least-squares ``ms ≈ a + b·n``; None without samples or when every ``n`` is the same."""
    count = len(samples)
    if count == 0:
        return None
    mean_n = sum(n for n, _ in samples) / count
    mean_ms = sum(ms for _, ms in samples) / count
    sxx = sum((n - mean_n) ** 2 for n, _ in samples)
    if sxx <= 0.0:
        return None
    sxy = sum((n - mean_n) * (ms - mean_ms) for n, ms in samples)
    slope = sxy / sxx
    return Fit(mean_ms - slope * mean_n, slope, count)


def _slope_is_clear(fit: Fit, samples: Sequence[tuple[int, float]]) -> bool:
    """True when the slope is positive and over ``MIN_SLOPE_T`` standard errors."""
    if fit.b_ms_per_entry <= 0.0:
        return False
    count = len(samples)
    mean_n = sum(n for n, _ in samples) / count
    sxx = sum((n - mean_n) ** 2 for n, _ in samples)
    sse = sum((ms - fit.predict_ms(n)) ** 2 for n, ms in samples)
    stderr = math.sqrt(sse / max(count - 2, 1) / sxx)
    return fit.b_ms_per_entry > MIN_SLOPE_T * stderr


def _fresh_fit(samples: Sequence[tuple[int, float]]) -> Fit | None:
    if len(samples) < MIN_FIT_SAMPLES or len({n for n, _ in samples}) < MIN_FIT_SIZES:
        return None
    fit = fit_linear(samples)
    if fit is None or not _slope_is_clear(fit, samples):
        return None
    return fit


def _mean_at(samples: Sequence[tuple[int, float]], threshold: int) -> float:
    """Mean ms of the batches of the current size; of all batches when none has it."""
    at_size = [ms for n, ms in samples if n == threshold]
    chosen = at_size or [ms for _, ms in samples]
    return sum(chosen) / len(chosen)


def _fit_target(fit: Fit, goal_ms: float) -> int:
    # a hair of slack so a float fit of an exact 40.0 does not floor to 39
    return max(1, math.floor(fit.largest_n_under(goal_ms) + 1e-6))


def _aimd_target(before: int, mean_ms: float, goal_ms: float, may_grow: bool) -> int:
    if mean_ms > goal_ms:
        return min(before - 1, math.floor(before * (1.0 - AIMD_DECREASE)))
    if mean_ms < goal_ms and may_grow:
        return before + 1
    return before


def _bounded(before: int, wanted: int, inp: SizingInput) -> int:
    upper = max(before + 1, math.floor(before * MAX_STEP_UP))
    lower = math.ceil(before / MAX_STEP_DOWN)
    stepped = min(max(wanted, lower), upper)
    return min(max(stepped, inp.min_size), inp.max_size)


def _choose(state: SizingState, inp: SizingInput, ev: Evidence) -> tuple[int, str, Fit | None]:
    """The unbounded target, its basis (fit / last_fit / aimd) and the fit to keep."""
    goal_ms = inp.target_ms * GOAL_FRACTION
    mean_ms = _mean_at(inp.samples, state.threshold)
    ev["mean_ms"] = round(mean_ms, 3)
    fresh = _fresh_fit(inp.samples)
    if fresh is not None:
        _fit_evidence(ev, fresh, goal_ms)
        return _fit_target(fresh, goal_ms), "fit", fresh
    last = state.last_fit
    if last is not None and last.b_ms_per_entry > 0.0:
        # judged at the window's centroid, where even a fit with a loose slope is sharp
        count = len(inp.samples)
        window_ms = sum(ms for _, ms in inp.samples) / count
        predicted = last.predict_ms(sum(n for n, _ in inp.samples) / count)
        ev["window_mean_ms"] = round(window_ms, 3)
        ev["last_fit_predicted_ms"] = round(predicted, 3)
        if abs(window_ms - predicted) <= STALE_FRACTION * goal_ms:
            _fit_evidence(ev, last, goal_ms)
            return _fit_target(last, goal_ms), "last_fit", last
        ev["last_fit_stale"] = 1
    may_grow = inp.size_triggered_ratio >= GROW_MIN_SIZE_RATIO
    return _aimd_target(state.threshold, mean_ms, goal_ms, may_grow), "aimd", last


def _fit_evidence(ev: Evidence, fit: Fit, goal_ms: float) -> None:
    ev["a_ms"] = round(fit.a_ms, 4)
    ev["b_ms_per_entry"] = round(fit.b_ms_per_entry, 4)
    ev["fit_samples"] = fit.n_samples
    ev["ideal_n"] = round(fit.largest_n_under(goal_ms), 3)


def _probe(target: int) -> tuple[int, int]:
    """The upward and downward probe sizes around ``target`` (±10 %, at least one entry)."""
    offset = max(1, round(target * PROBE_FRACTION))
    return target + offset, max(1, target - offset)


def next_threshold(state: SizingState, inp: SizingInput) -> Decision:
    """One controller step (see the module docstring): the next live size threshold.

    Without samples the threshold is held (only clamped into ``[min_size, max_size]``).
    """
    before = state.threshold
    goal_ms = inp.target_ms * GOAL_FRACTION
    may_grow = inp.size_triggered_ratio >= GROW_MIN_SIZE_RATIO
    ev: Evidence = {
        "samples": len(inp.samples),
        "distinct_sizes": len({n for n, _ in inp.samples}),
        "target_ms": inp.target_ms,
        "goal_ms": goal_ms,
        "size_triggered_ratio": round(inp.size_triggered_ratio, 4),
        "min_size": inp.min_size,
        "max_size": inp.max_size,
    }
    if not inp.samples:
        after = min(max(before, inp.min_size), inp.max_size)
        ev["basis"] = "none"
        return Decision(before, after, "hold", replace(state, threshold=after), ev)
    target, basis, keep_fit = _choose(state, inp, ev)
    ev["basis"] = basis
    if not may_grow:
        target = min(target, before)
    mode = "aimd" if basis == "aimd" else "fit"
    probe_phase = state.probe_phase
    if may_grow and (state.adjustments + 1) % PROBE_EVERY == 0:
        up, down = _probe(target)
        target = up if probe_phase % 2 == 0 else down
        ev["probe"] = "up" if probe_phase % 2 == 0 else "down"
        probe_phase += 1
        mode = "probe"
    ev["wanted"] = target
    after = _bounded(before, target, inp)
    if after == before and mode != "probe":
        mode = "hold"
    new_state = SizingState(after, keep_fit, state.adjustments + 1, probe_phase)
    return Decision(before, after, mode, new_state, ev)


def effective_threshold_factor(utilisation: float, early: float) -> float:
    """The factor applied to every time threshold (DESIGN §4).

    1.0 up to 50 % utilisation, falling linearly to 0.25 at ``early``, 0.25 above it.
    """
    if utilisation <= FULL_UTILISATION:
        return 1.0
    if utilisation >= early or early <= FULL_UTILISATION:
        return MIN_TIME_FACTOR
    progress = (utilisation - FULL_UTILISATION) / (early - FULL_UTILISATION)
    return 1.0 - (1.0 - MIN_TIME_FACTOR) * progress


def effective_thresholds_seconds(
    thresholds: tuple[float, float, float], utilisation: float, early: float, adaptive: bool
) -> tuple[float, float, float]:
    """The (normal, high, urgent) time thresholds in force; unchanged when not ``adaptive``."""
    if not adaptive:
        return thresholds
    factor = effective_threshold_factor(utilisation, early)
    normal, high, urgent = thresholds
    return normal * factor, high * factor, urgent * factor
