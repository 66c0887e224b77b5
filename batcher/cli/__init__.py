"""The ``batcher`` command (DESIGN §9 "Command line").

Each command lives in a module of this package; ``COMMANDS`` names it, and the module is
imported only when its command runs (or ``--help`` lists them all), so a worker or coordinator
starts with the imports it needs and nothing else (issue 16: start-up). A command of an
application extra (``fetch``: ``[feeds]``, ``dashboard``, ``exporter``, ``demo``) is listed
whether or not the extra is installed; without it the command fails with one line naming the
extra to install.

Exit codes: 0 success (duplicates are success), 1 a failed check, 2 bad usage / a bad
setting / bad input (nothing written), 3 buffer full, 4 Redis unreachable. Our own errors
are one line on stderr, never a traceback; results go to stdout, logs to stderr.
"""

from __future__ import annotations

import faulthandler
import gc
import importlib
import sys
from typing import Any, cast

import click


def _import_structlog_without_rich() -> None:
    """Import structlog with rich hidden: structlog imports rich (~0.08 s of CPU, a fifth of
    a daemon's start-up) for pretty tracebacks that our logs never use, as they turn
    exceptions into plain text before any renderer (``batcher.logs``). rich stays importable
    afterwards for the commands that draw tables (``stats``, ``dead list``, ``top``)."""
    if "structlog" in sys.modules or "rich" in sys.modules:
        return
    modules = cast("dict[str, object]", sys.modules)
    modules["rich"] = None  # `import rich` raises ImportError
    try:
        import structlog  # noqa: F401  # structlog treats rich as optional
    except ImportError:
        # a structlog that needs rich: load both as usual
        for name in [m for m in sys.modules if m.partition(".")[0] == "structlog"]:
            del sys.modules[name]
    finally:
        del sys.modules["rich"]
    import structlog  # noqa: F401, F811


# before any command's module imports structlog
_import_structlog_without_rich()

# main() pauses the cyclic garbage collector until the command's module is loaded
_gc_paused = False


def _resume_gc() -> None:
    global _gc_paused
    if _gc_paused:
        _gc_paused = False
        # what the imports built lives as long as the process: out of every later collection
        # (and shared copy-on-write with a forking worker's work horses)
        gc.freeze()
        gc.enable()

# command -> the module under batcher.cli that defines it (in its ``commands`` list)
COMMANDS = {
    "enqueue": "enqueue",
    "coordinator": "coordinator", "flush": "coordinator",
    "worker": "worker",
    "stats": "info", "check": "info", "keys": "info", "result": "info",
    "dead": "dead", "pause": "control", "resume": "control",
    "weight": "weight", "budget": "budget",
    "fetch": "fetch", "fetch-status": "fetch",
    "top": "observe", "exporter": "exporter",
    "dashboard": "dashboard", "demo": "demo",
}


class BatcherGroup(click.Group):
    """Loads each command's module on first use; turns our own exceptions (and a missing
    extra) into one stderr line and the exit code of DESIGN §9."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module_name = COMMANDS.get(cmd_name)
        if module_name is None:
            return None
        from batcher.cli.common import needs_extra

        try:
            module = importlib.import_module(f"{__name__}.{module_name}")
        except ModuleNotFoundError as exc:
            message = needs_extra(cmd_name, exc)
            if message is None:
                raise
            return _unavailable(cmd_name, message)
        finally:
            _resume_gc()
        found: click.Command | None = next(
            (c for c in module.commands if c.name == cmd_name), None)
        return found

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as exc:
            from batcher.cli.common import EXIT_BAD_INPUT, CommandFailed, needs_extra, translate

            failed = translate(exc)
            if failed is None and isinstance(exc, ModuleNotFoundError):
                message = needs_extra(ctx.invoked_subcommand or "", exc)
                failed = None if message is None else CommandFailed(message, EXIT_BAD_INPUT)
            if failed is None:
                raise
            click.echo(f"batcher: {failed}", err=True)
            raise click.exceptions.Exit(failed.exit_code) from None


def _unavailable(name: str, message: str) -> click.Command:
    """A command whose extra is not installed: listed, and failing with ``message``."""

    def run() -> None:
        from batcher.cli.common import EXIT_BAD_INPUT, CommandFailed

        raise CommandFailed(message, EXIT_BAD_INPUT)

    return click.Command(name, callback=run, help=message, add_help_option=False,
                         context_settings={"ignore_unknown_options": True,
                                           "allow_extra_args": True})


@click.group(cls=BatcherGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="redis-batcher")
def cli() -> None:
    """redis-batcher: Redis-backed batch accumulator and dispatcher."""


def main() -> None:
    """Console-script entry point (``batcher = "batcher.cli:main"``)."""
    # A crash in a C extension prints the Python stack of every thread, not just "-11".
    faulthandler.enable()
    # A command's imports (redis, rq, pydantic, ours: most of a daemon's start-up) allocate
    # several hundred thousand objects that live as long as the process; the collector would
    # scan them again and again while they load (~15 % of the import CPU).
    global _gc_paused
    gc.disable()
    _gc_paused = True
    try:
        cli.main(prog_name="batcher")
    finally:
        _resume_gc()
        # Collect reference cycles (redis-py's parser <-> hiredis Reader) while every module
        # is still alive: a daemon once died with SIGSEGV after a clean stop, in the final
        # collection at interpreter shutdown (a known hazard of C-extension deallocators).
        gc.collect()
