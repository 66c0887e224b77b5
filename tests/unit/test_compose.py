"""docker-compose.yml matches the design: the topology, Redis's safety flags, worker shutdown."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
# The project's own copy first, then the shared design page of the working setup.
DESIGN_FILES = (ROOT / "docs" / "architecture.md", ROOT.parent / "shared" / "DESIGN.md")
# The `batcher` commands of DESIGN §9, for when DESIGN.md is not next to the checkout.
KNOWN_SUBCOMMANDS = {
    "enqueue", "coordinator", "worker", "stats", "flush", "check", "keys", "result", "dead",
    "demo",
}  # fmt: skip
FALLBACK_JOB_TIMEOUT_SECONDS = 180


def _default_job_timeout_seconds() -> float:
    try:
        from batcher.config import BatchProcessingConfig
    except Exception:  # pragma: no cover - only while batcher.config is being written
        # TODO: drop this fallback once batcher.config is in place everywhere.
        return FALLBACK_JOB_TIMEOUT_SECONDS
    default: float = BatchProcessingConfig.model_fields["job_timeout_seconds"].default
    return default


def _design_subcommands() -> set[str]:
    for path in DESIGN_FILES:
        if path.exists():
            # Rows of the §9 command table: | `batcher <sub> ...` | does |
            found = set(re.findall(r"^\| `batcher ([a-z]+)", path.read_text(), re.MULTILINE))
            if found:
                return found
    return KNOWN_SUBCOMMANDS


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
    assert {"redis", "coordinator", "worker", "producer"} <= set(compose["services"])


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


def test_every_batcher_service_runs_a_designed_subcommand(compose: dict[str, Any]) -> None:
    subcommands = _design_subcommands()
    for name, service in compose["services"].items():
        if name == "redis":
            continue
        args = _command(service)
        assert args[0] == "batcher", name
        assert args[1] in subcommands, f"{name}: `batcher {args[1]}` is not in DESIGN §9"


def test_batcher_services_share_redis_url_and_wait_for_healthy_redis(
    compose: dict[str, Any],
) -> None:
    for name, service in compose["services"].items():
        if name == "redis":
            continue
        assert service["environment"]["BATCH_REDIS_URL"] == "redis://redis:6379/0", name
        assert service["depends_on"]["redis"]["condition"] == "service_healthy", name


def test_duration_parser_reads_compose_durations() -> None:
    assert _duration_seconds("200s") == 200
    assert _duration_seconds("1m30s") == 90
