"""Per-queue settings from a TOML file (``--settings FILE`` or ``BATCH_SETTINGS_FILE``).

The file has a ``[defaults]`` table and one ``[queues.<name>]`` table per queue, with the
field names of :class:`~batcher.config.BatchProcessingConfig` (``time_threshold_seconds``,
``shards``, ...)::

    [defaults]
    time_threshold_seconds = 60

    [queues.feeds-hot]
    shards = 3
    size_threshold = 50

A queue's settings, the first that sets a field winning: a command-line option, its
``[queues.<name>]`` table, ``BATCH_*`` variables, ``[defaults]``, the built-in default. So the
file's table for one queue beats the process-wide environment, and the environment beats the
file's defaults. A shard (``Q~i``) takes the table of its queue ``Q``.

Anything wrong raises :class:`~batcher.errors.ConfigError` naming the file, the table and the
field. ``tomllib`` is imported only when a file is read: most processes never read one.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import ValidationError

from batcher.config import (
    BatchProcessingConfig,
    describe_error,
    env_name,
    environment_values,
    load_config,
    rule_words,
)
from batcher.errors import ConfigError
from batcher.keys import QUEUE_NAME_RE, shard_names, split_shard

SETTINGS_FILE_VAR = env_name("settings_file")
# fields a table may not set: the table's name is the queue, and the file cannot name a file
_NOT_IN_FILE = frozenset({"queue", "settings_file"})
GLOB_CHARS = frozenset("*?[")


class SettingsFile:
    """A parsed, checked settings file: field name -> value per table. (A plain class: a
    dataclass costs every daemon's start-up a few ms to build, for three attributes.)"""

    __slots__ = ("defaults", "path", "queues")

    def __init__(self, path: str, defaults: dict[str, Any],
                 queues: dict[str, dict[str, Any]]) -> None:
        self.path, self.defaults, self.queues = path, defaults, queues


def _bad(path: str, where: str, message: str) -> ConfigError:
    return ConfigError(f"{path}: {where}: {message}" if where else f"{path}: {message}")


def _check_table(path: str, where: str, table: object) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise _bad(path, where, "must be a table of settings")
    fields = BatchProcessingConfig.model_fields
    for key in table:
        if key in _NOT_IN_FILE:
            why = ("the table's name is the queue" if key == "queue"
                   else "a settings file cannot name another")
            raise _bad(path, where, f"{key!r} cannot be set here ({why})")
        if key not in fields:
            import difflib

            near = difflib.get_close_matches(key, list(fields), n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise _bad(path, where, f"unknown setting {key!r}{hint}")
    return dict(table)


def read_settings_file(path: str) -> SettingsFile:
    """Parse and check ``path``; each queue's settings are validated too, so a bad value
    fails here, at start-up. Raises ``ConfigError``."""
    import tomllib  # only when a file is used: start-up time is measured

    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise _bad(path, "", f"cannot read it ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise _bad(path, "", f"not valid TOML: {exc}") from None
    for key in data:
        if key not in ("defaults", "queues"):
            raise _bad(path, "", f"unknown table [{key}]: expected [defaults] and "
                                 "[queues.<name>]")
    defaults = _check_table(path, "[defaults]", data.get("defaults", {}))
    queues_raw = data.get("queues", {})
    if not isinstance(queues_raw, dict):
        raise _bad(path, "", "'queues' must be tables [queues.<name>]")
    queues: dict[str, dict[str, Any]] = {}
    for name, table in queues_raw.items():
        if not QUEUE_NAME_RE.match(name):
            raise _bad(path, f"[queues.{name}]", "a queue name must match [A-Za-z0-9_-]{1,64}")
        queues[name] = _check_table(path, f"[queues.{name}]", table)
    parsed = SettingsFile(path, defaults, queues)
    settings = QueueSettings(parsed)
    settings.config_for(next(iter(queues), "default"))  # [defaults] alone, or the first queue
    for name in queues:
        settings.config_for(name)
    return parsed


def _env_fields() -> set[str]:
    # the fields a BATCH_* variable sets (read whatever the case of its name)
    present = environment_values()
    return {f for f in BatchProcessingConfig.model_fields if env_name(f) in present}


class QueueSettings:
    """Every queue's settings: the file (if any), the environment, the command line."""

    def __init__(self, file: SettingsFile | None = None, **cli: Any) -> None:
        self.file = file
        self.cli = {k: v for k, v in cli.items() if v is not None}

    def config_for(self, queue: str) -> BatchProcessingConfig:
        """``queue``'s settings (a shard ``Q~i`` gets ``Q``'s, as one queue of its own).
        Raises ``ConfigError`` naming the file, table and field of a bad value."""
        base, shard = split_shard(queue)
        if self.file is None:
            return load_config(**{**self.cli, "queue": queue,
                                  **({"shards": 1} if shard is not None else {})})
        env = _env_fields()
        from_defaults = {k: v for k, v in self.file.defaults.items() if k not in env}
        from_table = self.file.queues.get(base, {})
        values = {**from_defaults, **from_table, **self.cli, "queue": queue}
        if shard is not None:
            values["shards"] = 1  # a shard is one queue; its queue's count is Q's setting
        try:
            return BatchProcessingConfig(**values)
        except ValidationError as exc:
            raise self._describe(exc, base, from_defaults, from_table) from None

    def _describe(self, exc: ValidationError, queue: str, defaults: Mapping[str, Any],
                  table: Mapping[str, Any]) -> ConfigError:
        assert self.file is not None
        path = self.file.path
        lines: list[str] = []
        for error in exc.errors(include_url=False):
            loc = str(error["loc"][0]) if error["loc"] else ""
            name = next((f for f in BatchProcessingConfig.model_fields
                         if loc in (f, env_name(f))), None)
            if name is not None and name not in self.cli and (name in table or
                                                              name in defaults):
                where = f"[queues.{queue}]" if name in table else "[defaults]"
                lines.append(f"{path}: {where}: {name} = {error['input']!r}: "
                             f"{rule_words(name)}")
            else:
                # the environment's own value, or a rule across fields: name the queue
                lines.append(f"{path}: queue {queue!r}: {describe_error(error)}")
        return ConfigError("; ".join(lines))

    def names(self) -> list[str]:
        """The queues the file has a table for."""
        return list(self.file.queues) if self.file is not None else []


def load_settings(settings_file: str | None = None, **cli: Any) -> QueueSettings:
    """The settings of every queue: ``settings_file`` (else ``BATCH_SETTINGS_FILE``), the
    environment and the command line's ``cli`` options (None: not given)."""
    path = settings_file or os.environ.get(SETTINGS_FILE_VAR) or None
    return QueueSettings(read_settings_file(path) if path else None, **cli)


def config_for_queue(queue: str) -> BatchProcessingConfig:
    """``queue``'s settings as a worker's job reads them: the environment plus the settings
    file ``BATCH_SETTINGS_FILE`` names (exported by ``batcher worker --settings``)."""
    if not os.environ.get(SETTINGS_FILE_VAR):
        return QueueSettings().config_for(queue)  # no file: no tomllib, as before
    return load_settings().config_for(queue)


def env_config() -> BatchProcessingConfig:
    """The settings of ``BATCH_QUEUE`` (a producer's default): the environment, plus the
    queue's table of ``BATCH_SETTINGS_FILE`` when one is named."""
    if not os.environ.get(SETTINGS_FILE_VAR):
        return load_config()
    return load_settings().config_for(os.environ.get(env_name("queue")) or "default")


def is_pattern(name: str) -> bool:
    return any(c in GLOB_CHARS for c in name)


def resolve_queues(asked: Iterable[str], settings: QueueSettings,
                   found: Iterable[str] = ()) -> list[str]:
    """The queue names ``asked`` stands for, in order, each once: a plain name is itself; a
    pattern (``feeds-*``, fnmatch) every queue of the settings file and of ``found`` (queues
    found in Redis; a shard counts as its queue) whose name it matches."""
    import fnmatch

    known = sorted(set(settings.names()) | {split_shard(q)[0] for q in found})
    out: list[str] = []
    for name in asked:
        matches = ([q for q in known if fnmatch.fnmatchcase(q, name)] if is_pattern(name)
                   else [name])
        out += [q for q in matches if q not in out]
    return out


def serving_configs(queues: Iterable[str], settings: QueueSettings
                    ) -> list[BatchProcessingConfig]:
    """One config per queue a coordinator or worker serves: a sharded queue's shards."""
    out: list[BatchProcessingConfig] = []
    for queue in queues:
        config = settings.config_for(queue)
        out += ([config] if config.shards == 1
                else [settings.config_for(q) for q in shard_names(queue, config.shards)])
    return out
