"""docker-compose.yml matches the design: the topology, Redis's safety flags, worker shutdown."""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"


def _default_job_timeout_seconds() -> float:
    from batcher.config import BatchProcessingConfig

    default: float = BatchProcessingConfig.model_fields["job_timeout_seconds"].default
    return default


def _duration_seconds(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"bad duration {text!r}"
    return sum(float(n) * units[u] for n, u in parts)


def _command(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    return command.split() if isinstance(command, str) else [str(c) for c in command]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return data


def test_compose_has_the_whole_topology(compose: dict[str, Any]) -> None:
    assert {"redis", "coordinator", "worker", "producer", "fetcher", "exporter"} <= set(
        compose["services"])


def test_fetcher_reads_a_mounted_feeds_file_that_exists(compose: dict[str, Any]) -> None:
    fetcher = compose["services"]["fetcher"]
    args = _command(fetcher)
    feeds_in_container = args[args.index("--feeds") + 1]
    host_file, target, _mode = fetcher["volumes"][0].split(":")
    assert target == feeds_in_container
    from batcher.feeds.fetch import load_feeds

    assert load_feeds(COMPOSE_FILE.parent / host_file)


def test_exporter_listens_on_every_interface_and_publishes_its_port(
    compose: dict[str, Any],
) -> None:
    exporter = compose["services"]["exporter"]
    args = _command(exporter)
    assert args[:2] == ["batcher", "exporter"]
    assert args[args.index("--addr") + 1] == "0.0.0.0"
    port = args[args.index("--port") + 1]
    assert f"{port}:{port}" in exporter["ports"]


def test_redis_never_evicts_and_keeps_an_append_only_file(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    args = _command(redis)
    flags = dict(zip(args[1::2], args[2::2], strict=False))
    assert args[0] == "redis-server"
    assert flags["--maxmemory-policy"] == "noeviction"
    assert flags["--appendonly"] == "yes"
    assert flags["--appendfsync"] == "everysec"
    assert redis["volumes"] and redis["healthcheck"]["test"]


def test_worker_runs_two_replicas(compose: dict[str, Any]) -> None:
    assert compose["services"]["worker"]["deploy"]["replicas"] == 2


def test_worker_grace_period_outlasts_the_job_timeout(compose: dict[str, Any]) -> None:
    grace = _duration_seconds(compose["services"]["worker"]["stop_grace_period"])
    assert grace > _default_job_timeout_seconds()


def _parse(args: list[str]) -> dict[str, Any]:
    """Parse ``batcher <command> <options>`` as the CLI would, without running it: click's
    ``make_context`` raises UsageError for an unknown, misspelt or malformed option."""
    import click

    from batcher.cli import cli

    assert args[0] == "batcher"
    command = cli.get_command(click.Context(cli), args[1])
    assert command is not None, f"`batcher {args[1]}` is not a command"
    with command.make_context(args[1], args[2:]) as ctx:
        return dict(ctx.params)


def test_every_batcher_service_command_parses_with_its_real_arguments(
    compose: dict[str, Any],
) -> None:
    parsed = {name: _parse(_command(service))
              for name, service in compose["services"].items() if name != "redis"}
    assert {"coordinator", "worker", "producer", "fetcher", "exporter"} <= set(parsed)
    assert (parsed["exporter"]["port"], parsed["exporter"]["addr"]) == (9108, "0.0.0.0")
    assert str(parsed["fetcher"]["feeds_path"]) == "/etc/batcher/feeds.toml"
    assert (parsed["producer"]["source"], parsed["producer"]["priority"]) == (
        "compose-example", "1")


def test_a_misspelt_compose_option_would_be_caught() -> None:
    import click

    with pytest.raises(click.UsageError):
        _parse(["batcher", "exporter", "--prot", "9108"])
    with pytest.raises(click.UsageError):
        _parse(["batcher", "exporter", "--port", "nine"])


def test_batcher_services_share_redis_url_and_wait_for_healthy_redis(
    compose: dict[str, Any],
) -> None:
    for name, service in compose["services"].items():
        if name == "redis":
            continue
        # the compose network's own redis service, read from the file; nothing connects
        assert service["environment"]["BATCH_REDIS_URL"] == "redis://redis:6379/0", name
        assert service["depends_on"]["redis"]["condition"] == "service_healthy", name


def test_duration_parser_reads_compose_durations() -> None:
    assert _duration_seconds("200s") == 200
    assert _duration_seconds("1m30s") == 90


# the application extra each command needs (README "Use it"; the core ones need none)
_EXTRA_OF_COMMAND = {"fetch": "feeds", "exporter": "exporter", "dashboard": "dashboard",
                     "demo": "demo"}


def _image_extras() -> set[str]:
    dockerfile = (ROOT / "Dockerfile").read_text()
    found = re.search(r"^ARG EXTRAS=(\S*)$", dockerfile, re.MULTILINE)
    assert found, "the Dockerfile's ARG EXTRAS line"
    assert 'pip install ".[${EXTRAS}]"' in dockerfile
    return set(found.group(1).split(","))


def test_the_image_installs_the_extra_of_every_service_it_runs(compose: dict[str, Any]) -> None:
    # since issue 16 the fetcher and the exporter are extras: an image without them would
    # start those services only to fail with "needs the [feeds] extra"
    extras = _image_extras()
    for name, service in compose["services"].items():
        if name == "redis":
            continue
        needed = _EXTRA_OF_COMMAND.get(_command(service)[1])
        assert needed is None or needed in extras, (name, needed, extras)
        handler = service["environment"]["BATCH_HANDLER"]
        assert not handler.startswith("batcher.llm.") or "llm" in extras, (name, handler)
        module, _, function = handler.partition(":")
        assert callable(getattr(importlib.import_module(module), function)), handler
