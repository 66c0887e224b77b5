"""``batcher check``: the invariants and preconditions of DESIGN §3 "Guarantee", read from Redis.

Every accepted entry is in exactly one of pending, delayed, an in-flight batch, dead, acked or
purged. The check walks big sets in windows (ZRANGE by rank, HSCAN, SCAN) with pipelined
look-ups, never holding a set of ids in memory nor blocking the server with one huge reply, so
it runs against queues of millions of entries. It reads without a transaction: run it on a
quiet queue (no coordinator or workers) for an exact answer.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import redis

from batcher.config import BatchProcessingConfig
from batcher.keys import QueueKeys
from batcher.records import META_FIELDS, BatchRecord, BatchStatus

# a damaged or foreign record may hold anything else
BATCH_STATUSES = frozenset(s.value for s in BatchStatus)

WINDOW = 1000
_EXAMPLES = 5  # ids quoted in a problem line


@dataclass
class CheckReport:
    """``ok`` when no invariant or precondition broke; each problem names it with the numbers."""

    problems: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


def _config_get(client: redis.Redis, name: str) -> str | None:
    try:
        reply = cast(dict[bytes | str, bytes | str], client.config_get(name))
    except redis.ResponseError:
        # managed services rename or disable CONFIG
        return None
    for key, value in reply.items():
        if (key.decode() if isinstance(key, bytes) else key) == name:
            return value.decode() if isinstance(value, bytes) else value
    return None


def eviction_policy(client: redis.Redis) -> str | None:
    """The server's ``maxmemory-policy``, or None when CONFIG is not allowed."""
    return _config_get(client, "maxmemory-policy")


def aof_state(client: redis.Redis) -> dict[str, str]:
    """``appendonly`` and ``appendfsync`` ("unknown" when CONFIG is not allowed)."""
    appendonly = _config_get(client, "appendonly")
    if appendonly is None:
        info = client.info("persistence")
        if "aof_enabled" in info:
            appendonly = "yes" if int(info["aof_enabled"]) else "no"
    return {"appendonly": appendonly or "unknown",
            "appendfsync": _config_get(client, "appendfsync") or "unknown"}


def _zset_windows(client: redis.Redis, key: str) -> Iterator[list[bytes]]:
    # rank windows rather than ZSCAN: no id is seen twice on a set that is not changing
    start = 0
    while True:
        ids = cast(list[bytes], client.zrange(key, start, start + WINDOW - 1))
        if not ids:
            return
        yield ids
        start += WINDOW


def _hash_windows(client: redis.Redis, key: str) -> Iterator[list[bytes]]:
    cursor = 0
    while True:
        # not NOVALUES: Redis 6.2 (the embedded fallback) lacks it
        cursor, fields = cast(tuple[int, dict[bytes, bytes]],
                              client.hscan(key, cursor, count=WINDOW))
        if fields:
            yield list(fields)
        if cursor == 0:
            return


def _show(ids: list[bytes]) -> str:
    shown = ", ".join(repr(i.decode(errors="replace")) for i in ids[:_EXAMPLES])
    return shown + (", ..." if len(ids) > _EXAMPLES else "")


def _int(value: Any) -> int:
    return 0 if value is None else int(float(value))


