"""Per-queue settings from a TOML file: the tables, the precedence, the errors, the patterns."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from batcher.errors import ConfigError
from batcher.rq.worker import fair_order
from batcher.settings_file import (
    config_for_queue,
    load_settings,
    resolve_queues,
    serving_configs,
)

EXAMPLE = """
[defaults]
time_threshold_seconds = 600
size_threshold = 20

[queues.feeds-hot]
shards = 3
size_threshold = 40

[queues.feeds-quiet]
time_threshold_seconds = 400
"""


pytestmark = pytest.mark.usefixtures("clean_batch_env")


def write(tmp_path: Path, text: str, name: str = "queues.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_a_queue_takes_its_table_over_the_defaults(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, EXAMPLE))
    hot, quiet, other = (settings.config_for(q) for q in ("feeds-hot", "feeds-quiet", "x"))
    assert (hot.shards, hot.size_threshold, hot.time_threshold_seconds) == (3, 40, 600)
    assert (quiet.size_threshold, quiet.time_threshold_seconds) == (20, 400)
    # a queue without a table: [defaults], then the built-in defaults
    assert (other.shards, other.size_threshold, other.time_threshold_seconds) == (1, 20, 600)
    assert other.max_batch_size == 50


def test_precedence_is_option_then_table_then_environment_then_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATCH_SIZE_THRESHOLD", "30")  # beats [defaults]' 20
    monkeypatch.setenv("BATCH_TIME_THRESHOLD_SEC", "900")  # beats [defaults]' 600
    settings = load_settings(write(tmp_path, EXAMPLE))
    assert settings.config_for("x").size_threshold == 30
    assert settings.config_for("x").time_threshold_seconds == 900
    assert settings.config_for("feeds-hot").size_threshold == 40  # its table beats the env
    with_option = load_settings(write(tmp_path, EXAMPLE), redis_url="redis://h:7/0")
    assert with_option.config_for("feeds-hot").redis_url == "redis://h:7/0"


def test_the_file_comes_from_batch_settings_file_when_no_option_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATCH_SETTINGS_FILE", write(tmp_path, EXAMPLE))
    assert config_for_queue("feeds-hot").size_threshold == 40
    # a shard is one queue of its own, with its queue's table
    shard = config_for_queue("feeds-hot~2")
    assert (shard.queue, shard.shards, shard.size_threshold) == ("feeds-hot~2", 1, 40)


def test_without_a_file_a_queue_has_the_environment_settings(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATCH_SIZE_THRESHOLD", "7")
    config = config_for_queue("plain")
    assert (config.queue, config.size_threshold) == ("plain", 7)


def test_a_sharded_queue_is_served_as_its_shards_in_order(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, EXAMPLE))
    names = [c.queue for c in serving_configs(["feeds-quiet", "feeds-hot"], settings)]
    assert names == ["feeds-quiet", "feeds-hot~0", "feeds-hot~1", "feeds-hot~2"]


def test_a_pattern_matches_the_files_queues_and_those_found_in_redis(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, EXAMPLE))
    found = ["feeds-new", "feeds-hot~0", "feeds-hot~1", "other"]
    assert resolve_queues(["feeds-*"], settings, found) == [
        "feeds-hot", "feeds-new", "feeds-quiet"]
    # a plain name is itself, each queue once
    assert resolve_queues(["other", "o*", "x"], settings, found) == ["other", "x"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[queues.a]\nsize_treshold = 3\n",
         "queues.toml: [queues.a]: unknown setting 'size_treshold' (did you mean "
         "'size_threshold'?)"),
        ("[queues.a]\ntime_threshold_seconds = -1\n",
         "queues.toml: [queues.a]: time_threshold_seconds = -1: must be a number > 0"),
        ("[defaults]\nshards = 0\n",
         "queues.toml: [defaults]: shards = 0: must be an integer >= 1 and <= 1024"),
        ("[queues.a]\nqueue = 'b'\n",
         "queues.toml: [queues.a]: 'queue' cannot be set here (the table's name is the queue)"),
        ("[queues.'bad name']\nshards = 2\n",
         "queues.toml: [queues.bad name]: a queue name must match [A-Za-z0-9_-]{1,64}"),
        ("[queue.a]\nshards = 2\n",
         "queues.toml: unknown table [queue]: expected [defaults] and [queues.<name>]"),
        ("[queues.a]\nshards = \n", "queues.toml: not valid TOML: "),
        ("[queues.a]\nmin_batch_size = 60\n",
         "queues.toml: queue 'a': BATCH_MIN_BATCH_SIZE='60': must be <= BATCH_MAX_BATCH_SIZE "
         "(50)"),
    ],
)
def test_a_bad_file_is_a_config_error_naming_file_table_and_field(
    tmp_path: Path, text: str, message: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert str(caught.value).startswith(str(tmp_path / message))


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.toml: cannot read it"):
        load_settings(str(tmp_path / "missing.toml"))


def _queues(*names: str) -> list[SimpleNamespace]:
    return [SimpleNamespace(name=n) for n in names]


def test_a_worker_takes_turns_between_queues_urgent_tier_first() -> None:
    order = _queues("batcher.a.urgent", "batcher.b.urgent", "batcher.c.urgent",
                    "batcher.a.high", "batcher.b.high", "batcher.c.high",
                    "batcher.a", "batcher.b", "batcher.c")
    after_a = [q.name for q in fair_order(order, "batcher.a")]
    assert after_a == ["batcher.b.urgent", "batcher.c.urgent", "batcher.a.urgent",
                       "batcher.b.high", "batcher.c.high", "batcher.a.high",
                       "batcher.b", "batcher.c", "batcher.a"]
    # one queue: RQ's own order, untouched
    single = _queues("batcher.a.urgent", "batcher.a.high", "batcher.a")
    assert fair_order(single, "batcher.a") is single
