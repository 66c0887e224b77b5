"""Every command is listed; one whose extra is missing fails with one line naming the extra."""

from __future__ import annotations

import sys

import pytest
from click.testing import CliRunner

from batcher.cli import COMMANDS, cli


def _without(monkeypatch: pytest.MonkeyPatch, missing: str, *loaded_prefixes: str) -> None:
    """As if ``missing`` were not installed: its import raises ModuleNotFoundError, and the
    modules that imported it are loaded again."""
    for name in list(sys.modules):
        if name.startswith((f"{missing}.", *loaded_prefixes)):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, missing, None)


def test_help_lists_every_command_even_without_an_extra(monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    _without(monkeypatch, "starlette", "batcher.dashboard", "batcher.cli.dashboard")
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0, result.output
    listed = {line.split()[0] for line in result.output.split("Commands:")[1].splitlines()
              if line.strip()}
    assert listed == set(COMMANDS)
    assert "needs the [dashboard] extra" in result.output


@pytest.mark.parametrize(("missing", "loaded", "args", "extra"), [
    ("starlette", ("batcher.dashboard", "batcher.cli.dashboard"), ["dashboard"], "dashboard"),
    ("prometheus_client", ("batcher.exporter", "batcher.cli.exporter"), ["exporter", "--port",
                                                                         "0"], "exporter"),
    ("httpx", ("batcher.feeds.fetch", "batcher.feeds.runner", "batcher.feeds.schedule"),
     ["fetch", "--feeds", "feeds.toml"], "feeds"),
])
def test_a_command_without_its_extra_names_the_extra_in_one_line(
    monkeypatch: pytest.MonkeyPatch, missing: str, loaded: tuple[str, ...], args: list[str],
    extra: str,
) -> None:
    _without(monkeypatch, missing, *loaded)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2
    assert result.output == (f"batcher: `batcher {args[0]}` needs the [{extra}] extra (no "
                             f"module {missing!r}): pip install 'redis-batcher[{extra}]'\n")


def test_demo_without_its_extra_names_the_extra_before_starting_anything(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the demo's fetchers import httpx in child processes: without this check they died
    # with tracebacks while the demo waited for them
    _without(monkeypatch, "httpx")
    result = CliRunner().invoke(cli, ["demo", "--entries", "1"])
    assert result.exit_code == 2
    assert result.output == ("batcher: `batcher demo` needs the [demo] extra (no module "
                             "'httpx'): pip install 'redis-batcher[demo]'\n")


def test_fetch_status_needs_no_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    _without(monkeypatch, "httpx", "batcher.feeds.fetch", "batcher.cli.fetch")
    result = CliRunner().invoke(cli, ["fetch-status", "--help"])
    assert result.exit_code == 0, result.output
    assert "Each scheduled feed" in result.output
