"""Key names: one Cluster slot per queue, refused names, no key built anywhere else."""

from __future__ import annotations

import pathlib

import pytest
from redis.crc import key_slot

from batcher.keys import QueueKeys

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("queue", ["default", "rss-feeds", "Q_1", "x" * 64])
def test_every_key_of_a_queue_has_the_same_cluster_slot(queue: str) -> None:
    keys = QueueKeys(queue)
    names = [*keys.fixed(), keys.batch("b1"), keys.result("https://example.com/{odd}:id"),
             *(keys.hist(h) for h in ("processing_ms", "queue_wait_ms", "end_to_end_ms")),
             keys.fetch_due, keys.fetch_claims, keys.fetch_totals, keys.fetch_failing,
             keys.fetch_host_until, keys.fetch_host_failures,
             keys.fetch_feed("https://example.com/{odd}:feed")]
    assert {key_slot(name.encode()) for name in names} == {key_slot(f"{{{queue}}}".encode())}
    assert all(name.startswith(f"batcher:{{{queue}}}:") for name in names)


@pytest.mark.parametrize("queue", ["", "a b", "a{b}", "a:b", "x" * 65, "tab\t", "é"])
def test_queue_names_outside_the_rule_are_refused(queue: str) -> None:
    with pytest.raises(ValueError, match=r"\[A-Za-z0-9_-\]\{1,64\}"):
        QueueKeys(queue)


def test_rq_queues_are_listed_urgent_first() -> None:
    assert QueueKeys("q").rq_queues_by_urgency() == ["batcher.q.urgent", "batcher.q.high",
                                                     "batcher.q"]


def test_no_module_builds_a_batcher_key_string_itself() -> None:
    sources = [*ROOT.joinpath("batcher").rglob("*.py"), *ROOT.joinpath("workers").rglob("*.py")]
    offenders = [
        str(path.relative_to(ROOT))
        for path in sources
        if path.name != "keys.py" and '"batcher:{' in path.read_text()
    ]
    assert offenders == []
