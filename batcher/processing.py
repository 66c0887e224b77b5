"""One attempt of one batch on a worker: claim it, call the handler once, ack or fail it.

RQ-free: ``batcher.rq.task.process_batch`` calls :func:`run_batch` for a job, with the claim
the worker made in the job's start transaction; ``batcher.testing`` calls it directly.
"""

from __future__ import annotations

import importlib
import random
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import orjson
import redis
import structlog

from batcher import budget_guard, tracing
from batcher.backoff import retry_on_fault
from batcher.budget import Budget
from batcher.config import BatchProcessingConfig
from batcher.errors import QueuePaused, RateLimited, ReplicaAckError
from batcher.models import Batch, BatchOutcome
from batcher.records import AckResult, BatchRecord, ClaimRefused
from batcher.redaction import scrub
from batcher.scripts import Scripts
from batcher.settings_file import config_for_queue

log = structlog.stdlib.get_logger(__name__)

Handler = Callable[[Batch], Any]
T = TypeVar("T")
# a failed ack is retried this many times (seconds between); enqueue-by-id idempotence is not
# needed here: ack.lua refuses a second ack of the same attempt
ACK_RETRY_DELAYS_SECONDS = (0.1, 0.3, 1.0, 2.0, 5.0)


@dataclass
class WorkerContext:
    config: BatchProcessingConfig
    client: redis.Redis
    scripts: Scripts
    handler: Handler
    warned_handler: bool = False


_CONTEXTS: dict[str, WorkerContext] = {}


def load_handler(path: str) -> Handler:
    """Import ``module:function`` (or ``module:Class.method``)."""
    module_name, _, attr = path.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"handler {path!r} is not callable")
    return obj  # type: ignore[no-any-return]


def context(queue: str, client: redis.Redis | None = None) -> WorkerContext:
    """The per-process connection, scripts and handler, kept warm across jobs.

    ``client`` is the RQ worker's own connection when there is one: a forked job horse then
    opens one connection per job, not two. Not when RQ has a Redis of its own
    (BATCH_RQ_REDIS_URL): the batcher's keys get their own client then.
    """
    ctx = _CONTEXTS.get(queue)
    if ctx is None:
        # the queue's own settings: BATCH_* plus its table of BATCH_SETTINGS_FILE, if any
        config = config_for_queue(queue)
        if config.rq_apart:
            client = config.redis_client(oom_tolerant=True)  # a daemon's, as the CLI's
        elif client is None:
            client = config.redis_client()
        ctx = WorkerContext(config, client, Scripts(client, config), load_handler(config.handler))
        _CONTEXTS[queue] = ctx
        if config.budget:
            budget_guard.bind(Budget(client, config.budget))
    return ctx


def follow_moved_slots() -> None:
    """In a forking worker's parent after a job: the queues' clients pinned to a Redis
    Cluster slot follow its owner (``SlotPool.recheck``), since a horse that met a failover
    updated only its own copy of the slot map. Nothing for a standalone Redis."""
    for ctx in _CONTEXTS.values():
        recheck = getattr(ctx.client.connection_pool, "recheck", None)
        if recheck is not None:
            recheck()


# ack.lua's back-off for an entry that goes to the dead set at once (BatchOutcome.rejected)
DEAD_NOW_BACKOFF_MS = -1
_USAGE_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")


