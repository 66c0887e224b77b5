"""Start-up (issue 16): spawn -> first ack of a coordinator and a worker started together.

One entry is enqueued right after both processes are spawned, with a size threshold of 1, so
the figure is what a cold deployment waits for its first result: two interpreters starting,
importing what they run, connecting and loading their scripts, one flush, one claim, one ack.
``batcher coordinator`` and ``batcher worker --simple`` run as users start them (the CLI).
The baseline is RQ's own ``SimpleWorker`` (``benchlib.procs rq-worker``) spawned with one job
already queued: spawn -> that job finished.

``tree`` runs another checkout's code in the children: an older commit measured beside this
one in the same run, so the same load hits both (docs/benchmarks.md, "Start-up").
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import redis
from rq import Queue
from rq.registry import FinishedJobRegistry

from batcher.config import BatchProcessingConfig
from batcher.producer import BatchStateManager
from benchlib import rq_tasks
from benchlib.common import child_env, compile_bytecode, config_env
from benchlib.procs import Children

POLL_SECONDS = 0.002
TIMEOUT_SECONDS = 60.0
RQ_QUEUE = "bench-startup"


def startup_config(config: BatchProcessingConfig) -> BatchProcessingConfig:
    return config.with_overrides(size_threshold=1, min_batch_size=1,
                                 enable_adaptive_sizing=False)


def _in_tree(env: dict[str, str], tree: Path | None) -> dict[str, str]:
    if tree is not None:
        # the other checkout's package and its benchlib, ahead of this one's editable install;
        # PYTHONSAFEPATH: `python -m` would otherwise put the working directory (this
        # checkout) first on sys.path
        env["PYTHONPATH"] = os.pathsep.join([str(tree), str(tree / "scripts")])
        env["PYTHONSAFEPATH"] = "1"
    return env


def _wait(children: Children, done: Callable[[], object], start: float) -> float:
    while not done():
        if time.perf_counter() - start > TIMEOUT_SECONDS:
            raise RuntimeError("start-up: no first ack within 60 s")
        children.check_alive()
        time.sleep(POLL_SECONDS)
    return time.perf_counter() - start


def ours(config: BatchProcessingConfig, log_dir: Path, tree: Path | None = None) -> float:
    """Seconds from spawning ``batcher coordinator`` and ``batcher worker --simple`` to the
    first entry's ack."""
    config = startup_config(config)
    compile_bytecode(tree)  # outside the clock: an installed package has its bytecode
    client = redis.Redis.from_url(config.redis_url)
    client.flushall()
    manager = BatchStateManager(config=config)
    cli = [sys.executable, "-m", "batcher.cli"]
    with Children(log_dir, _in_tree(config_env(config), tree)) as children:
        start = time.perf_counter()
        children.start("startup-coordinator", [*cli, "coordinator"])
        children.start("startup-worker", [*cli, "worker", "--simple"])
        manager.queue_entry({"n": 1}, "startup", "first")
        return _wait(children, lambda: client.hget(config.keys.stats, "acked"), start)


def rq_baseline(url: str, log_dir: Path) -> float:
    """Seconds from spawning RQ's SimpleWorker to its first (already queued) job finished."""
    compile_bytecode()  # benchlib's modules, which the RQ worker imports
    client = redis.Redis.from_url(url)
    client.flushall()
    Queue(RQ_QUEUE, connection=client).enqueue(rq_tasks.echo, {"payload": 1})
    finished = FinishedJobRegistry(RQ_QUEUE, connection=client)
    env = child_env({"BENCH_REDIS_URL": url})
    with Children(log_dir, env) as children:
        start = time.perf_counter()
        children.python("startup-rq", "-m", "benchlib.procs", "rq-worker", "--simple",
                        RQ_QUEUE)
        return _wait(children, lambda: client.zcard(finished.key), start)


# what each process imports before its loop: a ``batcher worker`` (the default handler, and
# the CLI's main() loading the worker command as ``python -m batcher.cli worker`` does, with
# the collector paused; ``--help`` stops it there) and RQ's own worker. A bare import
# statement (the figure's definition until issue 16's last start-up work) would miss the pause
WORKER_IMPORTS = ("import sys; sys.argv = ['batcher', 'worker', '--help']; "
                  "import batcher.cli, workers.handlers.echo; batcher.cli.main()")
RQ_WORKER_IMPORTS = "import rq.worker"


def import_cpu_seconds(code: str, tree: Path | None = None) -> float:
    """User + system CPU seconds of a fresh interpreter running ``code`` (imports): steadier
    than wall time on a loaded machine, where most of a start-up is the wait for a core."""
    compile_bytecode(tree)
    env = _in_tree(child_env(), tree)
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL)
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"start-up: {code!r} exited with {proc.returncode}")
    return float(usage.ru_utime + usage.ru_stime)
