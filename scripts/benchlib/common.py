"""Workload data, settings as environment, and the median/min/max summary of repeats."""

from __future__ import annotations

import os
import random
import statistics
import sys
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from batcher.config import BatchProcessingConfig, env_name

SCRIPTS_DIR = Path(__file__).resolve().parent.parent
QUEUE = "bench"
_WORDS = ("redis", "batch", "python", "feed", "release", "cluster", "latency", "model",
          "worker", "queue", "update", "security", "cloud", "open", "source", "data", "news")


def rss_payload(rng: random.Random, n: int, *, body_chars: int = 700) -> dict[str, Any]:
    """An RSS item as a fetcher would push it; ``body_chars`` ±15 % of summary text."""
    words = [rng.choice(_WORDS) for _ in range(8)]
    summary_len = int(body_chars * rng.uniform(0.85, 1.15))
    summary = " ".join(rng.choice(_WORDS) for _ in range(summary_len // 6))[:summary_len]
    return {
        "title": " ".join(words).capitalize(),
        "link": f"https://news.example.com/{rng.randrange(2020, 2026)}/{n}/{'-'.join(words[:4])}",
        "published": f"2025-0{rng.randrange(1, 10)}-1{rng.randrange(0, 10)}T08:00:00Z",
        "author": rng.choice(("Ada", "Grace", "Linus", "Guido", "Barbara")),
        "summary": summary,
        "tags": words[:3],
    }


def make_entries(
    count: int, *, seed: int = 7, priority: int = 0, body_chars: int = 700, prefix: str = ""
) -> list[dict[str, Any]]:
    """``count`` queue_many entries with 36-character uuid ids (a ``prefix`` replaces the head)."""
    rng = random.Random(seed)
    out = []
    for n in range(count):
        eid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        if prefix:
            eid = (prefix + eid)[:36]
        out.append({"id": eid, "source": "rss_feed", "priority": priority,
                    "payload": rss_payload(rng, n, body_chars=body_chars)})
    return out


def compile_bytecode(tree: Path | None = None) -> None:
    """Compile a checkout's modules to bytecode (``__pycache__``), as ``pip install`` does.

    The bench runs this checkout (an editable install), or ``tree``, in its children. With
    ``PYTHONDONTWRITEBYTECODE`` set (this machine's environment sets it, so does the
    Dockerfile) no child writes the bytecode it compiled, so every daemon would compile our
    modules from source again: ~0.06-0.1 s of CPU each, which an installed package (its
    bytecode written at install) never pays, and which RQ's installed modules did not pay.
    """
    import compileall

    root = SCRIPTS_DIR.parent if tree is None else tree
    for sub in ("batcher", "workers", "scripts/benchlib"):
        if (root / sub).is_dir():
            compileall.compile_dir(str(root / sub), quiet=1)


def bench_config(redis_url: str, **overrides: Any) -> BatchProcessingConfig:
    """The benchmark's settings: a roomy buffer, so only the measured rule decides a flush."""
    values: dict[str, Any] = {
        "redis_url": redis_url, "queue": QUEUE, "handler": "workers.handlers.echo:handle",
        "max_buffer_size": 5_000_000, "max_buffer_bytes": 8 * 1024**3,
        "max_buffer_age_seconds": 86_400, "log_format": "json",
    }
    values.update(overrides)
    return BatchProcessingConfig(**values)


def config_env(config: BatchProcessingConfig) -> dict[str, str]:
    """The environment a child process needs to build ``config`` again."""
    env = dict(os.environ)
    for field, value in config.model_dump().items():
        if value is None:  # an unset optional setting (the TLS files): 'None' is no path
            continue
        env[env_name(field)] = str(value).lower() if isinstance(value, bool) else str(value)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SCRIPTS_DIR),
                                                      env.get("PYTHONPATH", "")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SCRIPTS_DIR),
                                                      env.get("PYTHONPATH", "")]))
    env.update(extra or {})
    return env


def summary(values: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "runs": values}


def round_robin(times: int, systems: Mapping[str, Callable[[], float]],
                label: str) -> dict[str, dict[str, Any]]:
    """Run every system once per round, ``times`` rounds, and summarise each.

    Round-robin, not each system's repeats back to back: on a shared machine a slow minute
    then hits every system alike, and the ratios of medians stay fair.
    """
    values: dict[str, list[float]] = {name: [] for name in systems}
    for i in range(times):
        for name, fn in systems.items():
            values[name].append(fn())
            print(f"  {label} {name} [{i + 1}/{times}]: {values[name][-1]:,.1f}",
                  file=sys.stderr, flush=True)
    return {name: summary(v) for name, v in values.items()}


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = (len(sorted_values) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)
