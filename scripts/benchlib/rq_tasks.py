"""The plain-RQ baselines' job functions: the same echo work as ours, per entry or per 25."""

from __future__ import annotations

from typing import Any


def echo(entry: dict[str, Any]) -> Any:
    return entry["payload"]


def echo_many(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {entry["id"]: entry["payload"] for entry in entries}
