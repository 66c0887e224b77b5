"""Wait for the event itself, never for a fixed time.

A test that sleeps "long enough" fails on a loaded machine and wastes time on an idle one.
These helpers poll the condition that shows the event happened: a client blocked in Redis, an
entry in a stream, a line in a log. The only time bound is a hang guard that fails the test
with what it waited for; it asserts nothing about speed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import cast

import redis

HANG_GUARD_SECONDS = 60.0
POLL_SECONDS = 0.01


def wait_until(ready: Callable[[], object], what: str,
               guard_seconds: float = HANG_GUARD_SECONDS) -> None:
    """Poll ``ready`` until it returns something true; fail naming ``what`` if it never does."""
    give_up = time.monotonic() + guard_seconds
    while not ready():
        if time.monotonic() > give_up:
            raise AssertionError(f"never happened: {what}")
        time.sleep(POLL_SECONDS)


def blocked_on(client: redis.Redis, command: str) -> int:
    """How many clients are blocked in ``command`` (BLPOP, XREAD, ...) right now."""
    clients = cast(list[dict[str, str]], client.client_list())
    return sum(1 for c in clients if "b" in c.get("flags", "") and c.get("cmd") == command)


def wait_blocked(client: redis.Redis, command: str = "blpop", n: int = 1) -> None:
    """Wait until ``n`` clients are blocked in ``command``: a waiter is really waiting."""
    wait_until(lambda: blocked_on(client, command) >= n, f"{n} client(s) blocked in {command}")


def stream_entries(client: redis.Redis, key: str, **match: str) -> list[dict[bytes, bytes]]:
    """The entries of stream ``key`` whose fields equal ``match``, oldest first."""
    wanted = {k.encode(): v.encode() for k, v in match.items()}
    entries = cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange(key))
    return [e for _id, e in entries if all(e.get(k) == v for k, v in wanted.items())]


def wait_stream(client: redis.Redis, key: str, n: int = 1,
                **match: str) -> list[dict[bytes, bytes]]:
    """Wait until stream ``key`` holds ``n`` entries matching ``match``; return them."""
    wait_until(lambda: len(stream_entries(client, key, **match)) >= n,
               f"{n} entries {match} in {key}")
    return stream_entries(client, key, **match)
