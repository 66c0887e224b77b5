"""The guarantee of DESIGN §3 ("nothing lost"), checked straight from Redis after a test."""

from __future__ import annotations

from typing import Any

import redis as redis_py

from batcher.keys import QueueKeys


def _ids(members: Any) -> set[bytes]:
    # redis-py's reply types are a union; this client has decode_responses=False
    return {bytes(m) for m in members}


def _count(client: redis_py.Redis, key: str, field: str) -> int:
    value = client.hget(key, field)
    return 0 if value is None else int(value)


def inflight_entries(client: redis_py.Redis, keys: QueueKeys) -> int:
    """Entries held by batch records (dispatched, claimed or retrying)."""
    total = 0
    for batch_key in client.scan_iter(match=f"{keys.base}:batch:*", count=500):
        total += sum(1 for f in _ids(client.hkeys(batch_key)) if f.startswith(b"e:"))
    return total


def _assert_source_lists(client: redis_py.Redis, keys: QueueKeys, pending: set[bytes]) -> None:
    """Fair share (issue 17): every pending id is in exactly one source list, and a source is
    in its class's active set exactly when its list is not empty."""
    listed: list[bytes] = []
    nonempty: set[bytes] = set()
    for list_key in client.scan_iter(match=f"{keys.source_prefix}*", count=500):
        members = [bytes(m) for m in client.lrange(list_key, 0, -1)]
        listed += members
        if members:
            nonempty.add(bytes(list_key))
    assert sorted(listed) == sorted(pending), "source lists and pending disagree"
    active = {
        keys.source_list(p, m.decode()).encode()
        for p in (0, 1, 2) for m in _ids(client.zrange(keys.active(p), 0, -1))
    }
    assert active == nonempty, f"active sources {active} != non-empty lists {nonempty}"


def assert_consistent(client: redis_py.Redis, keys: QueueKeys) -> None:
    """Every accepted entry is in exactly one place, and the byte gauge is right.

    pending ∪ delayed = payload ids (disjoint); state ``bytes`` = the sum of the pending
    envelopes' sizes; ``accepted`` = pending + delayed + in-flight entries + dead + acked
    + purged; every in-flight batch has a record and every record a lease.
    """
    pending = _ids(client.zrange(keys.pending, 0, -1))
    delayed = _ids(client.zrange(keys.delayed, 0, -1))
    payload_ids = _ids(client.hkeys(keys.payloads))
    assert not pending & delayed, f"pending and delayed overlap: {pending & delayed}"
    assert pending | delayed == payload_ids, (
        f"payload ids {payload_ids} != pending {pending} ∪ delayed {delayed}"
    )
    assert set(client.hkeys(keys.delayed_score)) == delayed

    _assert_source_lists(client, keys, pending)

    pending_bytes = sum(client.hstrlen(keys.payloads, i) for i in pending)
    assert _count(client, keys.state, "bytes") == pending_bytes, "byte gauge drifted"

    dead = client.zcard(keys.dead)
    assert client.hlen(keys.dead_payloads) == dead
    held = (
        len(pending) + len(delayed) + inflight_entries(client, keys) + dead
        + _count(client, keys.stats, "acked") + _count(client, keys.stats, "purged")
    )
    assert _count(client, keys.stats, "accepted") == held, "an accepted entry is unaccounted"

    leased = {m.decode() for m in _ids(client.zrange(keys.inflight, 0, -1))}
    records = {
        k.decode().rsplit(":", 1)[1]
        for k in client.scan_iter(match=f"{keys.base}:batch:*", count=500)
    }
    assert leased == records, f"in-flight leases {leased} != batch records {records}"
