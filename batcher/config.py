"""Settings: ``BatchProcessingConfig`` read from ``BATCH_*`` environment variables (DESIGN §9).

A field is its variable lower-cased without the prefix, except that a variable
ending in ``_SEC`` is a field ending in ``_seconds`` (``BATCH_TIME_THRESHOLD_SEC``
<-> ``time_threshold_seconds``). Build it at entry points with :func:`load_config`,
whose error is one line naming the variable, the value and the rule.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Annotated, Any, Literal, Self

import redis
from pydantic import (
    AliasGenerator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from batcher.connection import connect, is_cluster_url, parse_cluster_url, redact
from batcher.errors import ConfigError
from batcher.keys import (
    MAX_SHARDS,
    QueueKeys,
    split_shard,
    validate_budget_name,
    validate_queue_name,
)

ENV_PREFIX = "BATCH_"
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
HANDLER_RE = re.compile(rf"^{_IDENT}(\.{_IDENT})*:{_IDENT}(\.{_IDENT})*$")
_MAX_SHOWN = 100  # a value longer than this is cut in error messages

# Rules whose words cannot be derived from the field's type and bounds.
_RULE_WORDS = {
    "redis_url": "must be a redis://, rediss:// or unix:// URL, or redis+cluster://host:port"
                 "[,host:port...] for a Redis Cluster",
    "rq_redis_url": "must be empty or a redis://, rediss:// or unix:// URL (RQ needs a "
                    "standalone Redis, not a cluster)",
    "queue": "must match [A-Za-z0-9_-]{1,64}",
    "handler": "must be a 'module:function' path, e.g. workers.handlers.echo:handle",
    "job_timeout_seconds": "must be a whole number >= 1 (RQ truncates fractions)",
    "overflow_policy": "must be 'reject' or 'block'",
    "log_format": "must be 'json' or 'console'",
    "redis_tls_ca_file": "must be a readable file",
    "redis_tls_cert_file": "must be a readable file",
    "redis_tls_key_file": "must be a readable file",
    "settings_file": "must be a readable file",
    "budget": "must be empty or match [A-Za-z0-9_.-]{1,64}",
}
# field -> redis-py's keyword for it (an ssl.SSLContext setting of a rediss:// client)
_TLS_KWARGS = {
    "redis_tls_ca_file": "ssl_ca_certs",
    "redis_tls_cert_file": "ssl_certfile",
    "redis_tls_key_file": "ssl_keyfile",
}


def env_name(field: str) -> str:
    """The variable of ``field``: ``time_threshold_seconds`` -> ``BATCH_TIME_THRESHOLD_SEC``."""
    if field.endswith("_seconds"):
        field = field.removesuffix("_seconds") + "_sec"
    return ENV_PREFIX + field.upper()


def environment_values() -> dict[str, str]:
    """The ``BATCH_*`` variables that name a field, as ``{variable: value}``. Names match
    whatever their case (``batch_queue`` sets the queue); others (``BATCH_TEST_X``) are not
    read. The values are strings; the model converts and checks them."""
    found: dict[str, str] = {}
    for name, value in os.environ.items():
        upper = name.upper()
        if upper in _VARIABLES:
            found[upper] = value
    return found


def _default_log_format() -> Literal["json", "console"]:
    # a person at a terminal reads console lines; anything else (systemd, docker) parses JSON
    return "console" if sys.stderr is not None and sys.stderr.isatty() else "json"


Pos = Annotated[float, Field(gt=0)]
NonNeg = Annotated[float, Field(ge=0)]
PosInt = Annotated[int, Field(ge=1)]
NonNegInt = Annotated[int, Field(ge=0)]
BatchCount = Annotated[int, Field(ge=1), Field(le=1000)]
Pressure = Annotated[float, Field(gt=0.5), Field(le=1)]


class BatchProcessingConfig(BaseModel):
    """Every setting of redis-batcher, validated; frozen once built.

    Construct by field name (``BatchProcessingConfig(queue="q", time_threshold_seconds=5)``);
    what is not given comes from ``BATCH_*`` variables, then from the defaults. Raises
    pydantic's ``ValidationError``; :func:`load_config` turns that into ``ConfigError``.

    A pydantic model that reads the environment itself (``__init__``), not a
    pydantic-settings ``BaseSettings``: that package and what it imports (argparse, dotenv)
    cost every process ~0.1 s of CPU at start-up, for a lookup of one variable per field.
    """

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        # a field validates by its variable's name (the _SEC spelling), which is what the
        # environment gives; not validate_by_name: __init__ maps field names instead
        alias_generator=AliasGenerator(validation_alias=env_name),
        allow_inf_nan=False,
        validate_default=True,
    )

    redis_url: str = "redis://localhost:6379/0"
    # TLS for a rediss:// URL: the CA that signed the server's certificate (else the
    # system's), and a client certificate and key when the server asks for one
    redis_tls_ca_file: str | None = None
    redis_tls_cert_file: str | None = None
    redis_tls_key_file: str | None = None
    # RQ's queues, jobs and registries on a Redis of their own (None: on redis_url); every
    # batcher key stays on redis_url. A rediss:// URL gets the same TLS files
    rq_redis_url: str | None = None
    queue: str = "default"
    # the queue split in this many shards (queues Q~0 .. Q~N-1, each its own slot); producers
    # route by a stable hash of the source (batcher.shards), coordinators and workers serve all
    shards: Annotated[int, Field(ge=1), Field(le=MAX_SHARDS)] = 1
    # a TOML file of per-queue settings (batcher.settings_file): [defaults] and [queues.<name>]
    settings_file: str | None = None
    handler: str = "workers.handlers.echo:handle"

    max_buffer_size: PosInt = 1000
    max_buffer_bytes: Annotated[int, Field(ge=1024)] = 67_108_864
    size_threshold: BatchCount = 25
    min_batch_size: BatchCount = 5
    max_batch_size: BatchCount = 50
    max_batch_bytes: PosInt = 1_048_576
    max_entry_bytes: PosInt = 262_144

    time_threshold_seconds: Pos = 300.0
    high_time_threshold_seconds: Pos = 120.0
    urgent_time_threshold_seconds: Pos = 60.0
    early_flush_pressure: Pressure = 0.85
    emergency_flush_pressure: Pressure = 0.95
    # Redis's used_memory / maxmemory at which the coordinator flushes as under early pressure
    # (the coordinator reads INFO memory once per reap); 0 turns it off
    redis_memory_flush_pressure: Annotated[float, Field(ge=0), Field(le=1)] = 0.8
    max_buffer_age_seconds: Pos = 3600.0

    max_inflight_batches: PosInt = 100
    job_timeout_seconds: PosInt = 180
    lease_grace_seconds: NonNeg = 5.0
    dispatch_lease_seconds: Pos = 30.0
    reap_interval_seconds: Pos = 1.0
    max_attempts: PosInt = 5
    retry_backoff_seconds: Pos = 2.0
    result_ttl_seconds: NonNegInt = 86_400
    dedupe_window_seconds: NonNeg = 86_400.0
    dedupe_max_ids: NonNegInt = 1_000_000
    overflow_policy: Literal["reject", "block"] = "reject"
    block_timeout_seconds: Pos = 10.0
    max_pending_per_source: NonNegInt = 0
    budget: str = ""
    # an enqueue and an ack are reported done only once WAIT confirms this many replicas hold
    # them (0: no WAIT, today's path); the wait stays under the client's 10 s socket timeout
    replica_acks: NonNegInt = 0
    replica_acks_timeout_ms: Annotated[int, Field(ge=1), Field(le=9000)] = 1000

    enable_adaptive_sizing: bool = True
    enable_adaptive_timeout: bool = True
    enable_priority_flushing: bool = True
    enable_performance_monitoring: bool = True
    performance_target_ms: Pos = 2000.0
    throughput_target_eps: Pos = 10.0
    report_interval_seconds: Pos = 300.0
    log_format: Literal["json", "console"] = Field(default_factory=_default_log_format)

    def __init__(self, **values: Any) -> None:
        # keyword construction by field name: hand pydantic the alias it validates by;
        # a keyword beats the field's variable, which beats the default
        fields = type(self).model_fields
        given = {env_name(k) if k in fields else k: v for k, v in values.items()}
        super().__init__(**{**environment_values(), **given})

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str) -> str:
        if is_cluster_url(value):
            parse_cluster_url(value)  # its ValueError names what is wrong
        elif not value.lower().startswith(REDIS_SCHEMES) or value.endswith("://"):
            raise ValueError(_RULE_WORDS["redis_url"])
        return value

    @field_validator("rq_redis_url", mode="before")
    @classmethod
    def _check_rq_redis_url(cls, value: object) -> object:
        if value == "":
            return None  # an empty variable is an unset one
        if isinstance(value, str) and (not value.lower().startswith(REDIS_SCHEMES)
                                       or value.endswith("://")):
            raise ValueError(_RULE_WORDS["rq_redis_url"])
        return value

    @field_validator("redis_tls_ca_file", "redis_tls_cert_file", "redis_tls_key_file",
                     "settings_file", mode="before")
    @classmethod
    def _check_file(cls, value: object) -> object:
        if value == "":
            return None  # an empty variable is an unset one (compose files, CI matrices)
        if isinstance(value, str) and not (os.path.isfile(value) and os.access(value, os.R_OK)):
            raise ValueError("must be a readable file")
        return value

    @field_validator("queue")
    @classmethod
    def _check_queue(cls, value: str) -> str:
        return validate_queue_name(value)

    @field_validator("budget")
    @classmethod
    def _check_budget(cls, value: str) -> str:
        if value:
            try:
                validate_budget_name(value)
            except ValueError:
                raise ValueError(_RULE_WORDS["budget"]) from None
        return value

    @field_validator("handler")
    @classmethod
    def _check_handler(cls, value: str) -> str:
        # only the shape: importing it here would load user code in every process
        if not HANDLER_RE.match(value):
            raise ValueError(_RULE_WORDS["handler"])
        return value

    @field_validator("overflow_policy", "log_format", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check_together(self) -> Self:
        problems = _cross_field_problems(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def thresholds_ms(self) -> tuple[int, int, int]:
        """(normal, high, urgent) time thresholds in ms; all normal without priority flushing."""
        normal = _ms(self.time_threshold_seconds)
        if not self.enable_priority_flushing:
            return normal, normal, normal
        high = _ms(self.high_time_threshold_seconds)
        return normal, high, _ms(self.urgent_time_threshold_seconds)

    def tls(self) -> dict[str, str]:
        """redis-py's TLS keywords for the configured files (empty when none is set)."""
        return {kw: value for field, kw in _TLS_KWARGS.items()
                if (value := getattr(self, field)) is not None}

    def redis_client(self, *, blocking_seconds: float | None = None,
                     oom_tolerant: bool = False) -> redis.Redis:
        """A client for ``redis_url`` with the TLS files; every process builds its own here.
        ``oom_tolerant``: a daemon's, whose bookkeeping passes a full Redis (batcher.oom).
        On a cluster, pinned to the node owning this queue's slot (``batcher.cluster``)."""
        return connect(self.redis_url, blocking_seconds=blocking_seconds, tls=self.tls(),
                       oom_tolerant=oom_tolerant, pin_key=self.keys.state)

    @property
    def rq_apart(self) -> bool:
        """True when RQ's keys live on another Redis than the batcher's (BATCH_RQ_REDIS_URL)."""
        return self.rq_redis_url is not None and self.rq_redis_url != self.redis_url

    def rq_redis_client(self, *, oom_tolerant: bool = False) -> redis.Redis:
        """A client for RQ's Redis: ``rq_redis_url`` (TLS files for a rediss:// one), else
        ``redis_url``. Prefer :meth:`rq_client_for`, which reuses a client of the same server."""
        url = self.rq_redis_url or self.redis_url
        tls = self.tls() if url.lower().startswith("rediss://") else {}
        return connect(url, tls=tls, oom_tolerant=oom_tolerant)

    def rq_client_for(self, client: redis.Redis) -> redis.Redis:
        """The client for RQ's keys beside ``client`` (the batcher's): ``client`` itself when
        both live on one Redis, so nothing changes there; else one client of RQ's Redis,
        built once per ``client`` and kept on it."""
        if not self.rq_apart:
            return client
        rq_client: redis.Redis | None = getattr(client, "_batcher_rq_client", None)
        if rq_client is None:
            from batcher.oom import OomTolerantRedis

            rq_client = self.rq_redis_client(oom_tolerant=isinstance(client, OomTolerantRedis))
            client._batcher_rq_client = rq_client  # type: ignore[attr-defined]
        return rq_client

    @property
    def keys(self) -> QueueKeys:
        """The Redis key names of this queue."""
        return QueueKeys(self.queue)

    @property
    def job_lease_ms(self) -> int:
        """How long a claimed batch is leased to its worker: job timeout plus grace."""
        return _ms(self.job_timeout_seconds + self.lease_grace_seconds)

    def limits(self) -> dict[str, object]:
        """The flush-relevant limits, as ints and floats a Redis hash can hold.

        The coordinator writes them to state so that a process whose settings differ
        can warn. The current size threshold is not here: adaptive sizing owns it.
        """
        normal, high, urgent = self.thresholds_ms()
        return {
            "max_buffer_size": self.max_buffer_size,
            "max_buffer_bytes": self.max_buffer_bytes,
            "min_batch_size": self.min_batch_size,
            "max_batch_size": self.max_batch_size,
            "max_batch_bytes": self.max_batch_bytes,
            "max_entry_bytes": self.max_entry_bytes,
            "time_threshold_ms": normal,
            "high_time_threshold_ms": high,
            "urgent_time_threshold_ms": urgent,
            "early_flush_pressure": self.early_flush_pressure,
            "emergency_flush_pressure": self.emergency_flush_pressure,
            "max_buffer_age_ms": _ms(self.max_buffer_age_seconds),
            "max_inflight_batches": self.max_inflight_batches,
            "dispatch_lease_ms": _ms(self.dispatch_lease_seconds),
            "enable_adaptive_timeout": int(self.enable_adaptive_timeout),
            "dedupe_window_ms": _ms(self.dedupe_window_seconds),
            "dedupe_max_ids": self.dedupe_max_ids,
        }

    def with_overrides(self, **overrides: Any) -> BatchProcessingConfig:
        """A validated copy with ``overrides`` (by field name); raises ``ConfigError``."""
        values = self.model_dump()
        values.update(overrides)
        try:
            return type(self)(**values)
        except ValidationError as exc:
            raise ConfigError(describe_errors(exc)) from None


