"""Logging for entry points: structlog to stderr, JSON lines or console, RQ's logs included.

Only entry points (the CLI, scripts) call :func:`configure`; the library just logs through
``structlog.stdlib.get_logger(__name__)``. Standard-library records (RQ's ``rq.worker``) go
through the same renderer via structlog's ``ProcessorFormatter``, so a log collector sees one
format on stderr while stdout stays free for results.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, TextIO

import orjson
import structlog
from structlog.typing import Processor

from batcher.redaction import scrub_processor


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a record is emitted.

    Test runners (click's CliRunner, pytest's capture) swap ``sys.stderr`` and close the
    replacement afterwards; a handler that kept the stream it was built with would then
    write to a closed file.
    """

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        self.stream: TextIO = sys.stderr
        super().emit(record)


def _orjson_dumps(obj: Any, **kwargs: Any) -> str:
    # ProcessorFormatter needs str; orjson gives bytes. str() whatever orjson cannot encode.
    option = orjson.OPT_NON_STR_KEYS
    return orjson.dumps(obj, default=kwargs.get("default", str), option=option).decode()


def _default_json() -> bool:
    # BATCH_LOG_FORMAT wins; else a person at a terminal reads console lines, anything else JSON
    chosen = os.environ.get("BATCH_LOG_FORMAT", "").strip().lower()
    if chosen in ("json", "console"):
        return chosen == "json"
    return not (sys.stderr is not None and sys.stderr.isatty())


def configure(json: bool | None = None, level: str = "INFO") -> None:
    """Route structlog and stdlib logging to stderr, as JSON lines when ``json``.

    ``json=None`` follows ``BATCH_LOG_FORMAT`` (the settings' ``log_format``), else JSON when
    stderr is not a terminal. Calling it again replaces the previous configuration.
    """
    as_json = _default_json() if json is None else json
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    renderer: Processor
    if as_json:
        renderer = structlog.processors.JSONRenderer(serializer=_orjson_dumps)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    # exceptions become text first, so that no secret in a traceback or message escapes the
    # scrub (batcher.redaction), which runs last before rendering
    tail: list[Processor] = [structlog.processors.format_exc_info, scrub_processor, renderer]
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # not cached: tests reconfigure (capture_logs) after a CLI run has logged
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *tail],
    )
    handler = _StderrHandler()
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # RQ gives its loggers their own stdout handlers unless one is already in effect; ours
    # on the root is, so RQ's records propagate here (and stay off stdout).
    for name in ("rq.worker", "rq.job", "rq.scheduler"):
        logging.getLogger(name).propagate = True
