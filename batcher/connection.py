"""The one place a Redis client is built (DESIGN §3 "Connections").

Every client has ``decode_responses=False`` (RQ needs bytes), a socket timeout
longer than the longest blocking call it makes, and no automatic retries: our
own layer retries, knowing that enqueue is idempotent by id and that a flush
whose reply was lost is recovered by the reaper. A silent redis-py retry of a
script call would hide exactly the failures that layer must see.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from batcher.errors import BatcherUnavailableError, ConfigError

CONNECT_TIMEOUT_SECONDS = 5.0
# a reply slower than this on a non-blocking call means the server is in trouble
SOCKET_TIMEOUT_SECONDS = 10.0
# margin over the longest blocking call (BLPOP) so its own timeout fires first
BLOCKING_MARGIN_SECONDS = 5.0
HEALTH_CHECK_INTERVAL_SECONDS = 30


@functools.cache
def _driver_options() -> dict[str, object]:
    """One ``DriverInfo`` per process for redis-py 8, which otherwise reads the installed
    package's metadata (importlib.metadata: ~5 ms, ~500 page faults) for EVERY new
    connection: once per job in a forking worker's work horse. Older redis-py reads its
    version once at import and has no ``driver_info``."""
    try:
        from redis.driver_info import DriverInfo
    except ImportError:
        return {}
    return {"driver_info": DriverInfo()}

_QUERY_PASSWORD = re.compile(r"(?i)(^|&)(password=)[^&]*")
# BATCH_REDIS_URL naming a Redis Cluster: one or more seed nodes, comma-separated
CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")
_SEED = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[^:\[\]/,]+):([0-9]{1,5})$")


def is_cluster_url(url: str) -> bool:
    """True for ``redis+cluster://`` and ``rediss+cluster://`` (TLS) URLs."""
    return url[:18].lower().startswith(CLUSTER_SCHEMES)


@dataclass(frozen=True)
class ClusterAddress:
    """What a cluster URL says: seed nodes, credentials, TLS. Only the seeds need to be
    reachable at start; the rest of the cluster is discovered from them (CLUSTER SLOTS)."""

    seeds: tuple[tuple[str, int], ...]
    username: str | None
    password: str | None
    tls: bool


def parse_cluster_url(url: str) -> ClusterAddress:
    """``redis+cluster://[user:password@]host:port[,host:port...][/0]``; raises ValueError
    naming what is wrong (never the password). A cluster has one database, 0."""
    scheme, _, rest = url.partition("://")
    netloc, slash, path = rest.partition("/")
    if "?" in netloc or "?" in path or "#" in rest:
        raise ValueError("a cluster URL takes no query or fragment")
    if slash and path not in ("", "0"):
        raise ValueError("a Redis Cluster has only database 0")
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    seeds = []
    for seed in hosts.split(","):
        match = _SEED.match(seed.strip())
        if match is None or not 0 < int(match.group(2)) < 65536:
            raise ValueError(f"seed {seed.strip()!r} is not host:port")
        seeds.append((match.group(1).strip("[]"), int(match.group(2))))
    return ClusterAddress(tuple(seeds), username, password, scheme.lower() == "rediss+cluster")


def connect(url: str, *, blocking_seconds: float | None = None,
            tls: Mapping[str, str] | None = None, oom_tolerant: bool = False,
            pin_key: str | None = None) -> redis.Redis:
    """A client for ``url`` with the project's options; no connection is made yet.

    A cluster URL (:func:`is_cluster_url`) gives a client pinned to the node that owns
    ``pin_key``'s slot (``batcher.cluster``): a queue's keys all live in one slot.

    ``oom_tolerant``: the coordinator's and workers' client, whose bookkeeping writes go
    through on a Redis over maxmemory (``batcher.oom``); never a producer's.

    ``blocking_seconds`` is the longest blocking call (BLPOP timeout) the client will
    make; its socket timeout is that plus a margin. ``tls`` holds the CA, certificate and
    key files of a ``rediss://`` URL (``BatchProcessingConfig.tls()``; entry points build
    clients with ``config.redis_client()``, which passes them). Raises ``ConfigError`` for
    a URL redis-py cannot parse.
    """
    cls = redis.Redis
    if oom_tolerant:
        from batcher.oom import OomTolerantRedis

        cls = OomTolerantRedis
    try:
        if is_cluster_url(url):
            if pin_key is None:
                raise ValueError("a cluster client is pinned to a key's slot: pass pin_key")
            from batcher.cluster import pinned_client

            return pinned_client(url, pin_key, cls, client_options(blocking_seconds, tls))
        return cls.from_url(url, **client_options(blocking_seconds, tls))
    except ValueError as exc:
        raise ConfigError(f"BATCH_REDIS_URL={redact(url)!r}: {exc}") from None


