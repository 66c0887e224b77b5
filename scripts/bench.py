#!/usr/bin/env python3
"""Benchmark redis-batcher against plain RQ and celery-batches on a private redis-server.

    .venv/bin/python scripts/bench.py [--entries N] [--repeat R] [--quick] [--check]

Measures, in one run: ingest, end-to-end, deadline lateness, flatness and memory (issue 5),
fair share between sources and a budget shared by 4 workers (issue 17), start-up (issue 16);
writes bench-results/latest.json, the tables of docs/benchmarks.md and docs/benchmarks.png.
With --check it exits 1 when a target is missed; its last line lists every ratio.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from benchlib import e2e, groups, ingest, lateness, report, scale, startup  # noqa: E402
from benchlib.common import (  # noqa: E402
    bench_config,
    compile_bytecode,
    make_entries,
    round_robin,
    summary,
)
from benchlib.server import BenchRedis  # noqa: E402

BENCH_EXTRA = ["celery[redis]>=5.3", "celery-batches>=0.11", "matplotlib>=3.8"]
SECTIONS = ("ingest", "e2e", "lateness", "flatness", "memory", "fairness", "budget",
            "startup")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--entries", type=int, default=20_000, help="end-to-end entries (20,000)")
    p.add_argument("--ingest-entries", type=int, default=50_000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--quick", action="store_true",
                   help="a few hundred entries, 1 repeat, no celery, no 1M level")
    p.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    p.add_argument("--skip-celery", action="store_true")
    p.add_argument("--no-install", action="store_true",
                   help="never pip-install the [bench] extra; skip what needs it")
    p.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset")
    p.add_argument("--json", type=Path, default=ROOT / "bench-results" / "latest.json")
    p.add_argument("--docs-dir", type=Path, default=ROOT / "docs")
    p.add_argument("--from-json", type=Path,
                   help="measure nothing: redraw the docs and the check line from this JSON")
    args = p.parse_args(argv)
    if args.quick:
        args.entries, args.ingest_entries, args.repeat = 400, 2_000, 1
        args.skip_celery = True
    args.sections = [s for s in args.sections.split(",") if s]
    return args


def ensure_extra(args: argparse.Namespace) -> dict[str, bool]:
    """Install the [bench] extra into this interpreter when missing (unless --no-install)."""
    wanted = {"matplotlib": "matplotlib"}
    if not args.skip_celery and "e2e" in args.sections:
        wanted.update(celery="celery", celery_batches="celery_batches")
    missing = [m for m in wanted.values() if importlib.util.find_spec(m) is None]
    if missing and not args.no_install:
        print(f"bench: installing the [bench] extra ({', '.join(missing)} missing)",
              file=sys.stderr)
        subprocess.check_call([sys.executable, "-m", "pip", "install", "--quiet", *BENCH_EXTRA])
        importlib.invalidate_caches()
    return {m: importlib.util.find_spec(m) is not None for m in wanted.values()}


def _version(module: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(module)
    except PackageNotFoundError:
        return "not installed"


def run_ingest(url: str, args: argparse.Namespace) -> dict[str, Any]:
    import redis

    client = redis.Redis.from_url(url)
    config = bench_config(url)
    no_seen = config.with_overrides(dedupe_window_seconds=0)
    entries = make_entries(args.ingest_entries, seed=1)
    n = len(entries)
    spread = [{**e, "source": f"feed-{i % 64}"} for i, e in enumerate(entries)]
    sharded = config.with_overrides(shards=3)

    def fresh(fn: Callable[[], float]) -> Callable[[], float]:
        def run() -> float:
            client.flushall()
            return fn()
        return run

    return round_robin(args.repeat, {
        "ours_1p": fresh(lambda: n / ingest.ours_once(config, entries)),
        "ours_4p": fresh(lambda: ingest.ours_parallel(config, n, 4)),
        "ours_1p_no_seen": fresh(lambda: n / ingest.ours_once(no_seen, entries)),
        # issue 18: a queue split in 3 shards against the same queue unsharded, both with the
        # entries spread over 64 sources (routing is by source: one source is one shard)
        "ours_1p_64_sources": fresh(lambda: n / ingest.ours_once(config, spread)),
        "ours_1p_3_shards": fresh(lambda: n / ingest.ours_once(sharded, spread)),
        "lua_reference": fresh(lambda: n / ingest.reference_once(client, config, entries)),
        "rq_enqueue_many": fresh(lambda: n / ingest.rq_once(client, entries)),
    }, "ingest")


def e2e_systems(url: str, args: argparse.Namespace, log_dir: Path,
                have: dict[str, bool]) -> dict[str, Callable[[], float]]:
    config = bench_config(
        url, time_threshold_seconds=1, high_time_threshold_seconds=1,
        urgent_time_threshold_seconds=1, size_threshold=25, enable_adaptive_sizing=False)
    entries = make_entries(args.entries, seed=2)
    systems: dict[str, Callable[[], float]] = {
        "ours_simple": lambda: e2e.ours(config, entries, simple=True, log_dir=log_dir),
        "ours_fork": lambda: e2e.ours(config, entries, simple=False, log_dir=log_dir),
        # the defaults users get: the size starts at 25 and may grow to max_batch_size (50)
        # when batches finish far under the performance target (information, not a target)
        "ours_simple_adaptive": lambda: e2e.ours(
            config.with_overrides(enable_adaptive_sizing=True), entries, simple=True,
            log_dir=log_dir),
        # the coordinator started with the clock, its start-up inside the figure (information)
        "ours_simple_cold": lambda: e2e.ours(config, entries, simple=True, log_dir=log_dir,
                                             coordinator_running=False),
        "rq_simple": lambda: e2e.rq_baseline(url, entries, simple=True, pack=1, log_dir=log_dir),
        "rq_fork": lambda: e2e.rq_baseline(url, entries, simple=False, pack=1, log_dir=log_dir),
        "rq_packed_simple": lambda: e2e.rq_baseline(url, entries, simple=True, pack=e2e.PACK,
                                                    log_dir=log_dir),
        "rq_packed_fork": lambda: e2e.rq_baseline(url, entries, simple=False, pack=e2e.PACK,
                                                  log_dir=log_dir),
    }
    if not args.skip_celery and have.get("celery") and have.get("celery_batches"):
        for pool in ("prefork", "solo"):
            systems[f"celery_{pool}"] = functools.partial(
                e2e.celery_batches, url, entries, pool=pool, log_dir=log_dir)
    return systems


def run_e2e(url: str, args: argparse.Namespace, log_dir: Path,
            have: dict[str, bool]) -> dict[str, Any]:
    systems = e2e_systems(url, args, log_dir, have)
    out: dict[str, Any] = round_robin(args.repeat, systems, "e2e")
    for pool in ("prefork", "solo"):
        out.setdefault(f"celery_{pool}", {"skipped": "celery-batches not run"})
    return out


def run_lateness(url: str, args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    config = lateness.lateness_config(bench_config(url))
    count = 40 if args.quick else 200
    runs = [lateness.figures(lateness.run(config, count, 25.0, seed=30 + i, log_dir=log_dir))
            for i in range(args.repeat)]
    for i, r in enumerate(runs):
        print(f"  lateness [{i + 1}/{args.repeat}]: {r}", file=sys.stderr, flush=True)
    out: dict[str, Any] = {k: summary([r[k] for r in runs]) for k in runs[0]}
    out["entries"] = count
    return out


def run_flatness(url: str, args: argparse.Namespace) -> dict[str, Any]:
    levels = [1_000, 10_000] if args.quick else [1_000, 10_000, 100_000, 1_000_000]
    raw = scale.flatness(scale.flatness_config(bench_config(url)), levels, args.repeat)
    out: dict[str, Any] = {"levels": levels, "batch": scale.FLUSH_BATCH,
                           "rounds": scale.ROUNDS_PER_LEVEL}
    for kind, by_level in raw.items():
        out[kind] = {str(level): summary(v) for level, v in by_level.items()}
        print(f"  flatness {kind}: " + ", ".join(
            f"{level:,}: {out[kind][str(level)]['median']:.2f}" for level in levels),
            file=sys.stderr, flush=True)
    return out


def run_startup(url: str, args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    # one start-up is short and noisy on a shared machine: more rounds than the other sections
    config = bench_config(url)
    return round_robin(max(5, 3 * args.repeat), {
        "ours_first_ack_s": lambda: startup.ours(config, log_dir),
        "rq_first_job_s": lambda: startup.rq_baseline(url, log_dir),
        "ours_worker_import_cpu_s": lambda: startup.import_cpu_seconds(startup.WORKER_IMPORTS),
        "rq_worker_import_cpu_s": lambda: startup.import_cpu_seconds(startup.RQ_WORKER_IMPORTS),
    }, "startup")


def measure(srv: BenchRedis, args: argparse.Namespace, have: dict[str, bool],
            log_dir: Path) -> dict[str, Any]:
    results: dict[str, Any] = {}
    steps: dict[str, Callable[[], dict[str, Any]]] = {
        "ingest": lambda: run_ingest(srv.url, args),
        "e2e": lambda: run_e2e(srv.url, args, log_dir, have),
        "lateness": lambda: run_lateness(srv.url, args, log_dir),
        "flatness": lambda: run_flatness(srv.url, args),
        "memory": lambda: scale.memory(bench_config(srv.url), 2_000 if args.quick else 20_000),
        "fairness": lambda: groups.fairness(bench_config(srv.url)),
        "budget": lambda: groups.budget(bench_config(srv.url), 10 if args.quick else 120),
        "startup": lambda: run_startup(srv.url, args, log_dir),
    }
    for name in SECTIONS:
        if name in args.sections:
            print(f"bench: {name}", file=sys.stderr, flush=True)
            t0 = time.monotonic()
            results[name] = steps[name]()
            results[name]["seconds"] = round(time.monotonic() - t0, 1)
    return results


def publish(results: dict[str, Any], args: argparse.Namespace, have: dict[str, bool]) -> int:
    """Write the docs and the chart (full runs only), print the check line, return the code."""
    if all(s in results for s in SECTIONS):
        report.write_doc(results, args.docs_dir / "benchmarks.md")
        if have.get("matplotlib"):
            from benchlib.chart import write_chart

            write_chart(results, args.docs_dir / "benchmarks.png")
        print(f"bench: wrote {args.docs_dir / 'benchmarks.md'}", file=sys.stderr)
    raw_memory = results.get("memory", {}).get("pending_bytes_per_entry")
    print(report.check_line(results["ratios"], results["verdicts"], raw_memory))
    if args.check and any(v is False for v in results["verdicts"].values()):
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json:
        saved: dict[str, Any] = json.loads(args.from_json.read_text())
        return publish(saved, args, {"matplotlib": importlib.util.find_spec("matplotlib")
                                       is not None})
    have = ensure_extra(args)
    # every child runs our modules as an installed package would: from compiled bytecode
    compile_bytecode()
    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    with BenchRedis() as srv, tempfile.TemporaryDirectory(prefix="bench-logs-") as logs:
        os.environ["BENCH_REDIS_URL"] = srv.url
        meta = {
            "started": started, "cpus": os.cpu_count(), "redis_version": srv.version,
            "python": platform.python_version(), "rq_version": _version("rq"),
            "celery_batches_version": _version("celery-batches"),
            "entries": args.entries, "ingest_entries": args.ingest_entries,
            "repeat": args.repeat, "quick": args.quick,
            "load_average_at_start": list(os.getloadavg()),
        }
        results: dict[str, Any] = {"meta": meta, **measure(srv, args, have, Path(logs))}
    meta["load_average_at_end"] = list(os.getloadavg())
    results["ratios"] = report.ratios(results)
    results["verdicts"] = report.verdicts(results["ratios"])
    report.write_json(results, args.json)
    print(f"bench: wrote {args.json}", file=sys.stderr)
    return publish(results, args, have)


if __name__ == "__main__":
    sys.exit(main())
