"""Exceptions a producer, a handler or the CLI can catch (DESIGN §9)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from batcher.models import EnqueueResult


class BatcherError(Exception):
    """Base class of every error redis-batcher raises on purpose."""


class ConfigError(BatcherError):
    """A setting is invalid; the message names the variable, the value and the rule."""


class InvalidEntryError(BatcherError, ValueError):
    """An entry was refused before anything was written; says which and why."""

    def __init__(self, message: str, *, entry_id: str | None = None, index: int | None = None):
        super().__init__(message)
        self.entry_id = entry_id
        self.index = index


class BufferFullError(BatcherError):
    """The buffer had no room for some or all entries; ``result`` says which."""

    def __init__(self, message: str, result: EnqueueResult):
        super().__init__(message)
        self.result = result


class RedisFullError(BufferFullError):
    """Redis itself is over its ``maxmemory`` (``noeviction``) and refused the entries.

    A ``BufferFullError``, so code that handles a full buffer handles this too; ``result``
    says which entries were refused. Nothing refused was written; the coordinator and the
    workers keep draining, and enqueue succeeds again once that has freed memory.
    """


class SourceFullError(BufferFullError):
    """A source already holds ``max_pending_per_source`` pending entries (at that priority):
    its entries were rejected, other sources' were not."""


class BatcherUnavailableError(BatcherError):
    """Redis could not be reached; ``unconfirmed_ids`` were not confirmed written."""

    def __init__(self, message: str, unconfirmed_ids: list[str] | None = None):
        super().__init__(message)
        self.unconfirmed_ids = unconfirmed_ids or []


class ReplicaAckError(BatcherUnavailableError):
    """``BATCH_REPLICA_ACKS=n``: the write was applied on the master, but WAIT confirmed it on
    only ``confirmed`` of ``wanted`` replicas within ``timeout_ms``.

    Nothing is undone: the write stands on the master and reaches the replicas when they
    catch up, unless the master fails first (asynchronous replication), in which case a
    promoted replica lacks it. For an enqueue, ``unconfirmed_ids`` (those of this call not
    confirmed) may be re-sent: enqueue de-duplicates by id within the dedupe window, so a
    re-sent id that did arrive counts as a duplicate, not a second entry. ``result`` is what
    the master accepted (an ``EnqueueResult``; for a worker's ack, its ``AckResult``).
    """

    def __init__(self, what: str, *, wanted: int, confirmed: int, timeout_ms: int,
                 result: object = None, unconfirmed_ids: list[str] | None = None):
        resend = (" (re-sending these ids is safe: enqueue de-duplicates by id)"
                  if what == "enqueue" else "")
        super().__init__(
            f"{what} applied on the master but confirmed on {confirmed} of {wanted} replicas "
            f"within {timeout_ms} ms (BATCH_REPLICA_ACKS={wanted}): a failover before the "
            f"replicas catch up would lose it{resend}", unconfirmed_ids)
        self.what = what
        self.wanted = wanted
        self.confirmed = confirmed
        self.timeout_ms = timeout_ms
        self.result = result


class ScriptError(BatcherError):
    """A Lua script returned an error code or a status word this version does not know."""


class BatchExistsError(ScriptError):
    """flush.lua refused a batch id already in use (``BATCH_EXISTS``): nothing was popped."""

    def __init__(self, batch_id: str):
        super().__init__(f"batch id {batch_id!r} is already in use (BATCH_EXISTS)")
        self.batch_id = batch_id


# The error codes the scripts raise (redis.error_reply('<CODE> <detail>')), each to its
# exception: the one place a script's error becomes a Python type.
_SCRIPT_ERRORS: dict[str, Callable[[str], BatcherError]] = {
    "BATCH_EXISTS": BatchExistsError,
}


def from_script_error(exc: Exception) -> Exception:
    """The typed error for a script's error reply, or ``exc`` itself when it carries no code
    of ours (a Redis fault such as OOM or BUSY, which callers wait out by its redis-py type)."""
    code, _, detail = str(exc).partition(" ")
    make = _SCRIPT_ERRORS.get(code)
    return exc if make is None else make(detail)


class RateLimited(Exception):  # noqa: N818 - the public name is fixed by the design
    """Raised by a handler: pause the whole queue for ``retry_after_seconds``.

    The call does not count as an attempt; the batch is dispatched again after
    the pause.
    """

    def __init__(self, retry_after_seconds: float = 1.0, message: str = ""):
        super().__init__(message or f"rate limited, retry after {retry_after_seconds}s")
        self.retry_after_seconds = float(retry_after_seconds)


class QueuePaused(Exception):  # noqa: N818 - named for what the worker does, like RateLimited
    """Raised by a handler: nothing will succeed until a person acts (quota, credentials).

    The worker pauses the whole queue with ``reason`` (shown by ``batcher stats``, ``top``,
    the health check and the exporter) and probes again after ``probe_after_seconds``: the
    batch is dispatched again then, and the call does not count as an attempt.
    """

    def __init__(self, reason: str, probe_after_seconds: float = 60.0, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.probe_after_seconds = float(probe_after_seconds)
        self.detail = detail
