"""Property-based tests (hypothesis): producer validation, and a model of the queue's scripts.

1. Any ids, payloads, priorities and sources: ``queue_many`` accepts them (and every entry comes
   back byte-identical through flush and claim) or raises ``InvalidEntryError`` with the database
   unchanged; never any other exception. On fakeredis and on the real server.
2. A state machine over every Lua script with a controlled clock, on the real server: after every
   step the invariants of DESIGN §3 hold and Redis agrees with a Python model of where each id is.

Profiles: ``BATCHER_HYPOTHESIS_PROFILE=thorough`` runs more examples; the default ``ci`` keeps the
file well under a minute on two cores. Profiles are applied per test, not loaded globally.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import math
import os
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import orjson
import pytest
import redis as redis_py
from hypothesis import HealthCheck, currently_in_test_context, given, settings
from hypothesis import event as hypothesis_event
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from batcher.errors import InvalidEntryError
from batcher.fairness import source_group
from batcher.producer import BatchStateManager
from batcher.records import PRIORITY_SCORE_BASE, AckResult, BatchRecord, score_of
from batcher.scripts import Scripts
from tests.support.builders import batch_entries, entry, envelope, make_config
from tests.support.invariants import assert_consistent

settings.register_profile(
    "ci", max_examples=100, stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.register_profile("thorough", parent=settings.get_profile("ci"), max_examples=300,
                          stateful_step_count=50)
PROFILE = settings.get_profile(os.environ.get("BATCHER_HYPOTHESIS_PROFILE", "ci"))



def event(label: str) -> None:
    """Count an outcome for ``--hypothesis-show-statistics``; a no-op in a plain test."""
    if currently_in_test_context():
        hypothesis_event(label)


# -- strategies ------------------------------------------------------------------------------

# every code point, surrogates and control characters included
ANY_TEXT = st.characters(exclude_categories=())
ids = st.one_of(
    st.text(ANY_TEXT, max_size=4), st.text(ANY_TEXT, min_size=196, max_size=204),
    st.text(ANY_TEXT, max_size=300), st.text("abc xyz-_:é日🚀", min_size=1, max_size=8),
    st.integers(), st.none(), st.binary(max_size=8),
)
priorities = st.one_of(st.integers(-1, 3), st.integers(), st.booleans(), st.text(max_size=2),
                       st.none(), st.floats())
sources = st.one_of(st.text(ANY_TEXT, max_size=3), st.text(ANY_TEXT, min_size=199, max_size=201),
                    st.integers(), st.none())


class _Opaque:
    """A value no JSON encoder knows."""


# Values JSON cannot hold and orjson refuses (orjson-native types such as datetime, UUID,
# dataclasses and Enum members are accepted by orjson: see test_orjson_native_types_... below).
NON_JSON = st.one_of(
    st.sets(st.integers(), max_size=2), st.frozensets(st.integers(), max_size=2),
    st.binary(max_size=4), st.builds(bytearray, st.binary(max_size=4)), st.complex_numbers(),
    st.builds(_Opaque), st.decimals(allow_nan=False), st.integers(2**64, 2**80),
    st.integers(-(2**80), -(2**63) - 1),
)
json_leaves = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.integers(),
    st.floats(), st.text(ANY_TEXT, max_size=30),
)
payload_values = st.recursive(
    st.one_of(json_leaves, NON_JSON),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.tuples(inner, inner),
        st.dictionaries(st.text(ANY_TEXT, max_size=6), inner, max_size=4),
        st.dictionaries(st.one_of(st.integers(), st.none()), inner, min_size=1, max_size=2),
    ),
    max_leaves=20,
)
payloads = st.one_of(
    st.dictionaries(st.text(ANY_TEXT, max_size=6), payload_values, max_size=5),
    payload_values,
)
# Entries valid by construction: these must always be accepted.
_printable = st.characters(exclude_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"))
_json = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1),
              st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20)),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=3),
    max_leaves=15,
)
valid_ids = st.text(_printable, min_size=1, max_size=200)
valid_sources = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=200)
valid_payloads = st.dictionaries(st.text(max_size=5), _json, max_size=4)
valid_entries = st.fixed_dictionaries({
    "id": valid_ids, "source": valid_sources, "priority": st.integers(0, 2),
    "payload": valid_payloads,
})
# Each field valid or arbitrary, so that about half the calls get through validation.
entries = st.fixed_dictionaries(
    {"id": valid_ids | ids, "payload": valid_payloads | payloads},
    optional={"source": valid_sources | sources, "priority": st.integers(0, 2) | priorities},
)
calls = st.lists(st.one_of(valid_entries, entries, entries, st.none(), st.integers()),
                 max_size=4)



# -- what "exactly what was sent" means --------------------------------------------------------


def as_stored(value: Any) -> Any:
    """``value`` after the JSON round trip the producer's contract allows.

    Two changes only: a tuple comes back as a list (JSON has one array type), and a NaN or
    infinite float comes back as null, because orjson writes them as ``null`` instead of refusing
    them (a validation hole: see test_non_finite_floats_are_refused). Everything else, including
    64-bit integers and float bit patterns, must come back equal.
    """
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list | tuple):
        return [as_stored(v) for v in value]
    if isinstance(value, dict):
        return {k: as_stored(v) for k, v in value.items()}
    return value


def snapshot(client: redis_py.Redis) -> dict[bytes, Any]:
    """Every key with its type and whole content."""
    out: dict[bytes, Any] = {}
    for key in client.scan_iter(count=1000):
        kind: Any = client.type(key)
        reader: Any = {
            b"string": lambda k: client.get(k), b"hash": lambda k: client.hgetall(k),
            b"zset": lambda k: client.zrange(k, 0, -1, withscores=True),
            b"list": lambda k: client.lrange(k, 0, -1), b"set": lambda k: client.smembers(k),
            b"stream": lambda k: client.xrange(k),
        }[kind]
        out[key] = (kind, reader(key))
    return out


def _manager(client: redis_py.Redis) -> BatchStateManager:
    client.flushdb()
    manager = BatchStateManager(client, make_config())
    manager.queue_many([{"id": "seed", "source": "s", "payload": {"n": 0}}])
    return manager


def _expected(sent: list[Any]) -> dict[str, dict[str, Any]]:
    """The envelope each new id should be stored as; a repeated id keeps its first entry."""
    out: dict[str, dict[str, Any]] = {}
    for item in sent:
        eid = item["id"]
        if eid not in out and eid != "seed":
            source = item.get("source", "default")
            out[eid] = {"g": source_group(source), "id": eid, "source": source,
                        "priority": item.get("priority", 0),
                        "payload": as_stored(item["payload"])}
    return out


def _flush_and_claim(manager: BatchStateManager) -> dict[str, bytes]:
    """Flush everything pending and claim each batch: id -> envelope bytes the worker gets."""
    got: dict[str, bytes] = {}
    for n in range(1000):
        decision = manager.scripts.flush(f"p{n}", manual=True)
        if decision.batch is None:
            return got
        record = manager.scripts.claim(decision.batch.id, decision.batch.attempt)
        assert isinstance(record, BatchRecord)
        for eid, (_score, _prior, env) in batch_entries(record).items():
            assert eid not in got, f"{eid!r} flushed twice"
            got[eid] = env
    raise AssertionError("pending never drained")


def _check_call(client: redis_py.Redis, sent: list[Any]) -> None:
    manager = _manager(client)
    before = snapshot(client)
    try:
        result = manager.queue_many(sent)
    except InvalidEntryError:
        event("refused")
        assert snapshot(client) == before, "a refused call wrote to Redis"
        return
    event("accepted")
    expected = _expected(sent)
    assert result.accepted == len(expected) and not result.rejected_ids
    raw: Any = client.hgetall(manager.keys.payloads)
    stored = {bytes(k).decode(): bytes(v) for k, v in raw.items()}
    for eid, sent_envelope in expected.items():
        # orjson: ints up to 64 bits and floats round-trip exactly; nothing else is tolerated
        assert orjson.loads(stored[eid]) == sent_envelope
    assert _flush_and_claim(manager) == stored


@given(sent=calls)
@PROFILE
def test_any_entries_are_stored_exactly_or_refused_with_nothing_written(
    redis: redis_py.Redis, sent: list[Any]
) -> None:
    _check_call(redis, sent)


@given(sent=st.lists(valid_entries, min_size=1, max_size=4))
@PROFILE
def test_entries_valid_by_the_contract_are_always_accepted(
    redis: redis_py.Redis, sent: list[dict[str, Any]]
) -> None:
    manager = _manager(redis)
    result = manager.queue_many(sent)
    assert result.accepted == len(_expected(sent))
    _check_call(redis, sent)


# -- values orjson would accept but not round-trip: refused (holes the properties found) -----


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_floats_are_refused(fake_redis: redis_py.Redis, value: float) -> None:
    manager = _manager(fake_redis)
    with pytest.raises(InvalidEntryError):
        manager.queue_many([{"id": "x", "payload": {"v": value}}])


class _Colour(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class _Point:
    x: int


@pytest.mark.parametrize("value", [
    datetime.datetime(2024, 1, 2, 3, 4, 5), datetime.date(2024, 1, 2), uuid.UUID(int=7),
    _Colour.RED, _Point(1),
], ids=["datetime", "date", "uuid", "enum", "dataclass"])
def test_orjson_native_types_are_refused_or_round_trip(
    fake_redis: redis_py.Redis, value: object
) -> None:
    manager = _manager(fake_redis)
    try:
        manager.queue_many([{"id": "x", "payload": {"v": value}}])
    except InvalidEntryError:
        return
    raw = fake_redis.hget(manager.keys.payloads, "x")
    assert raw is not None and orjson.loads(raw)["payload"] == {"v": value}


@pytest.mark.parametrize("sent", [
    [{"id": "d", "payload": {"v": Decimal("1.5")}}], [None], [{"id": "m"}],
    [{"id": "big", "payload": {"v": 2**64 - 1, "w": -(2**63), "f": -0.0, "t": (1, [])}}],
    [{"id": "a", "payload": {}}, {"id": "a", "payload": {"second": 1}}],
], ids=["decimal", "not-a-mapping", "no-payload", "64-bit-edges", "repeated-id"])
def test_edge_cases_follow_the_same_rule(fake_redis: redis_py.Redis, sent: list[Any]) -> None:
    _check_call(fake_redis, sent)


# -- the queue as a state machine, on the real server ----------------------------------------

T_START = 1_700_000_000_000
POOL = ("a", "b", "c", "d", "e", "f", "g", "x y", "é日🚀", "z" * 200)
WINDOW_MS = 60_000
DISPATCH_LEASE_MS = 30_000
JOB_LEASE_MS = 185_000  # job timeout 180 s + grace 5 s
MAX_AGE_MS = 300_000  # the least allowed: the normal time threshold
MAX_ATTEMPTS = 2
THRESHOLD = 6  # size threshold = batch size
THRESHOLDS_MS = {0: 300_000, 1: 120_000, 2: 60_000}
MAX_INFLIGHT = 4
STEPS_MS = (1, 700, 5_000, 31_000, 61_000, 190_000, 400_000, 3_700_000)


@dataclasses.dataclass
class Batch:
    entries: dict[str, tuple[int, int]]  # id -> (score, prior attempts)
    lease: int
    status: str = "dispatched"
    attempt: int = 1
    free: int = 0


@dataclasses.dataclass
class Model:
    """Where Python thinks every id is; Redis must agree after every step."""

    pending: dict[str, tuple[int, int | None]] = dataclasses.field(default_factory=dict)
    delayed: dict[str, tuple[int, int, int]] = dataclasses.field(default_factory=dict)
    batches: dict[str, Batch] = dataclasses.field(default_factory=dict)
    dead: dict[str, tuple[str, int]] = dataclasses.field(default_factory=dict)  # reason, score
    acked: set[str] = dataclasses.field(default_factory=set)
    seen: dict[str, int] = dataclasses.field(default_factory=dict)
    counts: dict[str, int] = dataclasses.field(
        default_factory=lambda: {"accepted": 0, "acked": 0, "purged": 0})
    paused_until: int = 0

    def places(self) -> dict[str, list[str]]:
        """id -> every place holding a copy of it (two only for an id re-sent after the
        seen window while the first copy was in flight or dead)."""
        out: dict[str, list[str]] = {}
        held = [(i, "pending") for i in self.pending] + [(i, "delayed") for i in self.delayed]
        held += [(i, f"batch {bid}") for bid, b in self.batches.items() for i in b.entries]
        for eid, place in held + [(i, "dead") for i in self.dead]:
            out.setdefault(eid, []).append(place)
        return {i: sorted(p) for i, p in out.items()}

    def to_dead(self, eid: str, reason: str, score: int) -> None:
        # a dead record replaces an older one of the same id, which counts as purged
        if eid in self.dead:
            self.counts["purged"] += 1
            event("dead record replaced by a newer copy")
        self.dead[eid] = (reason, score)


def _int(value: Any) -> int:
    return int(value) if value is not None else 0


class QueueMachine(RuleBasedStateMachine):
    """Every script, driven in any order with an explicit clock that only the machine moves."""

    def __init__(self, client: redis_py.Redis):
        super().__init__()
        client.flushdb()
        self.client = client
        self.scripts = Scripts(client, make_config(
            queue="prop", size_threshold=THRESHOLD, max_batch_size=THRESHOLD,
            max_attempts=MAX_ATTEMPTS, dedupe_window_seconds=WINDOW_MS / 1000,
            max_inflight_batches=MAX_INFLIGHT, max_buffer_age_seconds=MAX_AGE_MS / 1000))
        self.keys = self.scripts.keys
        self.m = Model()
        self.now = T_START
        self.made = 0
        self.retired: list[tuple[str, int]] = []  # acked or dead batches, for late replies
        self.stray = False

    # -- helpers --------------------------------------------------------------------------

    def _pick(self, data: st.DataObject, want: Callable[[Batch], bool]) -> tuple[str, int]:
        """A batch the rule can act on, with its attempt; under ``stray_reply`` any batch,
        a retired one (a late reply) or one that never existed, maybe with a wrong attempt."""
        live = [(bid, b.attempt) for bid, b in sorted(self.m.batches.items())]
        if not self.stray:
            return data.draw(st.sampled_from([x for x in live if want(self.m.batches[x[0]])]))
        bid, attempt = data.draw(st.sampled_from([*live, *self.retired[-3:], ("b0", 1)]))
        return bid, attempt + data.draw(st.sampled_from((0, 0, -1, 1)))

    def _any(self, want: Callable[[Batch], bool]) -> bool:
        return any(want(b) for b in self.m.batches.values())

    def _live(self, bid: str, attempt: int, status: str) -> Batch | None:
        b = self.m.batches.get(bid)
        return b if b is not None and b.attempt == attempt and b.status == status else None

    def _retire(self, bid: str) -> None:
        self.retired.append((bid, self.m.batches.pop(bid).attempt))

    def _flush_due(self, manual: bool) -> bool:
        m = self.m
        if not m.pending or manual:
            return bool(m.pending)
        if m.paused_until > self.now or len(m.batches) >= MAX_INFLIGHT:
            return False
        earliest = min(s % PRIORITY_SCORE_BASE + THRESHOLDS_MS[3 - s // PRIORITY_SCORE_BASE]
                       for s, _ in m.pending.values())
        return len(m.pending) >= THRESHOLD or earliest <= self.now

    # -- rules ----------------------------------------------------------------------------

    @rule(step=st.sampled_from(STEPS_MS))
    def advance_clock(self, step: int) -> None:
        self.now += step

    @rule(data=st.data())
    def enqueue(self, data: st.DataObject) -> None:
        chosen = data.draw(st.lists(st.tuples(st.sampled_from(POOL), st.integers(0, 2)),
                                    min_size=1, max_size=4))
        m, dups, accepted = self.m, [], 0
        for eid, prio in chosen:
            if eid in m.pending or eid in m.delayed or eid in dups or (
                    m.seen.get(eid, -WINDOW_MS - 1) >= self.now - WINDOW_MS):
                dups.append(eid)
                continue
            if eid in m.places():
                event("enqueue: re-sent while a copy is in flight or dead")
            m.pending[eid] = (score_of(prio, self.now), None)
            m.seen[eid] = self.now
            m.acked.discard(eid)
            m.counts["accepted"] += 1
            accepted += 1
        result = self.scripts.enqueue([entry(i, p) for i, p in chosen], now_ms=self.now)
        event(f"enqueue: accepted={accepted > 0} duplicate={bool(dups)}")
        assert (result.accepted, result.duplicate_ids, result.rejected_ids) == (
            accepted, dups, [])

    @rule(manual=st.sampled_from((True, True, False)))
    def flush(self, manual: bool) -> None:
        m = self.m
        self.made += 1
        bid = f"b{self.made}"
        due = self._flush_due(manual)
        decision = self.scripts.flush(bid, manual=manual, now_ms=self.now)
        assert (decision.batch is not None) == due, (decision, due)
        event(f"flush: {'batch' if due else 'none'}")
        if decision.batch is None:
            return
        record: Any = self.client.hgetall(self.keys.batch(bid))
        got = batch_entries(dict(record))
        assert len(got) == decision.batch.size == min(THRESHOLD, len(m.pending))
        held: dict[str, tuple[int, int]] = {}
        for eid, (score, prior, env) in got.items():
            mscore, mprior = m.pending.pop(eid)
            assert (score, prior) == (mscore, mprior or 0), eid
            assert env == envelope(eid, 3 - score // PRIORITY_SCORE_BASE)
            held[eid] = (score, prior)
        m.batches[bid] = Batch(held, self.now + DISPATCH_LEASE_MS)

    @precondition(lambda self: self._any(lambda b: b.status == "dispatched"))
    @rule(data=st.data())
    def claim(self, data: st.DataObject) -> None:
        bid, attempt = self._pick(data, lambda b: b.status == "dispatched")
        reply = self.scripts.claim(bid, attempt, now_ms=self.now)
        event(f"claim: {reply if isinstance(reply, str) else 'claimed'}")
        b = self._live(bid, attempt, "dispatched")
        if b is None:
            assert reply == ("gone" if bid not in self.m.batches else "stale")
            return
        assert isinstance(reply, BatchRecord) and set(batch_entries(reply)) == set(b.entries)
        b.status, b.lease = "claimed", self.now + JOB_LEASE_MS

    @precondition(lambda self: self._any(lambda b: b.status == "claimed"))
    @rule(data=st.data())
    def ack(self, data: st.DataObject) -> None:
        bid, attempt = self._pick(data, lambda b: b.status == "claimed")
        b, m = self._live(bid, attempt, "claimed"), self.m
        ids = sorted(b.entries) if b else ["a"]
        failed = {i: (f"error of {i}", data.draw(st.integers(0, 100_000)))
                  for i in data.draw(st.lists(st.sampled_from(ids), unique=True))}
        result = self.scripts.ack(bid, attempt, processing_ms=10, started_ms=self.now - 10,
                                  results={i: b"1" for i in ids}, failed=failed,
                                  now_ms=self.now)
        event(f"ack: {'stale' if b is None else 'ok'}")
        if b is None:
            assert result == AckResult(False)
            return
        counts = [0, 0, 0]
        self._retire(bid)
        for eid, (score, prior) in b.entries.items():
            total = prior + attempt - b.free
            if eid not in failed:
                counts[0] += 1
                if eid not in m.places():
                    m.acked.add(eid)
            elif total >= MAX_ATTEMPTS:
                m.to_dead(eid, "failed", score)
                counts[2] += 1
            elif eid in m.pending or eid in m.delayed:
                m.counts["purged"] += 1  # a re-sent copy is held again and carries the retry
                event("ack: failed copy superseded by a re-sent one")
            else:
                m.delayed[eid] = (self.now + failed[eid][1], score, total)
                counts[1] += 1
        m.counts["acked"] += counts[0]
        assert result == AckResult(True, *counts)
        event(f"ack: delayed={counts[1] > 0} dead={counts[2] > 0}")

    @precondition(lambda self: self._any(lambda b: b.status == "claimed"))
    @rule(data=st.data(), limited=st.sampled_from((False, False, True)),
          wait=st.integers(1, 100_000))
    def fail(self, data: st.DataObject, limited: bool, wait: int) -> None:
        bid, attempt = self._pick(data, lambda b: b.status == "claimed")
        until = self.now + wait if limited else 0
        outcome = self.scripts.fail(bid, attempt, 'boom "quoted" \\ ünïcode', backoff_ms=wait,
                                    rate_limited_until_ms=until, now_ms=self.now)
        event(f"fail: {outcome}")
        b, m = self._live(bid, attempt, "claimed"), self.m
        if b is None:
            assert outcome == "stale"
            return
        if limited:
            m.paused_until = max(m.paused_until, until)
            b.free, b.status, b.lease = b.free + 1, "retrying", until
            assert outcome == "rate_limited"
            return
        for eid, (score, prior) in list(b.entries.items()):
            if prior + attempt - b.free >= MAX_ATTEMPTS:
                m.to_dead(eid, "failed", score)
                del b.entries[eid]
                event("fail: an entry dead-lettered")
        if b.entries:
            b.status, b.lease = "retrying", self.now + wait
            assert outcome == "retrying"
        else:
            self._retire(bid)
            assert outcome == "dead"

    @precondition(lambda self: self._any(lambda b: b.lease <= self.now))
    @rule(data=st.data(), job_alive=st.booleans())
    def reap(self, data: st.DataObject, job_alive: bool) -> None:
        bid, attempt = self._pick(data, lambda b: b.lease <= self.now)
        got = self.scripts.redispatch(bid, attempt, job_alive=job_alive, now_ms=self.now)
        event(f"reap: {got.outcome}")
        b = self.m.batches.get(bid)
        if b is None or b.attempt != attempt or b.lease > self.now:
            assert got.outcome == "stale"
            return
        if b.status == "dispatched" and job_alive:
            expected = "extended"
        else:
            expected = {"dispatched": "lost", "claimed": "redelivered"}.get(b.status, "retry")
            b.free += expected == "lost"
            b.attempt, b.status = b.attempt + 1, "dispatched"
        b.lease = self.now + DISPATCH_LEASE_MS
        assert (got.outcome, got.attempt) == (expected, b.attempt)

    @precondition(lambda self: self.m.batches or self.retired)
    @rule(data=st.data(), kind=st.sampled_from(("claim", "ack", "fail", "reap")))
    def stray_reply(self, data: st.DataObject, kind: str) -> None:
        """A late, duplicate or misdirected call: refused unless it happens to be valid."""
        self.stray = True
        try:
            if kind == "fail":
                self.fail(data, data.draw(st.booleans()), data.draw(st.integers(1, 100_000)))
            elif kind == "reap":
                self.reap(data, data.draw(st.booleans()))
            else:
                getattr(self, kind)(data)
        finally:
            self.stray = False

    @precondition(lambda self: self.m.delayed)
    @rule()
    def promote(self) -> None:
        m = self.m
        due = sorted(i for i, (at, _s, _t) in m.delayed.items() if at <= self.now)
        assert self.scripts.promote(now_ms=self.now) == len(due)
        event(f"promote: {bool(due)}")
        for eid in due:
            _at, score, total = m.delayed.pop(eid)
            m.pending[eid] = (score, total)

    @precondition(lambda self: self.m.pending)
    @rule()
    def expire(self) -> None:
        m = self.m
        old = [i for i, (s, _) in m.pending.items()
               if s % PRIORITY_SCORE_BASE <= self.now - MAX_AGE_MS]
        assert self.scripts.expire(now_ms=self.now) == len(old)
        event(f"expire: {bool(old)}")
        for eid in old:
            m.to_dead(eid, "expired", m.pending.pop(eid)[0])

    @precondition(lambda self: self.m.dead)
    @rule(data=st.data(), purge=st.booleans())
    def requeue(self, data: st.DataObject, purge: bool) -> None:
        m = self.m
        ids = data.draw(st.lists(st.sampled_from([*sorted(m.dead), "nobody"]), min_size=1,
                                 unique=True))
        expected = [0, 0, 0]
        for eid in ids:
            if eid not in m.dead:
                expected[2] += 1
                continue
            _reason, score = m.dead.pop(eid)
            if purge or eid in m.pending or eid in m.delayed:
                expected[1] += 1
                m.counts["purged"] += 1
            else:
                m.pending[eid] = (score, None)
                expected[0] += 1
        assert list(self.scripts.requeue(ids, purge=purge)) == expected
        event(f"requeue: moved={expected[0] > 0} purged={expected[1] > 0}")

    # -- the checks -----------------------------------------------------------------------

    def _zset(self, key: str) -> dict[str, int]:
        raw: Any = self.client.zrange(key, 0, -1, withscores=True)
        return {bytes(i).decode(): int(s) for i, s in raw}

    def _hash(self, key: str) -> dict[str, bytes]:
        raw: Any = self.client.hgetall(key)
        return {bytes(f).decode(): bytes(v) for f, v in raw.items()}

    @invariant()
    def redis_agrees_with_the_model(self) -> None:
        c, k, m = self.client, self.keys, self.m
        assert_consistent(c, k)
        assert self._zset(k.pending) == {i: s for i, (s, _) in m.pending.items()}
        assert self._zset(k.delayed) == {i: at for i, (at, _s, _t) in m.delayed.items()}
        assert {i: int(v) for i, v in self._hash(k.delayed_score).items()} == {
            i: s for i, (_at, s, _t) in m.delayed.items()}
        assert {i: int(v) for i, v in self._hash(k.attempts).items()} == {
            **{i: p for i, (_s, p) in m.pending.items() if p is not None},
            **{i: t for i, (_at, _s, t) in m.delayed.items()}}
        places: dict[str, list[str]] = {}
        held = [(i, "pending") for i in self._zset(k.pending)]
        held += [(i, "delayed") for i in self._zset(k.delayed)]
        held += self._batches_agree() + [(i, "dead") for i in self._dead_agrees()]
        for eid, place in held:
            places.setdefault(eid, []).append(place)
        # the model puts an id in two places only when a producer re-sent it, after the seen
        # window, while its first copy was in flight or dead; pending and delayed (one payload
        # per id) never hold it together
        assert {i: sorted(p) for i, p in places.items()} == m.places()
        assert all(not {"pending", "delayed"} <= set(p) for p in places.values())
        assert not m.acked & set(places), "an acked id came back without being re-enqueued"
        stats = self._hash(k.stats)
        assert {n: _int(stats.get(n)) for n in m.counts} == m.counts
        assert _int(c.hget(k.state, "paused_until_ms")) == m.paused_until

    def _batches_agree(self) -> list[tuple[str, str]]:
        """Check every batch record against the model; return (id, place) of what they hold."""
        k, m = self.keys, self.m
        leases = self._zset(k.inflight)
        assert set(leases) == set(m.batches)
        held = []
        for bid, b in m.batches.items():
            record = self._hash(k.batch(bid))
            meta = (record["status"].decode(), int(record["attempt"]), int(record["free"]),
                    int(record["n"]), leases[bid])
            assert meta == (b.status, b.attempt, b.free, len(b.entries), b.lease), bid
            got = batch_entries({f.encode(): v for f, v in record.items()})
            assert {i: (s, p) for i, (s, p, _env) in got.items()} == b.entries, bid
            held += [(i, f"batch {bid}") for i in got]
        return held

    def _dead_agrees(self) -> list[str]:
        k, m = self.keys, self.m
        records = self._hash(k.dead_payloads)
        assert set(self._zset(k.dead)) == set(records) == set(m.dead)
        for eid, raw in records.items():
            record = orjson.loads(raw)
            assert (record["reason"], record["score"]) == m.dead[eid], eid
            assert record["envelope"]["id"] == eid
        return list(records)


@pytest.mark.real
def test_every_step_of_every_script_keeps_the_invariants_and_matches_the_model(
    real_redis: redis_py.Redis,
) -> None:
    # the factory form hands the machine its client; hypothesis types it as a class
    factory: Any = lambda: QueueMachine(real_redis)  # noqa: E731
    run_state_machine_as_test(factory, settings=PROFILE)


# -- minimal examples of the two script faults the state machine found -----------------------


def test_a_failed_copy_of_an_id_that_was_resent_does_not_overwrite_the_pending_one(
    redis: redis_py.Redis,
) -> None:
    s = Scripts(redis, make_config(dedupe_window_seconds=60))
    s.enqueue([entry("a")], now_ms=T_START)
    s.flush("b1", manual=True, now_ms=T_START)
    s.claim("b1", 1, now_ms=T_START)
    # the producer re-sends "a" after the seen window; the batch then fails it
    assert s.enqueue([entry("a")], now_ms=T_START + 120_000).accepted == 1
    got = s.ack("b1", 1, processing_ms=1, started_ms=T_START, results={},
                failed={"a": ("boom", 1000)}, now_ms=T_START + 120_000)
    assert got == AckResult(True, 0, 0, 0)
    assert redis.zcard(s.keys.delayed) == 0 and redis.zcard(s.keys.pending) == 1
    assert redis.hget(s.keys.stats, "purged") == b"1"
    assert_consistent(redis, s.keys)


def test_a_second_dead_record_of_one_id_counts_the_first_as_purged(
    redis: redis_py.Redis,
) -> None:
    s = Scripts(redis, make_config(dedupe_window_seconds=60, max_buffer_age_seconds=300))
    s.enqueue([entry("a")], now_ms=T_START)
    assert s.expire(now_ms=T_START + 400_000) == 1
    assert s.enqueue([entry("a")], now_ms=T_START + 400_000).accepted == 1
    assert s.expire(now_ms=T_START + 800_001) == 1
    assert redis.zcard(s.keys.dead) == 1 and redis.hget(s.keys.stats, "purged") == b"1"
    assert_consistent(redis, s.keys)
