"""``batcher budget set / show``: the shared LLM budgets (requests and tokens per minute)."""

from __future__ import annotations

import click
import orjson

from batcher.budget import Budget, BudgetLimits
from batcher.cli.common import EXIT_BAD_INPUT, fail, open_queue, queue_options


@click.group("budget")
def budget() -> None:
    """Budgets every worker draws from before an LLM call (token buckets in Redis)."""


def _budget_named(name: str | None, queue: str | None, redis_url: str | None) -> Budget:
    config, client = open_queue(queue, redis_url)
    chosen = name or config.budget
    if not chosen:
        fail("no budget named: pass NAME or set BATCH_BUDGET", EXIT_BAD_INPUT)
    try:
        return Budget(client, chosen)
    except ValueError as exc:
        fail(str(exc), EXIT_BAD_INPUT)


@budget.command("set")
@click.argument("name", required=False)
@click.option("--rpm", type=float, default=0, show_default=True, help="requests per minute")
@click.option("--itpm", type=float, default=0, show_default=True,
              help="input (prompt) tokens per minute")
@click.option("--otpm", type=float, default=0, show_default=True,
              help="output (completion) tokens per minute")
@queue_options
def set_cmd(name: str | None, rpm: float, itpm: float, otpm: float, queue: str | None,
            redis_url: str | None) -> None:
    """Set NAME's limits (default: BATCH_BUDGET); 0 = no limit. Applies at once to every
    worker; what is left is cut to a lower limit."""
    target = _budget_named(name, queue, redis_url)
    try:
        target.set_limits(BudgetLimits(rpm, itpm, otpm))
    except ValueError as exc:
        fail(str(exc), EXIT_BAD_INPUT)
    click.echo(f"budget {target.name}: rpm={rpm:g} itpm={itpm:g} otpm={otpm:g}")


@budget.command("show")
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True)
@queue_options
def show_cmd(name: str | None, as_json: bool, queue: str | None, redis_url: str | None) -> None:
    """NAME's limits (and the provider's, when it reported lower ones) and what is left now."""
    shown = _budget_named(name, queue, redis_url).show()
    if as_json:
        click.echo(orjson.dumps(shown).decode())
        return
    click.echo(f"budget {shown['name']}: waits={shown['waits']} settled={shown['settled']}")
    for bucket, label in (("req", "requests"), ("in", "input tokens"), ("out", "output tokens")):
        b = shown[bucket]
        limit = "none" if not b["limit_per_minute"] else f"{b['limit_per_minute']:g}/min"
        extra = ("" if b["provider_limit_per_minute"] is None
                 else f" (provider: {b['provider_limit_per_minute']:g}/min)")
        left = "" if b["left"] is None else f", left {b['left']:g}"
        click.echo(f"  {label}: {limit}{extra}{left}")


commands = [budget]