class _Checker:
    def __init__(self, client: redis.Redis, config: BatchProcessingConfig):
        self.client = client
        self.config = config
        self.k = QueueKeys(config.queue)
        self.report = CheckReport()

    def problem(self, text: str) -> None:
        self.report.problems.append(text)

    def run(self) -> CheckReport:
        self.preconditions()
        self.pending_and_delayed()
        self.attempts()
        inflight_entries = self.inflight()
        self.dead()
        self.accounting(inflight_entries)
        return self.report

    def preconditions(self) -> None:
        policy = eviction_policy(self.client)
        self.report.facts["maxmemory_policy"] = policy or "unknown"
        self.report.facts.update({f"aof_{k}": v for k, v in aof_state(self.client).items()})
        if policy is not None and policy != "noeviction":
            self.problem(f"maxmemory-policy is {policy!r}, not 'noeviction': Redis may evict "
                         "pending entries under memory pressure")

    def pending_and_delayed(self) -> None:
        c, k = self.client, self.k
        pending_n, delayed_n = c.zcard(k.pending), c.zcard(k.delayed)
        payloads_n, scores_n = c.hlen(k.payloads), c.hlen(k.delayed_score)
        pending_bytes, no_payload, both = self._walk_pending()
        delayed_no_payload, no_score = self._walk_delayed()
        no_payload += delayed_no_payload
        self.report.facts.update(pending=pending_n, delayed=delayed_n, payloads=payloads_n,
                                 pending_bytes=pending_bytes)
        if no_payload:
            self.problem(f"{len(no_payload)} pending/delayed ids have no payload: "
                         f"{_show(no_payload)}")
        if both:
            self.problem(f"{len(both)} ids are both pending and delayed: {_show(both)}")
        if no_score:
            self.problem(f"{len(no_score)} delayed ids have no delayed:score: {_show(no_score)}")
        if scores_n != delayed_n - len(no_score):
            self.problem(f"delayed:score holds {scores_n} ids, delayed {delayed_n}")
        held = pending_n + delayed_n - len(both) - len(no_payload)
        if payloads_n != held:
            orphans = self._orphan_payloads()
            self.problem(f"payloads holds {payloads_n} ids but pending ∪ delayed has {held} with "
                         f"a payload; {len(orphans)} payloads are in neither: {_show(orphans)}")
        gauge = _int(c.hget(k.state, "bytes"))
        if gauge != pending_bytes:
            self.problem(f"pending bytes gauge (state 'bytes') is {gauge}, but the pending "
                         f"payloads add up to {pending_bytes}")

    def _walk_pending(self) -> tuple[int, list[bytes], list[bytes]]:
        """(sum of pending payload sizes, ids without a payload, ids also delayed)."""
        c, k = self.client, self.k
        pending_bytes, no_payload, both = 0, [], []
        for ids in _zset_windows(c, k.pending):
            pipe = c.pipeline(transaction=False)
            for i in ids:
                pipe.hstrlen(k.payloads, i)
                pipe.zscore(k.delayed, i)
            replies = pipe.execute()
            for i, size, in_delayed in zip(ids, replies[::2], replies[1::2], strict=True):
                pending_bytes += int(size)
                if size == 0:
                    no_payload.append(i)
                if in_delayed is not None:
                    both.append(i)
        return pending_bytes, no_payload, both

    def _walk_delayed(self) -> tuple[list[bytes], list[bytes]]:
        """(delayed ids without a payload, delayed ids without their kept pending score)."""
        c, k = self.client, self.k
        no_payload, no_score = [], []
        for ids in _zset_windows(c, k.delayed):
            pipe = c.pipeline(transaction=False)
            for i in ids:
                pipe.hexists(k.payloads, i)
                pipe.hexists(k.delayed_score, i)
            replies = pipe.execute()
            for i, has_payload, has_score in zip(ids, replies[::2], replies[1::2], strict=True):
                if not has_payload:
                    no_payload.append(i)
                if not has_score:
                    no_score.append(i)
        return no_payload, no_score

    def _orphan_payloads(self) -> list[bytes]:
        return self._neither_pending_nor_delayed(self.k.payloads)

    def _neither_pending_nor_delayed(self, hash_key: str) -> list[bytes]:
        """Fields of ``hash_key`` whose id is in neither pending nor delayed."""
        c, k = self.client, self.k
        stray: list[bytes] = []
        for ids in _hash_windows(c, hash_key):
            pipe = c.pipeline(transaction=False)
            for i in ids:
                pipe.zscore(k.pending, i)
                pipe.zscore(k.delayed, i)
            replies = pipe.execute()
            stray += [i for i, p, d in zip(ids, replies[::2], replies[1::2], strict=True)
                      if p is None and d is None]
        return stray

    def attempts(self) -> None:
        c, k = self.client, self.k
        stray = self._neither_pending_nor_delayed(k.attempts)
        self.report.facts["attempts"] = c.hlen(k.attempts)
        if stray:
            self.problem(f"{len(stray)} ids in attempts are neither pending nor delayed: "
                         f"{_show(stray)}")

    def inflight(self) -> int:
        """Check leases against batch records; return the entries the records hold."""
        c, k = self.client, self.k
        no_record: list[bytes] = []
        bad_status: list[str] = []
        for ids in _zset_windows(c, k.inflight):
            pipe = c.pipeline(transaction=False)
            for i in ids:
                pipe.hmget(k.batch(i.decode()), META_FIELDS)
            for i, meta in zip(ids, pipe.execute(), strict=True):
                record = BatchRecord.from_meta(i.decode(), meta)
                if record is None:
                    no_record.append(i)
                elif record.status not in BATCH_STATUSES:
                    bad_status.append(f"{record.id}={record.status}")
        prefix = k.batch("")
        entries = records = 0
        no_lease: list[bytes] = []
        for key in c.scan_iter(match=k.batch("*"), count=WINDOW):
            records += 1
            batch_id = cast(bytes, key)[len(prefix):]
            pipe = c.pipeline(transaction=False)
            pipe.zscore(k.inflight, batch_id)
            pipe.hmget(key, META_FIELDS)
            lease, meta = pipe.execute()
            record = BatchRecord.from_meta(batch_id.decode(), meta)
            entries += 0 if record is None else record.size
            if lease is None:
                no_lease.append(batch_id)
        self.report.facts.update(inflight_batches=c.zcard(k.inflight), batch_records=records,
                                 inflight_entries=entries)
        if no_record:
            self.problem(f"{len(no_record)} in-flight batches have no batch record: "
                         f"{_show(no_record)}")
        if bad_status:
            self.problem(f"{len(bad_status)} batch records have an invalid status: "
                         + ", ".join(bad_status[:_EXAMPLES]))
        if no_lease:
            self.problem(f"{len(no_lease)} batch records are not in flight (no lease): "
                         f"{_show(no_lease)}")
        return entries

    def dead(self) -> None:
        c, k = self.client, self.k
        dead_n, records_n = c.zcard(k.dead), c.hlen(k.dead_payloads)
        missing: list[bytes] = []
        for ids in _zset_windows(c, k.dead):
            pipe = c.pipeline(transaction=False)
            for i in ids:
                pipe.hexists(k.dead_payloads, i)
            missing += [i for i, ok in zip(ids, pipe.execute(), strict=True) if not ok]
        self.report.facts.update(dead=dead_n, dead_records=records_n)
        if missing:
            self.problem(f"{len(missing)} dead ids have no dead:payloads record: "
                         f"{_show(missing)}")
        if records_n != dead_n - len(missing):
            self.problem(f"dead:payloads holds {records_n} records for {dead_n} dead ids")

    def accounting(self, inflight_entries: int) -> None:
        f = self.report.facts
        raw = cast(list[bytes | None], self.client.hmget(self.k.counters, "accepted", "acked",
                                                         "purged"))
        accepted, acked, purged = (_int(v) for v in raw)
        f.update(accepted=accepted, acked=acked, purged=purged)
        held = f["pending"] + f["delayed"] + inflight_entries + f["dead"] + acked + purged
        if accepted != held:
            self.problem(
                f"accepted ({accepted}) != pending ({f['pending']}) + delayed ({f['delayed']}) + "
                f"in flight ({inflight_entries}) + dead ({f['dead']}) + acked ({acked}) + "
                f"purged ({purged}) = {held}: {abs(accepted - held)} entries "
                + ("unaccounted for" if accepted > held else "counted twice"))


def check_queue(client: redis.Redis, config: BatchProcessingConfig) -> CheckReport:
    """Verify every invariant of DESIGN §3 and the server's preconditions for ``config.queue``.

    A sharded queue is checked shard by shard: its facts are the shards' summed (and one
    ``shard[Q~i]`` line each), every problem names its shard.

    Raises redis-py's errors (``ConnectionError`` when the server is unreachable).
    """
    from batcher.shards import queues_of

    queues = queues_of(client, config)
    if len(queues) == 1:
        return _Checker(client, config).run()
    report = CheckReport()
    for shard_client, shard in queues:
        part = _Checker(shard_client, shard).run()
        report.problems += [f"shard {shard.queue!r}: {p}" for p in part.problems]
        for name, value in part.facts.items():
            if isinstance(value, int) and not isinstance(value, bool):
                report.facts[name] = report.facts.get(name, 0) + value
            else:
                report.facts.setdefault(name, value)
        report.facts[f"shard[{shard.queue}]"] = " ".join(
            f"{k}={part.facts[k]}" for k in _SHARD_FACTS if k in part.facts)
    report.facts["shards"] = len(queues)
    return report


_SHARD_FACTS = ("pending", "delayed", "inflight_batches", "dead", "accepted", "acked")