def client_options(blocking_seconds: float | None = None,
                   tls: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The keyword options every client gets (see the module docstring and ``connect``)."""
    if blocking_seconds is None:
        socket_timeout = SOCKET_TIMEOUT_SECONDS
    else:
        socket_timeout = blocking_seconds + BLOCKING_MARGIN_SECONDS
    return {
        "decode_responses": False,
        "socket_connect_timeout": CONNECT_TIMEOUT_SECONDS,
        "socket_timeout": socket_timeout,
        # redis-py 8 retries 3 times with back-off by default; zero retries here
        "retry": Retry(NoBackoff(), 0),
        "retry_on_timeout": False,
        "retry_on_error": [],
        "health_check_interval": HEALTH_CHECK_INTERVAL_SECONDS,
        **_driver_options(),
        **(tls or {}),
    }


def same_server(client: redis.Redis, key: str) -> redis.Redis:
    """A client for ``key`` beside ``client``: ``client`` itself on one server; on a cluster,
    a client of the same kind pinned to ``key``'s slot (a budget's key has its own slot)."""
    repin = getattr(client.connection_pool, "client_for_key", None)
    return client if repin is None else repin(type(client), key)


def scan_all(client: redis.Redis, match: str, count: int) -> Iterator[bytes]:
    """``SCAN MATCH`` over ``client``'s server, or over every master when ``client`` is pinned
    to a cluster slot: what finds every queue wherever its slot lives."""
    topology = getattr(client.connection_pool, "topology", None)
    servers = [client] if topology is None else topology.masters()
    for server in servers:
        yield from server.scan_iter(match=match, count=count)


def ping_or_raise(client: redis.Redis) -> None:
    """PING the server; raises ``BatcherUnavailableError`` naming it (password hidden)."""
    try:
        client.ping()
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        reason = str(exc) or type(exc).__name__
        raise BatcherUnavailableError(
            f"Redis unreachable at {describe(client)}: {reason}"
        ) from exc


def describe(client: redis.Redis) -> str:
    """The URL ``client`` connects to, rebuilt from its pool, with any password hidden."""
    shown = getattr(client.connection_pool, "describe", None)
    if shown is not None:  # a cluster client: its URL and the node serving its slot
        return str(shown())
    kwargs = client.connection_pool.connection_kwargs
    db = kwargs.get("db", 0)
    user = kwargs.get("username") or ""
    if "path" in kwargs:
        # redis-py's unix URL form carries the password in the query
        secret = "&password=***" if kwargs.get("password") else ""
        return f"unix://{user + '@' if user else ''}{kwargs['path']}?db={db}{secret}"
    auth = f"{user}:***@" if kwargs.get("password") else (f"{user}@" if user else "")
    scheme = "rediss" if "SSL" in client.connection_pool.connection_class.__name__ else "redis"
    return f"{scheme}://{auth}{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{db}"


def redact(url: str) -> str:
    """``url`` with its password (in the user info or a ``password=`` query) as ``***``."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparsable URL>"
    # edit the text in place: rebuilding from the parts would reshape URLs we only show
    if password is not None:
        userinfo = parts.netloc.rpartition("@")[0]
        url = url.replace(f"{userinfo}@", f"{userinfo.partition(':')[0]}:***@", 1)
    base, sep, rest = url.partition("?")
    return base + sep + _QUERY_PASSWORD.sub(r"\1\2***", rest)
