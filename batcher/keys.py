"""Every Redis key name redis-batcher uses, built in one place.

All keys of queue ``Q`` carry the hash tag ``{Q}`` so that one queue lives in
one Cluster slot and every Lua script touches a single slot.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

QUEUE_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# shard i of a sharded queue Q is the queue ``Q~i`` (its own hash tag, so its own slot);
# only the batcher names shards: users name queues by QUEUE_NAME_RE
SHARD_SEP = "~"
SHARD_NAME_RE = re.compile(r"^([A-Za-z0-9_-]{1,64})~(0|[1-9][0-9]{0,3})$")
MAX_SHARDS = 1024
BATCH_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
PREFIX = "batcher"
RQ_PREFIX = "batcher."

# priority -> suffix of the RQ queue that carries batches whose best entry has it
_RQ_SUFFIX = {0: "", 1: ".high", 2: ".urgent"}

HISTOGRAMS = ("processing_ms", "queue_wait_ms", "end_to_end_ms")


BUDGET_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def validate_budget_name(name: str) -> str:
    """Return ``name`` unchanged, or raise ``ValueError`` naming the rule."""
    if not BUDGET_NAME_RE.match(name):
        raise ValueError(f"budget name {name!r} must match [A-Za-z0-9_.-]{{1,64}}")
    return name


def budget_key(name: str) -> str:
    """The HASH of one budget (token buckets shared by every queue and worker using it)."""
    return f"{PREFIX}:budget:{{{name}}}"


def validate_queue_name(queue: str) -> str:
    """Return ``queue`` unchanged, or raise ``ValueError`` naming the rule. A shard's name
    (``Q~i``, made by :func:`shard_name`) is a queue name too."""
    if not QUEUE_NAME_RE.match(queue) and not SHARD_NAME_RE.match(queue):
        raise ValueError(f"queue name {queue!r} must match [A-Za-z0-9_-]{{1,64}}")
    return queue


def shard_name(queue: str, index: int) -> str:
    """The queue that holds shard ``index`` of ``queue``: ``Q~i``."""
    return f"{queue}{SHARD_SEP}{index}"


def shard_names(queue: str, shards: int) -> list[str]:
    """Every queue of ``queue`` split in ``shards`` (just ``[queue]`` when not sharded)."""
    if shards <= 1:
        return [queue]
    return [shard_name(queue, i) for i in range(shards)]


def split_shard(name: str) -> tuple[str, int | None]:
    """``('Q', i)`` for a shard's queue ``Q~i``; ``(name, None)`` for any other queue."""
    match = SHARD_NAME_RE.match(name)
    if match is None:
        return name, None
    return match.group(1), int(match.group(2))


@dataclass(frozen=True, slots=True)
class QueueKeys:
    """The key names of one queue (DESIGN §2)."""

    queue: str
    base: str = field(init=False)
    pending: str = field(init=False)
    payloads: str = field(init=False)
    attempts: str = field(init=False)
    delayed: str = field(init=False)
    delayed_score: str = field(init=False)
    state: str = field(init=False)
    wakeup: str = field(init=False)
    room: str = field(init=False)
    inflight: str = field(init=False)
    seen: str = field(init=False)
    dead: str = field(init=False)
    dead_payloads: str = field(init=False)
    # the counters every process adds to (accepted, acked, flushes:<reason>, ...); its Redis
    # name stays 'stats' so an upgraded queue keeps its figures
    counters: str = field(init=False)
    samples: str = field(init=False)
    events: str = field(init=False)
    throughput: str = field(init=False)
    weights: str = field(init=False)
    source_prefix: str = field(init=False)
    batch_keys: str = field(init=False)
    batch_key_prefix: str = field(init=False)
    # the shared feed schedule of `batcher fetch` (batcher/feeds/schedule.py)
    fetch_due: str = field(init=False)
    fetch_claims: str = field(init=False)
    fetch_totals: str = field(init=False)
    fetch_failing: str = field(init=False)
    fetch_host_until: str = field(init=False)
    fetch_host_failures: str = field(init=False)

    def __post_init__(self) -> None:
        validate_queue_name(self.queue)
        base = f"{PREFIX}:{{{self.queue}}}"
        set_ = object.__setattr__
        set_(self, "base", base)
        for kind in (
            "pending", "payloads", "attempts", "delayed", "state", "wakeup", "room",
            "inflight", "seen", "dead", "samples", "events", "throughput", "weights",
        ):
            set_(self, kind, f"{base}:{kind}")
        set_(self, "counters", f"{base}:stats")
        set_(self, "delayed_score", f"{base}:delayed:score")
        set_(self, "dead_payloads", f"{base}:dead:payloads")
        set_(self, "source_prefix", f"{base}:src:")
        set_(self, "batch_keys", f"{base}:batchkeys")
        set_(self, "batch_key_prefix", f"{base}:k:")
        for kind in ("due", "claims", "totals", "failing", "host_until", "host_failures"):
            set_(self, f"fetch_{kind}", f"{base}:fetch:{kind.replace('_', ':')}")

    @property
    def stats(self) -> str:
        """The earlier name of :attr:`counters` (the same key), kept for callers of 0.x."""
        return self.counters

    def active(self, priority: int) -> str:
        """ZSET of the source groups with entries pending at ``priority``: group -> tag."""
        return f"{self.base}:active:{priority}"

    def actives(self) -> list[str]:
        return [self.active(0), self.active(1), self.active(2)]

    def source_list(self, priority: int, group: str) -> str:
        """LIST of one source group's pending ids at ``priority``, oldest first. The scripts
        build this name from :attr:`source_prefix` (one key per source cannot be in KEYS)."""
        return f"{self.source_prefix}{priority}:{group}"
    def batch(self, batch_id: str) -> str:
        return f"{self.base}:batch:{batch_id}"

    def result(self, entry_id: str) -> str:
        return f"{self.base}:result:{entry_id}"

    def fetch_feed(self, url: str) -> str:
        """One feed's HASH: its config, validators, counters and last outcome."""
        return f"{self.base}:fetch:feed:{hashlib.sha256(url.encode()).hexdigest()[:24]}"

    def hist(self, name: str) -> str:
        return f"{self.base}:hist:{name}"

    def fixed(self) -> list[str]:
        """Every key of the queue that is not per batch, entry or histogram."""
        return [
            self.pending, self.payloads, self.attempts, self.delayed, self.delayed_score,
            self.state, self.wakeup, self.room, self.inflight, self.seen, self.dead,
            self.dead_payloads, self.counters, self.samples, self.events, self.throughput,
            self.weights, *self.actives(), self.batch_keys,
        ]

    def scan_pattern(self) -> str:
        # '{' and '}' are not glob specials, but '[' would be; queue names exclude it
        return f"{self.base}:*"

    def rq_queue(self, priority: int) -> str:
        """The RQ queue name for a batch whose best priority is ``priority``."""
        return f"{RQ_PREFIX}{self.queue}{_RQ_SUFFIX[priority]}"

    def rq_queues_by_urgency(self) -> list[str]:
        """RQ queue names in the order workers listen: urgent, high, normal."""
        return [self.rq_queue(2), self.rq_queue(1), self.rq_queue(0)]
