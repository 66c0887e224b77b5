"""``batcher demo``: the whole pipeline on sample feeds (see batcher/demo/run.py)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import click

from batcher import logs
from batcher.cli.common import EXIT_BAD_INPUT, CommandFailed

# what the [demo] extra brings: its fetchers, fake LLM and report run in child processes,
# where a missing one would only show as tracebacks and a demo waiting for them
DEMO_MODULES = ("httpx", "feedparser", "openai", "matplotlib")


@click.command()
@click.option("--llm-base-url", default=None, metavar="URL",
              help="an OpenAI-compatible server to use instead of the built-in fake")
@click.option("--entries", default=1200, show_default=True,
              help="synthetic entries, on top of the sample feeds")
@click.option("--png", "png_path", default="demo-report.png", show_default=True,
              type=click.Path(dir_okay=False, path_type=Path))
@click.option("--dashboard", is_flag=True,
              help="also serve `batcher dashboard` (with a write token it prints) and keep it "
                   "up after the report until Ctrl-C")
@click.option("--dashboard-port", default=8321, show_default=True,
              type=click.IntRange(1, 65535))
def demo(llm_base_url: str | None, entries: int, png_path: Path, dashboard: bool,
         dashboard_port: int) -> None:
    """Run fetchers, producers, a coordinator and two workers; print the report."""
    missing = next((m for m in DEMO_MODULES if importlib.util.find_spec(m) is None), None)
    if missing is not None:
        raise CommandFailed(f"`batcher demo` needs the [demo] extra (no module {missing!r}): "
                            "pip install 'redis-batcher[demo]'", EXIT_BAD_INPUT)
    from batcher.demo.run import run_demo

    logs.configure(json=False, level="WARNING")
    code = run_demo(os.environ.get("BATCH_REDIS_URL") or None, llm_base_url,
                    synthetic_entries=entries, png_path=png_path,
                    dashboard_port=dashboard_port if dashboard else None)
    raise click.exceptions.Exit(code)


commands = [demo]
