"""budget.lua through ``batcher.budget.Budget``: shared token buckets, on fakeredis and a real
server."""

from __future__ import annotations

import pytest
import redis as redis_py

from batcher.budget import Budget, BudgetLimits, provider_figures
from tests.support.builders import T0

MINUTE_MS = 60_000


def _budget(redis: redis_py.Redis, rpm: float = 10, itpm: float = 6_000,
            otpm: float = 0) -> Budget:
    budget = Budget(redis, "prov.model-1")
    budget.set_limits(BudgetLimits(rpm, itpm, otpm), now_ms=T0)
    return budget


def test_reservations_take_until_a_bucket_is_empty_then_say_how_long_to_wait(
        redis: redis_py.Redis) -> None:
    budget = _budget(redis)
    assert [budget.reserve(1, 1_000, 0, now_ms=T0) for _ in range(6)] == [0.0] * 6
    # input tokens are out (6,000/min = 100/s): 1,000 more come back in 10 s
    assert budget.reserve(1, 1_000, 0, now_ms=T0) == 10.0
    assert budget.show(now_ms=T0)["in"]["left"] == 0
    assert budget.reserve(1, 1_000, 0, now_ms=T0 + 10_000) == 0.0


def test_a_refused_reservation_takes_nothing(redis: redis_py.Redis) -> None:
    budget = _budget(redis, rpm=2, itpm=0)
    assert budget.reserve(1, 0, 0, now_ms=T0) == 0.0
    assert budget.reserve(1, 0, 0, now_ms=T0) == 0.0
    assert budget.reserve(1, 0, 0, now_ms=T0) == 30.0  # one request per 30 s
    assert budget.show(now_ms=T0)["waits"] == 1
    assert budget.reserve(1, 0, 0, now_ms=T0 + 30_000) == 0.0


def test_settle_corrects_the_estimate_with_the_real_usage(redis: redis_py.Redis) -> None:
    budget = _budget(redis)
    budget.reserve(1, 3_000, 0, now_ms=T0)
    budget.settle((0, -2_000, 0), now_ms=T0)  # it used 1,000, not 3,000
    assert budget.show(now_ms=T0)["in"]["left"] == 5_000
    budget.settle((0, 7_000, 0), now_ms=T0)  # far more than reserved: in debt
    assert budget.show(now_ms=T0)["in"]["left"] == -2_000
    assert budget.reserve(1, 100, 0, now_ms=T0) == 21.0


def test_the_providers_headers_tighten_the_bucket(redis: redis_py.Redis) -> None:
    budget = _budget(redis)
    budget.settle((0, 0, 0), {"x-ratelimit-remaining-requests": "3",
                              "x-ratelimit-limit-tokens": "3000"}, now_ms=T0)
    shown = budget.show(now_ms=T0)
    assert shown["req"]["left"] == 3
    assert shown["in"]["provider_limit_per_minute"] == 3_000
    assert shown["in"]["left"] == 3_000
    # the provider's limit rises back above ours: ours is in force again
    budget.settle((0, 0, 0), {"x-ratelimit-limit-tokens": "90000"}, now_ms=T0)
    assert budget.show(now_ms=T0)["in"]["provider_limit_per_minute"] is None


def test_a_lower_limit_applies_at_once_and_a_want_beyond_it_passes_when_full(
        redis: redis_py.Redis) -> None:
    budget = _budget(redis, itpm=6_000)
    budget.set_limits(BudgetLimits(10, 3_000, 0), now_ms=T0)
    assert budget.show(now_ms=T0)["in"]["left"] == 3_000
    assert budget.reserve(1, 5_000, 0, now_ms=T0) == 0.0  # bigger than a minute: taken full
    # 2,000 in debt: back to full (a want beyond the limit waits for a full bucket) at
    # 3,000 a minute takes 5,000 / 50 per second = 100 s
    assert budget.reserve(1, 5_000, 0, now_ms=T0) == 100.0


def test_no_limit_means_no_wait(redis: redis_py.Redis) -> None:
    budget = _budget(redis, rpm=0, itpm=0, otpm=0)
    assert all(budget.reserve(1, 10**9, 10**9, now_ms=T0) == 0.0 for _ in range(100))


def test_a_bad_budget_name_or_limit_is_refused(redis: redis_py.Redis) -> None:
    with pytest.raises(ValueError, match="budget name"):
        Budget(redis, "no spaces")
    with pytest.raises(ValueError, match=">= 0"):
        _budget(redis).set_limits(BudgetLimits(-1, 0, 0))


def test_provider_figures_read_openai_and_split_token_headers() -> None:
    remaining, limits = provider_figures({
        "X-RateLimit-Remaining-Requests": "7", "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-input-tokens": "900", "x-ratelimit-remaining-tokens": "5",
        "x-ratelimit-remaining-output-tokens": "oops"})
    assert remaining == [7.0, 900.0, None]
    assert limits == [60.0, None, None]


def test_stats_top_and_the_exporter_show_the_budget(redis: redis_py.Redis) -> None:
    from rich.console import Console

    from batcher.exporter import metric_families
    from batcher.stats import detailed_stats
    from batcher.top import render_top
    from tests.support.builders import make_config

    config = make_config(budget="prov.model-1")
    budget = Budget(redis, config.budget)
    budget.set_limits(BudgetLimits(60, 1_000, 0))
    budget.reserve(1, 400, 0)
    stats = detailed_stats(redis, config, check_workers=False)
    assert stats["budget"]["in"]["limit_per_minute"] == 1_000
    assert 600 <= stats["budget"]["in"]["left"] < 1_000
    left = {s.labels["bucket"]: s.value for m in metric_families(stats)
            if m.name == "batcher_budget_left" for s in m.samples}
    assert set(left) == {"req", "in"} and 600 <= left["in"] < 1_000
    console = Console(record=True, width=120)
    console.print(render_top(stats))
    assert "budget prov.model-1" in console.export_text()
    assert detailed_stats(redis, make_config(), check_workers=False)["budget"] is None
