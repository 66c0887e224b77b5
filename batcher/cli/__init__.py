"""The ``batcher`` command (DESIGN §9 "Command line").

Each command group lives in its own module, which exposes ``commands``: a list of click
commands this package registers on the ``batcher`` group. To add one (``demo``, ``top``,
``exporter``), write ``batcher/cli/<name>.py`` with ``commands = [...]`` and add ``<name>``
to ``COMMAND_MODULES``; a listed module that does not exist yet is skipped, so a command can
be wired here before its module lands.

Exit codes: 0 success (duplicates are success), 1 a failed check, 2 bad usage / a bad
setting / bad input (nothing written), 3 buffer full, 4 Redis unreachable. Our own errors
are one line on stderr, never a traceback; results go to stdout, logs to stderr.
"""

from __future__ import annotations

import faulthandler
import gc
import importlib
from typing import Any

import click

from batcher.cli.common import translate

COMMAND_MODULES = (
    "enqueue", "coordinator", "worker", "info", "dead", "fetch", "weight", "budget",
    # owned by others: observe (top, exporter); demo is registered once cli/demo.py exists
    "observe", "demo", "control", "dashboard",
)


class BatcherGroup(click.Group):
    """Turns our own exceptions into one stderr line and the exit code of DESIGN §9."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as exc:
            failed = translate(exc)
            if failed is None:
                raise
            click.echo(f"batcher: {failed}", err=True)
            raise click.exceptions.Exit(failed.exit_code) from None


@click.group(cls=BatcherGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="redis-batcher")
def cli() -> None:
    """redis-batcher: Redis-backed batch accumulator and dispatcher."""


def _register(group: click.Group) -> None:
    for name in COMMAND_MODULES:
        qualified = f"{__name__}.{name}"
        try:
            module = importlib.import_module(qualified)
        except ModuleNotFoundError as exc:
            if exc.name != qualified:
                raise
            continue
        for command in module.commands:
            group.add_command(command)


_register(cli)


def main() -> None:
    """Console-script entry point (``batcher = "batcher.cli:main"``)."""
    # A crash in a C extension prints the Python stack of every thread, not just "-11".
    faulthandler.enable()
    try:
        cli.main(prog_name="batcher")
    finally:
        # Collect reference cycles (redis-py's parser <-> hiredis Reader) while every module
        # is still alive: a daemon once died with SIGSEGV after a clean stop, in the final
        # collection at interpreter shutdown (a known hazard of C-extension deallocators).
        gc.collect()
