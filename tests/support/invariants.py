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
    active: set[bytes] = set()
    for akey in client.scan_iter(match=f"{keys.base}:active:*", count=500):
        parts = bytes(akey).decode().rsplit(":active:", 1)[1].split(":", 1)
        for m in _ids(client.zrange(akey, 0, -1)):
            if len(parts) == 1:  # active:<p>: the entries without a batch key
                active.add(keys.source_list(int(parts[0]), m.decode()).encode())
            else:  # active:<p>:<key>
                active.add(f"{keys.source_prefix}k:{parts[1]}:{parts[0]}:{m.decode()}".encode())
    assert active == nonempty, f"active sources {active} != non-empty lists {nonempty}"
    _assert_batch_keys(client, keys, pending)


def _assert_batch_keys(client: redis_py.Redis, keys: QueueKeys, pending: set[bytes]) -> None:
    """Each batch key's ZSET holds exactly its pending entries, counted in batchkeys/keyed."""
    keyed: dict[str, set[bytes]] = {}
    for entry_id in pending:
        env = client.hget(keys.payloads, entry_id) or b""
        if env.startswith(b'{"g":') and b',"k":"' in env.split(b',"id":', 1)[0]:
            key = env.split(b',"k":"', 1)[1].split(b'"', 1)[0].decode()
            keyed.setdefault(key, set()).add(entry_id)
    held = {}
    for zkey in client.scan_iter(match=f"{keys.batch_key_prefix}*", count=500):
        name = bytes(zkey).decode().removeprefix(keys.batch_key_prefix)
        held[name] = _ids(client.zrange(zkey, 0, -1))
    assert {k: v for k, v in held.items() if v} == keyed, "batch key sets and pending disagree"
    sizes = {m.decode(): int(s) for m, s in client.zrange(keys.batch_keys, 0, -1,
                                                          withscores=True)}
    assert {k: v for k, v in sizes.items() if v} == {k: len(v) for k, v in keyed.items()}
    assert _count(client, keys.state, "keyed") == sum(len(v) for v in keyed.values())


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
