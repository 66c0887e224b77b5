"""The producer side: ``BatchStateManager`` validates entries and enqueues them in chunks."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import orjson
import redis
import structlog

from batcher import tracing
from batcher.backoff import fault_kind, retry_on_fault
from batcher.config import BatchProcessingConfig
from batcher.errors import (
    BatcherUnavailableError,
    BufferFullError,
    InvalidEntryError,
    RedisFullError,
    ReplicaAckError,
    SourceFullError,
)
from batcher.fairness import source_group
from batcher.models import EnqueueResult
from batcher.scripts import Scripts

log = structlog.stdlib.get_logger(__name__)

CHUNK_SIZE = 500
MAX_ID_CHARS = 200
# bounded back-off for a producer that cannot reach Redis (seconds, summed ~3 s)
RETRY_DELAYS_SECONDS = (0.05, 0.1, 0.2, 0.4, 0.8, 1.6)


def handler_path(handler: str | Callable[..., Any]) -> str:
    """A handler as the ``module:function`` path workers import."""
    if isinstance(handler, str):
        return handler
    return f"{handler.__module__}:{handler.__qualname__}"


def _check_id(value: object, index: int) -> str:
    if not isinstance(value, str):
        raise InvalidEntryError(f"entry {index}: id must be a string, got {type(value).__name__}",
                                index=index)
    if not 1 <= len(value) <= MAX_ID_CHARS or not value.isprintable():
        raise InvalidEntryError(
            f"entry {index}: id {value[:60]!r} must be 1-{MAX_ID_CHARS} printable characters",
            entry_id=value, index=index)
    return value


_INF = math.inf
_SCALARS = frozenset((str, int, bool, type(None)))
_CONTAINERS = frozenset((dict, list, tuple))


def _is_plain_json(root: object) -> bool:
    """True when ``root`` holds only str, int, bool, None, finite floats, lists, tuples and
    dicts with string keys: the common case, checked without building any path string.

    One loop over an explicit stack with the leaves tested inline, about twice as fast as
    the recursive walk below, which runs only to name what is wrong.
    """
    stack = [root]
    while stack:
        value = stack.pop()
        kind = type(value)
        items: Iterable[Any]
        if kind is dict:
            for key in value:  # type: ignore[attr-defined]
                if type(key) is not str:
                    return False
            items = value.values()  # type: ignore[attr-defined]
        elif kind is list or kind is tuple:
            items = value  # type: ignore[assignment]
        else:
            items = (value,)
        for item in items:
            t = type(item)
            if t in _SCALARS:
                continue
            if t in _CONTAINERS:
                stack.append(item)
            elif t is not float or not -_INF < item < _INF:  # NaN and ±inf fail
                return False
    return True


def _non_json_path(value: object, path: str = "payload") -> str | None:
    """Where ``value`` holds something JSON cannot carry faithfully, else None.

    Called only when :func:`_is_plain_json` found something.

    orjson would write NaN/inf as null and datetime, UUID, Enum or dataclass values as
    other types, so they would not come back as sent: refuse them instead. Tuples are arrays.
    """
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return None
    if kind is float:
        return None if math.isfinite(value) else path  # type: ignore[arg-type]
    if kind is dict:
        for key, item in value.items():  # type: ignore[attr-defined]
            if type(key) is not str:
                return f"{path} (key {key!r})"
            found = _non_json_path(item, f"{path}.{key}")
            if found:
                return found
        return None
    if kind is list or kind is tuple:
        for i, item in enumerate(value):  # type: ignore[arg-type]
            found = _non_json_path(item, f"{path}[{i}]")
            if found:
                return found
        return None
    return path


BATCH_KEY_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def build_envelope(
    entry_id: object, source: object, priority: object, payload: object, *, index: int,
    max_entry_bytes: int, batch_key: object = None, traceparent: str | None = None,
) -> tuple[str, int, bytes]:
    """Validate one entry and return (id, priority, envelope bytes); raise InvalidEntryError.

    ``batch_key`` (optional): entries with different keys never share a batch.
    ``traceparent`` (the caller's current span, batcher.tracing) goes last as ``"tp"``;
    without it the envelope is unchanged."""
    eid = _check_id(entry_id, index)
    if batch_key is not None and (not isinstance(batch_key, str)
                                  or not BATCH_KEY_RE.match(batch_key)):
        raise InvalidEntryError(
            f"entry {eid!r}: batch_key must match [A-Za-z0-9_.-]{{1,64}}, got {batch_key!r}",
            entry_id=eid, index=index)
    if type(priority) is not int or not 0 <= priority <= 2:
        raise InvalidEntryError(
            f"entry {eid!r}: priority must be 0 (normal), 1 (high) or 2 (urgent), got {priority!r}",
            entry_id=eid, index=index)
    if not isinstance(source, str) or not 1 <= len(source) <= MAX_ID_CHARS:
        raise InvalidEntryError(f"entry {eid!r}: source must be a string of 1-200 characters",
                                entry_id=eid, index=index)
    if not isinstance(payload, dict):
        raise InvalidEntryError(
            f"entry {eid!r}: payload must be a JSON object (dict), got {type(payload).__name__}",
            entry_id=eid, index=index)
    bad = None if _is_plain_json(payload) else _non_json_path(payload)
    if bad:
        raise InvalidEntryError(
            f"entry {eid!r}: {bad} is not a JSON value (str, int, finite float, bool, None, "
            "list or object with string keys)", entry_id=eid, index=index)
    try:
        # "g" (and "k") first: the scripts read an entry's source group and batch key from
        # this fixed prefix
        body: dict[str, Any] = {"g": source_group(source)}
        if batch_key is not None:
            body["k"] = batch_key
        body.update(id=eid, source=source, priority=priority, payload=payload)
        if traceparent is not None:
            body["tp"] = traceparent
        envelope = orjson.dumps(body)
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise InvalidEntryError(f"entry {eid!r}: payload is not JSON-serialisable: {exc}",
                                entry_id=eid, index=index) from None
    if len(envelope) > max_entry_bytes:
        raise InvalidEntryError(
            f"entry {eid!r}: {len(envelope)} bytes exceeds max_entry_bytes={max_entry_bytes}",
            entry_id=eid, index=index)
    return eid, priority, envelope


class BatchStateManager:
    """Producer facade: validate, enqueue in chunks, read results and figures.

    ``redis`` and ``config`` default to a client built from ``BATCH_REDIS_URL`` and the settings
    in the environment (with the queue's table of ``BATCH_SETTINGS_FILE``, if one is named).
    With ``config.shards > 1`` each entry goes to its source's shard (``batcher.shards``).
    ``handler`` (a function or ``"module:function"``) is recorded in Redis as the handler this
    producer expects; it is never called here: workers run their own ``BATCH_HANDLER`` and
    warn when it differs. ``flush_callback`` is the seed's name for it. Raises ``TypeError``
    when both are given.
    """

    def __init__(
        self,
        redis: redis.Redis | None = None,
        config: BatchProcessingConfig | None = None,
        *,
        handler: str | Callable[..., Any] | None = None,
        flush_callback: str | Callable[..., Any] | None = None,
    ):
        if handler is not None and flush_callback is not None:
            raise TypeError("give handler or flush_callback (its earlier name), not both")
        expected = handler if handler is not None else flush_callback
        if config is None:
            from batcher.settings_file import env_config  # BATCH_SETTINGS_FILE too

            config = env_config()
        self.config = config
        self.redis = redis if redis is not None else self.config.redis_client()
        self.scripts = Scripts(self.redis, self.config)
        self.keys = self.scripts.keys
        self.expected_handler = handler_path(expected) if expected else None
        self._handler_recorded = False
        self._redis_full = False  # the last call's refusals came from Redis's maxmemory
        # a sharded queue (BATCH_SHARDS > 1): one producer per shard, each a plain queue's;
        # None keeps the unsharded hot path free of any routing work
        self._shards: list[BatchStateManager] | None = None
        if self.config.shards > 1:
            from batcher.shards import client_for, shard_configs

            self._shards = [BatchStateManager(client_for(self.redis, c), c, handler=expected)
                            for c in shard_configs(self.config)]

    def _shard(self, routing_key: str) -> BatchStateManager:
        from batcher.shards import shard_index

        assert self._shards is not None
        return self._shards[shard_index(routing_key, len(self._shards))]

    # -- enqueue -----------------------------------------------------------------------------

    def queue_entry(
        self, entry: Mapping[str, Any], source: str, uuid: str, priority: int = 0, *,
        batch_key: str | None = None,
    ) -> EnqueueResult:
        """Enqueue one entry (the seed's signature); ``batch_key``: it never shares a batch with
        entries of another key. Raises InvalidEntryError, BufferFullError,
        BatcherUnavailableError. On a sharded queue it goes to ``source``'s shard."""
        if self._shards is not None:
            shard = self._shard(source if isinstance(source, str) else str(uuid))
            return shard.queue_entry(entry, source, uuid, priority, batch_key=batch_key)
        return self._enqueue([build_envelope(
            uuid, source, priority, entry, index=0, max_entry_bytes=self.config.max_entry_bytes,
            batch_key=batch_key, traceparent=tracing.current_traceparent())])

    def queue_many(self, entries: Iterable[Mapping[str, Any]]) -> EnqueueResult:
        """Enqueue ``{"id", "source", "priority", "payload"}`` mappings (and an optional
        ``"batch_key"``), one EVALSHA per 500.

        The whole call is validated before anything is sent: one bad entry raises
        InvalidEntryError and writes nothing. Duplicates are success (``duplicate_ids``).
        On a sharded queue each entry goes to its source's shard (no source: its id's).
        """
        if self._shards is not None:
            return self._enqueue_sharded(list(entries))
        return self._enqueue(self._prepare(entries, tracing.current_traceparent()))

    def _enqueue_sharded(self, items: list[Mapping[str, Any]]) -> EnqueueResult:
        from batcher.shards import enqueue_sharded

        assert self._shards is not None
        prepared = self._prepare(items, tracing.current_traceparent())  # the whole call first
        return enqueue_sharded(self._shards, items, prepared)

    def _prepare(self, entries: Iterable[Mapping[str, Any]],
                 tp: str | None) -> list[tuple[str, int, bytes]]:
        limit = self.config.max_entry_bytes
        prepared: list[tuple[str, int, bytes]] = []
        for index, item in enumerate(entries):
            if type(item) is not dict and not isinstance(item, Mapping):  # dict: no ABC check
                raise InvalidEntryError(f"entry {index}: must be a mapping with id, source, "
                                        f"priority and payload", index=index)
            prepared.append(build_envelope(
                item.get("id"), item.get("source", "default"), item.get("priority", 0),
                item.get("payload"), index=index, max_entry_bytes=limit, traceparent=tp,
                batch_key=item.get("batch_key")))
        return prepared

    def _enqueue(self, prepared: Sequence[tuple[str, int, bytes]]) -> EnqueueResult:
        self._record_handler()
        total = EnqueueResult()
        self._redis_full = False
        for start in range(0, len(prepared), CHUNK_SIZE):
            chunk = prepared[start:start + CHUNK_SIZE]
            try:
                total = total + self._send_chunk(chunk)
            except BatcherUnavailableError as exc:
                exc.unconfirmed_ids = [e[0] for e in prepared[start:]]
                if isinstance(exc, ReplicaAckError) and isinstance(exc.result, EnqueueResult):
                    exc.result = total + exc.result  # all this call's master accepted
                raise
        if total.rejected_ids and self.config.overflow_policy == "block":
            total = self._wait_for_room(prepared, total)
        if total.rejected_ids:
            log.warning("entries.rejected", queue=self.config.queue, rejected=total.rejected,
                        accepted=total.accepted, redis_full=self._redis_full,
                        source_capped=len(total.source_capped_ids))
            if self._redis_full:
                raise RedisFullError(
                    f"Redis is full: {total.rejected} of {len(prepared)} entries refused "
                    f"because Redis's used memory is over its maxmemory{self._memory_figures()}"
                    " (maxmemory-policy noeviction); nothing refused was written: retry once "
                    "the workers have drained the buffer, or raise maxmemory", total)
            if total.source_capped_ids:
                raise SourceFullError(
                    f"source full: {total.rejected} of {len(prepared)} entries rejected, "
                    f"{len(total.source_capped_ids)} of them by max_pending_per_source="
                    f"{self.config.max_pending_per_source}", total)
            raise BufferFullError(
                f"buffer full: {total.rejected} of {len(prepared)} entries rejected "
                f"(max_buffer_size={self.config.max_buffer_size}, "
                f"max_buffer_bytes={self.config.max_buffer_bytes})", total)
        return total

    def _memory_figures(self) -> str:
        try:
            info = self.redis.info("memory")
            return (f" (used_memory={info.get('used_memory_human', '?')}, "
                    f"maxmemory={info.get('maxmemory_human', '?')})")
        except redis.RedisError:
            return ""

    def _send_chunk(self, chunk: Sequence[tuple[str, int, bytes]]) -> EnqueueResult:
        def send() -> EnqueueResult:
            try:
                return self.scripts.enqueue(chunk)
            except redis.exceptions.OutOfMemoryError:
                # enqueue.lua is refused whole on a full Redis: the chunk is rejected, like a
                # full buffer (the 'block' policy waits for a flush's room token, which
                # comes as the workers drain)
                self._redis_full = True
                return EnqueueResult(0, [], [e[0] for e in chunk])

        # Enqueue is idempotent by id, so re-sending a chunk whose reply was lost is safe.
        try:
            return retry_on_fault("enqueue", send, RETRY_DELAYS_SECONDS, queue=self.config.queue)
        except redis.RedisError as exc:
            kind = fault_kind(exc)
            if kind is None:
                raise
            raise BatcherUnavailableError(
                f"Redis unavailable ({kind}), {len(chunk)} entries not confirmed: {exc}"
            ) from exc

    def _wait_for_room(
        self, prepared: Sequence[tuple[str, int, bytes]], total: EnqueueResult
    ) -> EnqueueResult:
        """Under the 'block' policy, wait on the room list (pushed by flushes) and re-send."""
        deadline = time.monotonic() + self.config.block_timeout_seconds
        waiting = set(total.rejected_ids)
        accepted, dups = total.accepted, list(total.duplicate_ids)
        todo = [e for e in prepared if e[0] in waiting]
        capped = set(total.source_capped_ids)
        while todo and (left := deadline - time.monotonic()) > 0:
            try:
                self.redis.blpop([self.keys.room], timeout=max(0.01, min(left, 1.0)))
            except (redis.ConnectionError, redis.TimeoutError):
                time.sleep(min(left, RETRY_DELAYS_SECONDS[-1]))  # _send_chunk reports it
            try:
                got = self._send_chunk(todo[:CHUNK_SIZE])
            except BatcherUnavailableError as exc:
                exc.unconfirmed_ids = [e[0] for e in todo]
                raise
            accepted += got.accepted
            dups += got.duplicate_ids
            still = set(got.rejected_ids)
            capped = (capped - {e[0] for e in todo[:CHUNK_SIZE]}) | set(got.source_capped_ids)
            todo = [e for e in todo[:CHUNK_SIZE] if e[0] in still] + todo[CHUNK_SIZE:]
        still_rejected = [e[0] for e in todo]
        return EnqueueResult(accepted, dups, still_rejected,
                             [i for i in still_rejected if i in capped])

    def _record_handler(self) -> None:
        if self.expected_handler and not self._handler_recorded:
            try:
                self.redis.hset(self.keys.state, "handler", self.expected_handler)
            except redis.RedisError as exc:
                # advisory only (workers warn on a mismatch): the enqueue that follows
                # meets the outage (or the full Redis) itself and reports it
                if fault_kind(exc) is None:
                    raise
                return
            self._handler_recorded = True

    # -- reading -----------------------------------------------------------------------------

    def get_result(self, entry_id: str) -> Any | None:
        """The handler's result for ``entry_id`` while its TTL lasts, else None."""
        if self._shards is not None:  # the id alone does not say which shard holds it
            for shard in self._shards:
                found = shard.get_result(entry_id)
                if found is not None:
                    return found
            return None
        raw = self.redis.get(self.keys.result(entry_id))
        return None if raw is None else orjson.loads(raw)

    def get_detailed_stats(self) -> dict[str, Any]:
        """Buffer, performance, counters, sizing, health and recent events (DESIGN §9)."""
        from batcher.stats import detailed_stats

        return detailed_stats(self.redis, self.config)
