"""Child processes of a run: our coordinator and workers, RQ workers, celery workers.

``python -m benchlib.procs ours-coordinator | ours-worker [--simple] | rq-worker [--simple]
QUEUE...`` (settings from ``BATCH_*``). The ``batcher`` CLI does the same for users; the
benchmark keeps its own launcher so that it measures the library, not CLI start-up options.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

import redis


def _worker_class(simple: bool) -> type:
    from rq import SimpleWorker, Worker

    return SimpleWorker if simple else Worker


def run_ours_coordinator() -> None:
    from batcher import logs
    from batcher.config import load_config
    from batcher.connection import connect
    from batcher.coordinator import Coordinator

    config = load_config()
    logs.configure(json=True)  # as `batcher coordinator` runs: one JSON line per batch
    stop = threading.Event()

    def on_signal(_sig: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    coordinator = Coordinator(connect(config.redis_url), config,
                              blocking_client=connect(config.redis_url, blocking_seconds=1.0))
    coordinator.run(stop)


def run_ours_worker(simple: bool) -> None:
    from batcher import logs
    from batcher.config import load_config
    from batcher.connection import connect
    from batcher.processing import context
    from batcher.rq.run import make_worker

    config = load_config()
    logs.configure(json=True)  # as `batcher worker` runs: one JSON line per batch
    conn = connect(config.redis_url, blocking_seconds=500)
    # warm, as `batcher worker` does: a forked work horse inherits the imported handler, the
    # config and the scripts, and shares RQ's connection
    context(config.queue, conn).scripts.preload()
    # as `batcher worker` runs them: RQ's worker classes with batched heartbeats
    make_worker(config, conn, simple=simple).work(logging_level="WARNING")


def run_rq_worker(simple: bool, queues: Sequence[str]) -> None:
    conn = redis.Redis.from_url(os.environ["BENCH_REDIS_URL"])
    import benchlib.rq_tasks  # noqa: F401 - imported once in the parent, as a warm worker would

    _worker_class(simple)(list(queues), connection=conn).work(logging_level="WARNING")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="benchlib.procs")
    parser.add_argument("what", choices=["ours-coordinator", "ours-worker", "rq-worker"])
    parser.add_argument("--simple", action="store_true")
    parser.add_argument("queues", nargs="*")
    args = parser.parse_intermixed_args(argv)
    if args.what == "ours-coordinator":
        run_ours_coordinator()
    elif args.what == "ours-worker":
        run_ours_worker(args.simple)
    else:
        run_rq_worker(args.simple, args.queues)


class Children:
    """Processes started for one measurement; stopped (TERM, then KILL) on exit."""

    def __init__(self, log_dir: Path, env: dict[str, str]):
        self.log_dir = log_dir
        self.env = env
        self.procs: list[subprocess.Popen[bytes]] = []
        self.names: list[str] = []

    def start(self, name: str, argv: Sequence[str]) -> subprocess.Popen[bytes]:
        with open(self.log_dir / f"{name}.log", "ab") as log_file:
            proc = subprocess.Popen(list(argv), stdout=log_file, stderr=subprocess.STDOUT,
                                    env=self.env, start_new_session=True)
        self.procs.append(proc)
        self.names.append(name)
        return proc

    def python(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        return self.start(name, [sys.executable, *args])

    def check_alive(self) -> None:
        for proc, name in zip(self.procs, self.names, strict=True):
            if proc.poll() is not None:
                tail = (self.log_dir / f"{name}.log").read_text(errors="replace")[-1500:]
                raise RuntimeError(f"bench child {proc.args!r} exited with {proc.returncode}:"
                                   f"\n{tail}")

    def __enter__(self) -> Children:
        return self

    def __exit__(self, *_exc: object) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                # the whole session: a forking worker's work horse goes with it
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


if __name__ == "__main__":
    main()
