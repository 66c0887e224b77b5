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
from collections.abc import Mapping
from urllib.parse import urlsplit

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


def connect(url: str, *, blocking_seconds: float | None = None,
            tls: Mapping[str, str] | None = None, oom_tolerant: bool = False) -> redis.Redis:
    """A client for ``url`` with the project's options; no connection is made yet.

    ``oom_tolerant``: the coordinator's and workers' client, whose bookkeeping writes go
    through on a Redis over maxmemory (``batcher.oom``); never a producer's.

    ``blocking_seconds`` is the longest blocking call (BLPOP timeout) the client will
    make; its socket timeout is that plus a margin. ``tls`` holds the CA, certificate and
    key files of a ``rediss://`` URL (``BatchProcessingConfig.tls()``; entry points build
    clients with ``config.redis_client()``, which passes them). Raises ``ConfigError`` for
    a URL redis-py cannot parse.
    """
    if blocking_seconds is None:
        socket_timeout = SOCKET_TIMEOUT_SECONDS
    else:
        socket_timeout = blocking_seconds + BLOCKING_MARGIN_SECONDS
    cls = redis.Redis
    if oom_tolerant:
        from batcher.oom import OomTolerantRedis

        cls = OomTolerantRedis
    try:
        return cls.from_url(
            url,
            decode_responses=False,
            socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
            socket_timeout=socket_timeout,
            # redis-py 8 retries 3 times with back-off by default; zero retries here
            retry=Retry(NoBackoff(), 0),
            retry_on_timeout=False,
            retry_on_error=[],
            health_check_interval=HEALTH_CHECK_INTERVAL_SECONDS,
            **_driver_options(),
            **(tls or {}),
        )
    except ValueError as exc:
        raise ConfigError(f"BATCH_REDIS_URL={redact(url)!r}: {exc}") from None


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
