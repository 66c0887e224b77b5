"""Profile our hot paths with pyinstrument: producer queue_many, coordinator drain, worker.

    .venv/bin/python scripts/benchlib/profile_paths.py [--entries N] [--out DIR]

Each path runs in this process on a private redis-server; the worker path is an RQ
``SimpleWorker`` in burst mode over batches the coordinator dispatched beforehand.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchlib.common import bench_config, config_env, make_entries  # noqa: E402
from benchlib.server import BenchRedis  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--entries", type=int, default=20_000)
    parser.add_argument("--out", type=Path, default=Path("bench-results/profiles"))
    args = parser.parse_args()
    from pyinstrument import Profiler
    from rq import SimpleWorker
    from rq.serializers import JSONSerializer

    from batcher.coordinator import Coordinator
    from batcher.producer import CHUNK_SIZE, BatchStateManager

    args.out.mkdir(parents=True, exist_ok=True)
    with BenchRedis() as srv:
        config = bench_config(srv.url, size_threshold=25, enable_adaptive_sizing=False,
                              max_inflight_batches=1_000_000)
        os.environ.update(config_env(config))
        entries = make_entries(args.entries, seed=5)
        manager = BatchStateManager(config=config)
        coordinator = Coordinator(manager.redis, config)
        coordinator.start()
        worker = SimpleWorker(config.keys.rq_queues_by_urgency(), connection=manager.redis,
                              serializer=JSONSerializer)
        steps: dict[str, Callable[[], object]] = {
            "producer": lambda: [manager.queue_many(entries[i:i + CHUNK_SIZE])
                                 for i in range(0, len(entries), CHUNK_SIZE)],
            "coordinator": lambda: coordinator.drain(manual=True),
            "worker": lambda: worker.work(burst=True, logging_level="WARNING"),
        }
        for name, step in steps.items():
            profiler = Profiler(interval=0.0005)
            t0 = time.perf_counter()
            with profiler:
                step()
            elapsed = time.perf_counter() - t0
            print(f"== {name}: {elapsed:.3f} s, {args.entries / elapsed:,.0f} entries/s")
            text = profiler.output_text(unicode=False, color=False, show_all=False)
            (args.out / f"{name}.txt").write_text(text)
            print(text[:6000])


if __name__ == "__main__":
    main()