def _split_outcome(
    batch: Batch, outcome: Any, config: BatchProcessingConfig
) -> tuple[dict[str, bytes], dict[str, tuple[str, int]]]:
    results: Mapping[str, Any]
    failed_in: Mapping[str, str] = {}
    rejected: Mapping[str, str] = {}
    if outcome is None:
        results = {}
    elif isinstance(outcome, BatchOutcome):
        results, failed_in, rejected = outcome.results, outcome.failed, outcome.rejected
    elif isinstance(outcome, Mapping):
        results = outcome
    else:
        raise TypeError(f"handler returned {type(outcome).__name__}; expected a mapping id -> "
                        "result, a BatchOutcome or None")
    ids = {e.id: e for e in batch.entries}
    encoded = {k: orjson.dumps(v) for k, v in results.items() if k in ids}
    failed = {
        k: (scrub(str(err)), backoff_ms(config, ids[k].attempts + 1))
        for k, err in failed_in.items() if k in ids
    }
    failed.update({k: (scrub(str(err)), DEAD_NOW_BACKOFF_MS)
                   for k, err in rejected.items() if k in ids})
    return encoded, failed


def _record_usage(ctx: WorkerContext, outcome: Any) -> None:
    """Add a handler's usage figures (LLM tokens, cost) to the stats hash; advisory."""
    usage = outcome.usage if isinstance(outcome, BatchOutcome) else None
    if not usage:
        return
    pipe = ctx.client.pipeline(transaction=False)
    for name, value in usage.items():
        if _USAGE_NAME.fullmatch(name) and value:
            pipe.hincrbyfloat(ctx.config.keys.counters, name, float(value))
    try:
        pipe.execute()
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        log.warning("batch.usage_not_recorded", queue=ctx.config.queue, error=str(exc))


def backoff_ms(config: BatchProcessingConfig, calls: int) -> int:
    """Exponential back-off with jitter: base × 2^(calls-1) × U(0.5, 1.5)."""
    base = config.retry_backoff_seconds * 1000 * 2 ** max(0, calls - 1)
    return int(min(base, 3_600_000) * random.uniform(0.5, 1.5))


def new_claimant() -> str:
    """A token for one run of one job's claim, kept by every retry of it (see claim.lua)."""
    return secrets.token_hex(8)


def run_batch(ctx: WorkerContext, batch_id: str, attempt: int,
              claimed: BatchRecord | ClaimRefused | None = None,
              claimant: str | None = None) -> dict[str, Any]:
    """Claim ``batch_id``'s ``attempt`` (unless ``claimed`` is that claim's outcome, made
    already, by ``claimant``), call the handler once, ack or fail it. Returns the status RQ
    keeps as a result."""
    queue = ctx.config.queue
    record = claimed
    if record is None:
        # one token for every retry: a retry after a lost reply gets the record back, so the
        # batch runs now instead of waiting a whole lease for the reaper
        token = claimant or new_claimant()
        record = _with_retries("claim", lambda: ctx.scripts.claim(batch_id, attempt,
                                                                  claimant=token))
    if isinstance(record, ClaimRefused):
        log.info("batch.claim_refused", queue=queue, batch_id=batch_id, attempt=attempt,
                 why=str(record))
        return {"status": str(record)}
    _warn_handler_mismatch(ctx)
    batch = record.to_batch(queue)
    with tracing.batch_span(batch):
        return _run_claimed(ctx, batch, record)


def _with_retries(what: str, work: Callable[[], T]) -> T:
    # a lost connection, a restart (LOADING), a long script (BUSY), a failover (READONLY,
    # MASTERDOWN): the batch's lease outlasts these retries
    return retry_on_fault(what, work, ACK_RETRY_DELAYS_SECONDS)


