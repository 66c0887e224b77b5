"""Fair share between sources (issue 17): the group name a source's entries carry to Lua.

An envelope opens with ``{"g":"<group>",`` so the scripts can find an entry's source list
from a fixed prefix without decoding the envelope. A source name that JSON would escape, or
that is long, is replaced by a short digest so the prefix stays one plain string.
"""

from __future__ import annotations

import functools
import hashlib
import re
from typing import cast

from redis import Redis

_PLAIN_RE = re.compile(r'^[^"\\\s]{1,64}$')
MAX_WEIGHT = 1_000_000.0


@functools.lru_cache(maxsize=65_536)
def source_group(source: str) -> str:
    """The group name of ``source``: itself when plain, else ``h-`` and 16 hex digits."""
    if _PLAIN_RE.match(source) and source.isprintable():
        return source
    return "h-" + hashlib.sha1(source.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def validate_weight(weight: float) -> float:
    if not 0 < weight <= MAX_WEIGHT:
        raise ValueError(f"weight must be > 0 and <= {MAX_WEIGHT:g}, got {weight!r}")
    return weight


def set_weight(client: Redis, weights_key: str, source: str, weight: float) -> str:
    """Give ``source`` ``weight`` (default 1): its share of a class is weight / sum of the
    weights of the sources with entries pending. Returns the source's group name."""
    group = source_group(source)
    client.hset(weights_key, group, repr(float(validate_weight(weight))))
    return group


def reset_weight(client: Redis, weights_key: str, source: str) -> bool:
    return bool(client.hdel(weights_key, source_group(source)))


def list_weights(client: Redis, weights_key: str) -> dict[str, float]:
    raw = cast(dict[bytes, bytes], client.hgetall(weights_key))
    return {k.decode(): float(v) for k, v in sorted(raw.items())}