_VARIABLES = frozenset(env_name(f) for f in BatchProcessingConfig.model_fields)


def load_config(**overrides: Any) -> BatchProcessingConfig:
    """Settings from the environment plus ``overrides`` (by field name).

    An override whose value is None is ignored, so a command-line option that was not
    given falls through to the environment. Raises ``ConfigError`` with one line:
    ``BATCH_X='value': rule`` per bad value, joined by ``"; "``.
    """
    given = {name: value for name, value in overrides.items() if value is not None}
    try:
        return BatchProcessingConfig(**given)
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc)) from None


def describe_errors(exc: ValidationError) -> str:
    """One line for a ``ValidationError`` of ``BatchProcessingConfig``."""
    return "; ".join(describe_error(error) for error in exc.errors(include_url=False))


def describe_error(error: Any) -> str:
    """One line for one error of a ``ValidationError`` (``exc.errors()``)."""
    if not error["loc"]:
        # a cross-field rule: its message already names the variables and values
        return str(error.get("ctx", {}).get("error", error["msg"]))
    field = _field_of(str(error["loc"][0]))
    if field is None:
        return f"{error['loc'][0]}: unknown setting"
    rule = rule_words(field)
    detail = str(error.get("ctx", {}).get("error", ""))
    if field == "redis_url" and detail and detail != rule:  # a malformed cluster URL
        rule += f" ({detail})"
    return f"{env_name(field)}={_shown(field, error['input'])}: {rule}"