def _run_claimed(ctx: WorkerContext, batch: Batch, record: BatchRecord) -> dict[str, Any]:
    queue, batch_id, attempt = batch.queue, batch.id, batch.attempt
    started_ms = record.claimed_ms or 0
    t0 = time.perf_counter()
    try:
        with tracing.handler_span(queue, ctx.config.handler):
            outcome = ctx.handler(batch)
        results, failed = _split_outcome(batch, outcome, ctx.config)
    except RateLimited as exc:
        elapsed_ms = (time.perf_counter() - t0) * 1000
        until = started_ms + int(elapsed_ms + exc.retry_after_seconds * 1000)
        message = scrub(str(exc))
        _with_retries("fail", lambda: ctx.scripts.fail(
            batch_id, attempt, message, backoff_ms=0, rate_limited_until_ms=until))
        log.warning("batch.rate_limited", queue=queue, batch_id=batch_id,
                    retry_after_s=exc.retry_after_seconds)
        return {"status": "rate_limited"}
    except QueuePaused as exc:
        reason, paused = exc.reason, scrub(str(exc))
        probe_ms = int(exc.probe_after_seconds * 1000)
        _with_retries("pause", lambda: ctx.scripts.pause(
            batch_id, attempt, reason, paused, probe_ms=probe_ms))
        log.warning("batch.queue_paused", queue=queue, batch_id=batch_id, reason=exc.reason,
                    probe_after_s=exc.probe_after_seconds, error=scrub(exc.detail))
        return {"status": "paused"}
    except Exception as exc:  # noqa: BLE001 - any handler error is recorded, never lost
        calls = record.handler_calls
        # stored in the batch, its events and dead letters: never a key or password
        error = scrub(f"{type(exc).__name__}: {exc}")
        result = _with_retries("fail", lambda: ctx.scripts.fail(
            batch_id, attempt, error, backoff_ms=backoff_ms(ctx.config, calls)))
        log.warning("batch.failed", queue=queue, batch_id=batch_id, attempt=attempt,
                    size=len(batch), error=error, outcome=result)
        return {"status": "failed", "outcome": result}
    processing_ms = (time.perf_counter() - t0) * 1000
    try:
        ack = _with_retries("ack", lambda: ctx.scripts.ack(
            batch_id, attempt, processing_ms=processing_ms, started_ms=started_ms,
            results=results, failed=failed))
    except ReplicaAckError as exc:
        # BATCH_REPLICA_ACKS: applied on the master, not confirmed on enough replicas. Not
        # re-sent: ack.lua refuses a second ack of this attempt as stale, which writes and
        # confirms nothing. If the master fails before its replicas catch up, the promoted
        # replica still holds the batch in flight: its lease ends, it is redelivered and
        # handled again (a duplicate, never a loss)
        log.warning("batch.ack_unconfirmed", queue=queue, batch_id=batch_id, attempt=attempt,
                    replicas=exc.confirmed, wanted=exc.wanted, timeout_ms=exc.timeout_ms)
        ack = cast(AckResult, exc.result)
    if not ack.ok:
        # superseded (the reaper gave the batch to another attempt), or a retry of our own ack
        # whose reply was lost: ack.lua applied it at most once and counted this in stale_acks
        log.warning("batch.ack_refused", queue=queue, batch_id=batch_id, attempt=attempt,
                    why="stale")
        return {"status": "stale", "acked": 0}
    if ack.results_dropped:
        log.warning("batch.results_dropped", queue=queue, batch_id=batch_id, attempt=attempt,
                    results=ack.results_dropped, why="Redis over maxmemory refused them")
    _record_usage(ctx, outcome)
    log.info("batch.acked", queue=queue, batch_id=batch_id, attempt=attempt, size=len(batch),
             acked=ack.acked, delayed=ack.delayed, dead=ack.dead,
             processing_ms=round(processing_ms, 1), reason=str(batch.reason))
    return {"status": "acked", "acked": ack.acked}


def _warn_handler_mismatch(ctx: WorkerContext) -> None:
    if ctx.warned_handler:
        return
    try:
        raw = ctx.client.hget(ctx.config.keys.state, "handler")
    except (redis.ConnectionError, redis.TimeoutError):
        # advisory: a claimed batch must not wait out its lease over a warning; ask next batch
        return
    ctx.warned_handler = True
    expected = raw.decode() if isinstance(raw, bytes) else raw
    if expected is not None and expected != ctx.config.handler:
        log.warning("worker.handler_mismatch", queue=ctx.config.queue,
                    expected=expected, running=ctx.config.handler)
