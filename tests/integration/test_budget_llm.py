"""The LLM handler with a shared budget against the fake LLM's own limits (issue 17)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis as redis_py

from batcher import budget_guard
from batcher.budget import Budget, BudgetLimits
from batcher.errors import RateLimited
from batcher.llm import handler as llm
from batcher.llm.fake import FakeLLMServer, serve_fake_llm
from batcher.llm.provider_limits import ProviderLimits
from batcher.models import Batch, Entry, FlushReason


def _batch(n: int, start: int = 0) -> Batch:
    entries = [Entry(id=f"e{i}", source="feed", priority=0, enqueued_ms=0, attempts=0,
                     payload={"title": f"Python release {i}", "summary": "x" * 400})
               for i in range(start, start + n)]
    return Batch(queue="q", id="b", attempt=1, reason=FlushReason.SIZE, created_ms=0,
                 entries=entries)


@pytest.fixture
def limited_fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeLLMServer]:
    server, url = serve_fake_llm(base_latency_ms=0, per_entry_ms=0,
                                 limits=ProviderLimits(rpm=1_000, itpm=2_000, otpm=100_000))
    monkeypatch.setenv("LLM_BASE_URL", url)
    for name in ("LLM_API_KEY", "LLM_MODEL", "LLM_JSON_MODE", "LLM_MAX_TOKENS"):
        monkeypatch.delenv(name, raising=False)
    yield server
    server.shutdown()
    server.server_close()
    budget_guard.bind(None)


def test_without_a_budget_the_fakes_own_limit_answers_429(limited_fake: FakeLLMServer) -> None:
    budget_guard.bind(None)
    with pytest.raises(RateLimited):
        for start in range(0, 100, 5):
            llm.summarize(_batch(5, start))
    assert limited_fake.options.limits is not None and limited_fake.options.limits.refused == 1


def test_a_budget_waits_before_the_provider_refuses(
        redis: redis_py.Redis, limited_fake: FakeLLMServer) -> None:
    budget = Budget(redis, "fake")
    budget.set_limits(BudgetLimits(1_000, 2_000, 100_000))
    budget_guard.bind(budget)
    answered = 0
    with pytest.raises(RateLimited, match="budget fake: waiting"):
        for start in range(0, 100, 5):
            outcome = llm.summarize(_batch(5, start))
            answered += len(outcome.results)
    limits = limited_fake.options.limits
    assert limits is not None and limits.refused == 0  # no 429: the budget said wait first
    assert answered == 5 * limits.admitted == 10  # two calls of 5 before the budget said wait
    # every answered call was settled with its real usage and the provider's headers
    assert budget.show()["settled"] == limits.admitted
