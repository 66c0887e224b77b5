"""Running on a Redis that is over ``maxmemory`` (``noeviction``): what frees memory still runs.

A full Redis refuses every command flagged ``denyoom`` (HSET, SADD, RPUSH, ZADD, SET...) and,
inside MULTI, the whole transaction when one queued command is such a write: even its DEL
does not run. Our own scripts that move or delete data carry the Redis 7 script flag
``allow-oom`` (see ``batcher.scripts``). RQ's bookkeeping around a batch job (the job hash
the dispatcher writes, a worker's heartbeat, execution record and finished-job clean-up) is
made of such plain writes, so a worker could neither start nor finish the job that would
free the memory.

``OomTolerantRedis`` is the client the coordinator and the workers use: a command or a
pipeline refused with OOM is sent again through ``lua/bookkeeping.lua``, a script flagged
``allow-oom`` that runs the same commands, in order. Each batch's bookkeeping is a few
hundred bytes while its ack frees its entries (kilobytes), so the drain nets memory free.
Producers never use this client: their enqueue keeps being refused (``RedisFullError``).
Script calls inside the pipeline are sent as themselves (Lua cannot call EVALSHA): ours are
flagged ``allow-oom`` already. A WATCHed transaction is never replayed (its check would be
lost); nor is a blocking command (Lua cannot block).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import redis
import structlog
from redis._parsers.response_callbacks import get_response_callbacks
from redis.client import EMPTY_RESPONSE, NEVER_DECODE, Pipeline
from redis.commands.core import Script

log = structlog.stdlib.get_logger(__name__)

_NOT_REPLAYED = frozenset({"EVALSHA", "EVAL", "EVALSHA_RO", "EVAL_RO", "FCALL", "MULTI", "EXEC",
                           "WATCH", "UNWATCH", "SCRIPT"})
_counters = {"replayed_commands": 0}


def replayed_commands() -> int:
    """How many commands this process sent again through the allow-oom script (tests, logs)."""
    return _counters["replayed_commands"]


def _name(args: Sequence[Any]) -> str:
    head = args[0]
    return (head.decode() if isinstance(head, bytes) else str(head)).upper()


def _replayable(name: str) -> bool:
    return name not in _NOT_REPLAYED and not name.startswith(("BL", "BR", "BZ", "XREAD"))


def _bookkeeping(client: redis.Redis) -> Script:
    from batcher.scripts import lua_source, server_supports_flags

    script = getattr(client, "_batcher_bookkeeping", None)
    if script is None:
        source = lua_source("bookkeeping", flags=server_supports_flags(client))
        script = client.register_script(source)
        client._batcher_bookkeeping = script  # type: ignore[attr-defined]
    return script


def _flatten(commands: Sequence[Sequence[Any]]) -> list[Any]:
    flat: list[Any] = []
    for args in commands:
        flat.append(len(args))
        flat.extend(args)
    return flat


@functools.cache
def _resp2_callbacks() -> dict[str, Any]:
    # Lua hands replies back in RESP2 shapes (a flat array for HGETALL) whatever protocol the
    # connection speaks: redis-py's RESP2 callbacks turn them into the usual Python values
    return {k.upper(): v for k, v in get_response_callbacks(2, True).items()}


def _parse(name: str, reply: Any, options: dict[str, Any]) -> Any:
    if isinstance(reply, Exception):
        return reply
    options = {k: v for k, v in options.items() if k not in ("keys", EMPTY_RESPONSE,
                                                             NEVER_DECODE)}
    callback = _resp2_callbacks().get(name)
    return callback(reply, **options) if callback is not None else reply


class OomTolerantRedis(redis.Redis):
    """A ``redis.Redis`` whose writes refused with OOM go again through an allow-oom script."""

    def execute_command(self, *args: Any, **options: Any) -> Any:
        try:
            return super().execute_command(*args, **options)  # type: ignore[no-untyped-call]
        except redis.exceptions.OutOfMemoryError:
            name = _name(args)
            if not _replayable(name):
                raise
            reply = replay(self, [(args, options)])[0]
            if isinstance(reply, Exception):
                raise reply from None
            return reply

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Pipeline:
        return OomTolerantPipeline(self.connection_pool, self.response_callbacks, transaction,
                                   shard_hint)


class OomTolerantPipeline(Pipeline):
    """A pipeline whose commands refused with OOM are sent again (see the module docstring).

    A MULTI/EXEC refused as a whole is sent again whole (RQ's transactions are each one
    step of its bookkeeping); of a plain pipeline only the refused commands go again.
    """

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        stack = list(self.command_stack)
        # the instance's flag, not redis-py's ``transaction()`` helper method of that name
        transaction = bool(vars(self).get("transaction")) or self.explicit_transaction
        watching = self.watching
        try:
            if transaction:
                return super().execute(raise_on_error)
            replies = super().execute(raise_on_error=False)
        except redis.exceptions.OutOfMemoryError:
            if watching or not stack:
                raise
            replies = replay(self._client(), stack)
            return _finish(replies, raise_on_error)
        refused = [i for i, r in enumerate(replies)
                   if isinstance(r, redis.exceptions.OutOfMemoryError)
                   and _replayable(_name(stack[i][0]))]
        if refused:
            again = replay(self._client(), [stack[i] for i in refused])
            for i, reply in zip(refused, again, strict=True):
                replies[i] = reply
        return _finish(replies, raise_on_error)

    def _client(self) -> redis.Redis:
        client = redis.Redis(connection_pool=self.connection_pool)
        client.response_callbacks = self.response_callbacks
        return client


def _finish(replies: list[Any], raise_on_error: bool) -> list[Any]:
    if raise_on_error:
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
    return replies


def replay(
    client: redis.Redis, commands: Sequence[tuple[Sequence[Any], dict[str, Any]]]
) -> list[Any]:
    """Run ``commands`` in order, past an OOM refusal; one round trip; their parsed replies.

    Runs of plain commands go in one ``bookkeeping.lua`` call each; a script call goes as
    itself. A command's own error (wrong type...) comes back as its reply, as in a pipeline.
    """
    script = _bookkeeping(client)
    # a plain pipeline: a refusal here is final, not replayed again
    pipe = Pipeline(client.connection_pool, client.response_callbacks, False, None)
    groups: list[tuple[bool, list[tuple[Sequence[Any], dict[str, Any]]]]] = []
    for args, options in commands:
        plain = _replayable(_name(args))
        if plain and groups and groups[-1][0]:
            groups[-1][1].append((args, options))
        else:
            groups.append((plain, [(args, options)]))
    for plain, members in groups:
        if plain:
            pipe.evalsha(script.sha, 0, *_flatten([a for a, _ in members]))
        else:
            args, options = members[0]
            pipe.execute_command(*args, **options)  # type: ignore[no-untyped-call]
    raw = pipe.execute(raise_on_error=False)
    if any(isinstance(r, redis.exceptions.NoScriptError) for r in raw):
        client.script_load(script.script)
        return replay(client, commands)
    out: list[Any] = []
    for (plain, members), reply in zip(groups, raw, strict=True):
        if not plain:
            out.append(reply)
            continue
        if isinstance(reply, Exception):
            out.extend(reply for _ in members)
            continue
        for (args, options), one in zip(members, reply, strict=True):
            out.append(_parse(_name(args), one, dict(options)))
    _counters["replayed_commands"] += sum(len(m) for p, m in groups if p)
    log.debug("redis.oom_replayed", commands=len(commands))
    return out
