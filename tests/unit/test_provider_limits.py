"""The fake LLM's own rate limits: token buckets that answer like OpenAI's."""

from __future__ import annotations

from batcher.llm.provider_limits import ProviderLimits


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_requests_beyond_the_rpm_are_refused_with_openai_headers() -> None:
    clock = Clock()
    limits = ProviderLimits(rpm=2, clock=clock)
    assert limits.admit(10)[0] and limits.admit(10)[0]
    admitted, headers = limits.admit(10)
    assert not admitted and limits.refused == 1
    assert headers["x-ratelimit-limit-requests"] == "2"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["Retry-After"] == "30"
    clock.now += 30
    assert limits.admit(10)[0]


def test_input_tokens_and_output_debt_are_limited_apart() -> None:
    clock = Clock()
    limits = ProviderLimits(itpm=1_000, otpm=100, clock=clock)
    assert limits.admit(600)[0]
    assert not limits.admit(600)[0]  # 400 input tokens left
    headers = limits.charge_output(150)  # the reply ran the output bucket into debt
    assert headers["x-ratelimit-remaining-output-tokens"] == "0"
    assert headers["x-ratelimit-remaining-tokens"] == "400"
    assert not limits.admit(10)[0]
    clock.now += 60
    assert limits.admit(10)[0]


def test_a_lower_limit_set_at_run_time_applies_at_once() -> None:
    clock = Clock()
    limits = ProviderLimits(rpm=100, clock=clock)
    limits.set(rpm=1, itpm=0, otpm=0)
    assert limits.admit(0)[0]
    assert not limits.admit(0)[0]