def rule_words(field: str) -> str:
    """The rule of ``field`` in words, e.g. ``must be an integer >= 1``."""
    if field in _RULE_WORDS:
        return _RULE_WORDS[field]
    info = BatchProcessingConfig.model_fields[field]
    if info.annotation is bool:
        return "must be true or false"
    kind = "an integer" if info.annotation is int else "a number"
    bounds = []
    for item in info.metadata:
        for attr, sign in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
            bound = getattr(item, attr, None)
            if bound is not None:
                bounds.append(f"{sign} {_number(bound)}")
    return f"must be {kind} {' and '.join(bounds)}".rstrip()


def _field_of(loc: str) -> str | None:
    for name in BatchProcessingConfig.model_fields:
        if loc in (name, env_name(name)):
            return name
    return None


def _cross_field_problems(cfg: BatchProcessingConfig) -> list[str]:
    problems: list[str] = []

    def check(ok: bool, field: str, rule: str) -> None:
        if not ok:
            problems.append(f"{env_name(field)}={_shown(field, getattr(cfg, field))}: {rule}")

    check(cfg.min_batch_size <= cfg.max_batch_size, "min_batch_size",
          f"must be <= BATCH_MAX_BATCH_SIZE ({cfg.max_batch_size})")
    check(cfg.min_batch_size <= cfg.size_threshold <= cfg.max_batch_size, "size_threshold",
          f"must be between BATCH_MIN_BATCH_SIZE ({cfg.min_batch_size}) "
          f"and BATCH_MAX_BATCH_SIZE ({cfg.max_batch_size})")
    check(cfg.max_entry_bytes <= cfg.max_batch_bytes, "max_entry_bytes",
          f"must be <= BATCH_MAX_BATCH_BYTES ({cfg.max_batch_bytes})")
    check(cfg.high_time_threshold_seconds <= cfg.time_threshold_seconds,
          "high_time_threshold_seconds",
          f"must be <= BATCH_TIME_THRESHOLD_SEC ({_number(cfg.time_threshold_seconds)})")
    check(cfg.urgent_time_threshold_seconds <= cfg.high_time_threshold_seconds,
          "urgent_time_threshold_seconds",
          f"must be <= BATCH_HIGH_TIME_THRESHOLD_SEC ({_number(cfg.high_time_threshold_seconds)})")
    check(cfg.early_flush_pressure < cfg.emergency_flush_pressure, "early_flush_pressure",
          f"must be < BATCH_EMERGENCY_FLUSH_PRESSURE ({_number(cfg.emergency_flush_pressure)})")
    tls_set = [f for f in _TLS_KWARGS if getattr(cfg, f) is not None]
    if tls_set and not cfg.redis_url.lower().startswith(("rediss://", "rediss+cluster://")):
        problems.append(f"{env_name(tls_set[0])} is set: BATCH_REDIS_URL must be a rediss:// "
                        f"URL, not {_shown('redis_url', cfg.redis_url)}")
    # RQ's keys are not hash-tagged: they span slots, which a cluster refuses
    check(cfg.rq_redis_url is not None or not is_cluster_url(cfg.redis_url), "redis_url",
          "names a Redis Cluster: set BATCH_RQ_REDIS_URL to a standalone Redis for RQ's keys "
          "(RQ is not cluster-safe)")
    check((cfg.redis_tls_cert_file is None) == (cfg.redis_tls_key_file is None),
          "redis_tls_cert_file", "BATCH_REDIS_TLS_CERT_FILE and BATCH_REDIS_TLS_KEY_FILE "
          "go together")
    check(cfg.shards == 1 or split_shard(cfg.queue)[1] is None, "shards",
          f"must be 1 for a shard's own queue ({cfg.queue!r})")
    check(cfg.max_buffer_age_seconds >= cfg.time_threshold_seconds, "max_buffer_age_seconds",
          f"must be >= BATCH_TIME_THRESHOLD_SEC ({_number(cfg.time_threshold_seconds)})")
    return problems


def _shown(field: str, value: object) -> str:
    """A value as an error message quotes it: one line, cut short, never a password."""
    text = _number(value) if isinstance(value, float) else str(value)
    if field in ("redis_url", "rq_redis_url"):
        text = redact(text)
    if len(text) > _MAX_SHOWN:
        text = text[:_MAX_SHOWN] + "..."
    return repr(text)


def _number(value: object) -> str:
    # 300.0 reads as 300 in a message about BATCH_TIME_THRESHOLD_SEC
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _ms(seconds: float) -> int:
    return int(round(seconds * 1000))
