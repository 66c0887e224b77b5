#!/usr/bin/env python3
"""Kill things and prove that nothing accepted is lost (issue 3 §11, DESIGN §3 "Guarantee").

    .venv/bin/python scripts/chaos.py [--entries 50000] [--duration-cap 900] [--seed N]

A private system redis-server (AOF on, ``appendfsync always``, free port) takes 4 producer
processes enqueueing known ids, 2 coordinators and 3 ``batcher worker`` processes running a
recording handler (``scripts/chaos_handler.py``) around the simulated one (5-50 ms a batch,
2 % failures). Every 1-2 s a random worker or coordinator is SIGKILLed (a forking worker with
its work horse) and started again; twice redis-server itself is SIGKILLed and, after an
outage of a few seconds, restarted on the same port from its AOF. A process that exits on its
own is restarted too, and reported. Then the run waits for the drain, stops everything and
verifies from Redis: every accepted id is acked (its ``result:<id>`` exists; the result TTL
outlives the run) or dead with a reason, ``batcher check`` is clean, and ids handled
successfully more than once (duplicates) are compared with the stats' redeliveries. The last
line is ``chaos: accepted=… acked=… dead=… lost=… duplicates=… kills=… redis_restarts=…``;
the exit code is 1 when anything was lost or a check failed.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

import redis  # noqa: E402
from chaos_faults import FAULTS, FaultInjector  # noqa: E402
from chaos_faults import REDIS_ARGS as FAULT_REDIS_ARGS  # noqa: E402
from chaos_procs import Managed  # noqa: E402
from chaos_producer import entry_id  # noqa: E402
from chaos_verify import Verdict, verify  # noqa: E402

from batcher.connection import connect  # noqa: E402
from batcher.keys import QueueKeys  # noqa: E402
from tests.support.redis_server import RedisServer  # noqa: E402

QUEUE = "chaos"
SETTINGS = {
    "BATCH_QUEUE": QUEUE,
    "BATCH_HANDLER": "chaos_handler:handle",
    # short leases, so a killed worker's or coordinator's batch comes back within seconds
    "BATCH_JOB_TIMEOUT_SEC": "5",
    "BATCH_LEASE_GRACE_SEC": "1",
    "BATCH_DISPATCH_LEASE_SEC": "3",
    "BATCH_REAP_INTERVAL_SEC": "0.5",
    "BATCH_RETRY_BACKOFF_SEC": "0.2",
    "BATCH_MAX_ATTEMPTS": "5",
    "BATCH_TIME_THRESHOLD_SEC": "1",
    "BATCH_HIGH_TIME_THRESHOLD_SEC": "1",
    "BATCH_URGENT_TIME_THRESHOLD_SEC": "1",
    "BATCH_LOG_FORMAT": "json",
    # 6 + 0.8 per entry ± 1 ms: 5.8-47 ms for batches of 1-50 entries
    "SIM_BASE_MS": "6",
    "SIM_PER_ENTRY_MS": "0.8",
    "SIM_JITTER_MS": "1",
    "SIM_FAILURE_RATE": "0.02",
}
REDIS_ARGS = ["--appendonly", "yes", "--appendfsync", "always"]
KILL_EVERY_SECONDS = (1.0, 2.0)
REDIS_OUTAGE_SECONDS = (1.5, 4.0)
# progress (confirmed / entries) at which each redis-server kill happens
REDIS_KILL_AT = (0.3, 0.65)
REVIVE_DELAY_SECONDS = 1.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--entries", type=int, default=50_000)
    ap.add_argument("--producers", type=int, default=4)
    ap.add_argument("--coordinators", type=int, default=2)
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--worker-mode", choices=("simple", "fork", "mixed"), default="mixed",
                    help="rq SimpleWorker, forking Worker, or the first worker forking and the "
                         "rest simple (default)")
    ap.add_argument("--redis-restarts", type=int, default=2)
    ap.add_argument("--faults", action="store_true",
                    help="no kills: inject Redis faults instead (" + ",".join(FAULTS) + "; "
                         "scripts/chaos_faults.py); no daemon may exit")
    ap.add_argument("--duration-cap", type=float, default=900.0,
                    help="seconds for the whole run; undrained entries then count as lost")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--log-dir", type=Path, default=None,
                    help="keep every process's log here (default: a temp dir, kept on failure)")
    return ap.parse_args(argv)


def child_env(url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("BATCH_", "SIM_"))}
    env.update(SETTINGS, BATCH_REDIS_URL=url, PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join([str(ROOT / "scripts"), str(ROOT)]))
    return env


class Run:
    """The processes of one run, the chaos schedule, and what it did."""

    def __init__(self, args: argparse.Namespace, server: RedisServer, log_dir: Path):
        self.args = args
        self.server = server
        self.log_dir = log_dir
        self.rng = random.Random(args.seed)
        self.env = child_env(server.url)
        self.kills = 0
        self.redis_restarts = 0
        self.revived: list[str] = []
        self.line_bytes = len(entry_id(0, args.entries)) + 1
        py = sys.executable
        self.victims = [Managed(f"coordinator-{i}", [py, "-m", "batcher", "coordinator"],
                                log_dir / f"coordinator-{i}.log", self.env)
                        for i in range(args.coordinators)]
        for i in range(args.workers):
            simple = args.worker_mode == "simple" or (args.worker_mode == "mixed" and i > 0)
            argv = [py, "-m", "batcher", "worker", *(["--simple"] if simple else [])]
            self.victims.append(Managed(f"worker-{i}{'' if simple else '-fork'}", argv,
                                        log_dir / f"worker-{i}.log", self.env))
        self.producers = [
            Managed(f"producer-{i}",
                    [py, str(ROOT / "scripts" / "chaos_producer.py"), str(i),
                     str(args.producers), str(args.entries), str(self.ids_file(i)),
                     str(args.seed)],
                    log_dir / f"producer-{i}.log", self.env)
            for i in range(args.producers)]

    def ids_file(self, index: int) -> Path:
        return self.log_dir / f"producer-{index}.ids"

    def confirmed(self) -> int:
        """Ids confirmed so far, from the files' sizes (fixed-width lines)."""
        total = 0
        for i in range(self.args.producers):
            path = self.ids_file(i)
            total += path.stat().st_size // self.line_bytes if path.exists() else 0
        return total

    def start(self) -> None:
        for proc in self.victims + self.producers:
            proc.start()

    def revive_exited(self) -> None:
        """Restart a worker or coordinator that exited without being killed (and say so)."""
        now = time.monotonic()
        for proc in self.victims:
            code = proc.exit_code()
            if code is None or now < proc.exited_at + REVIVE_DELAY_SECONDS:
                continue
            self.revived.append(f"{proc.name}:exit={code}:{proc.exit_kind()}")
            proc.start()

    def kill_one(self) -> None:
        victim = self.rng.choice(self.victims)
        code = victim.exit_code()
        if code is None:
            victim.kill()
            self.kills += 1
        else:
            self.revived.append(f"{victim.name}:exit={code}:{victim.exit_kind()}")
        victim.start()

    def producers_done(self) -> bool:
        return all(p.exit_code() is not None for p in self.producers)

    def faults(self, deadline: float) -> FaultInjector:
        """Inject each Redis fault once, spread over the run; restart nothing but what exits."""
        injector = FaultInjector(self.server, lambda: self.confirmed() / self.args.entries)
        injector.start()
        while time.monotonic() < deadline and (injector.is_alive()
                                               or not self.producers_done()):
            self.revive_exited()
            time.sleep(0.05)
        injector.stop.set()
        return injector

    def chaos(self, deadline: float) -> None:
        """Kill and restart until the producers are done and Redis was restarted enough."""
        next_kill = time.monotonic() + self.rng.uniform(*KILL_EVERY_SECONDS)
        redis_up_at: float | None = None
        last_redis = time.monotonic()
        marks = list(REDIS_KILL_AT[:self.args.redis_restarts])
        marks += [1.0] * (self.args.redis_restarts - len(marks))
        while time.monotonic() < deadline:
            now = time.monotonic()
            done = self.producers_done()
            if redis_up_at is not None and now >= redis_up_at:
                self.server.start()
                self.redis_restarts += 1
                redis_up_at, last_redis = None, time.monotonic()
                print(f"chaos: redis-server restarted ({self.redis_restarts})", flush=True)
            elif redis_up_at is None and self.redis_restarts < len(marks) and (
                self.confirmed() >= marks[self.redis_restarts] * self.args.entries
                or (done and now - last_redis > 3.0)
            ):
                self.server.kill()
                redis_up_at = now + self.rng.uniform(*REDIS_OUTAGE_SECONDS)
                print(f"chaos: redis-server killed at {self.confirmed()} confirmed", flush=True)
            elif done and redis_up_at is None and self.redis_restarts >= len(marks):
                return
            if now >= next_kill:
                self.kill_one()
                next_kill = now + self.rng.uniform(*KILL_EVERY_SECONDS)
            self.revive_exited()
            time.sleep(0.05)
        if redis_up_at is not None:
            self.server.start()
            self.redis_restarts += 1

    def wait_drained(self, deadline: float) -> bool:
        """Until nothing is pending, delayed or in flight (twice in a row, 0.5 s apart)."""
        client = connect(self.server.url)
        keys = QueueKeys(QUEUE)
        quiet = 0
        while time.monotonic() < deadline:
            self.revive_exited()
            try:
                pipe = client.pipeline(transaction=False)
                for key in (keys.pending, keys.delayed, keys.inflight):
                    pipe.zcard(key)
                quiet = quiet + 1 if not any(pipe.execute()) else 0
            except redis.RedisError:
                quiet = 0
            if quiet >= 2:
                return True
            time.sleep(0.5)
        return False

    def stop(self) -> None:
        for proc in self.victims + self.producers:
            proc.terminate()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C: the children are stopped and redis-server removed
    signal.signal(signal.SIGTERM, lambda _sig, _frame: sys.exit(143))
    if args.seed is None:
        args.seed = random.randrange(1_000_000)
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="batcher-chaos-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    deadline = t0 + args.duration_cap
    injector: FaultInjector | None = None
    redis_args = REDIS_ARGS + (FAULT_REDIS_ARGS if args.faults else [])
    with RedisServer(extra_args=redis_args) as server:
        run = Run(args, server, log_dir)
        print(f"chaos: redis-server {server.version} on port {server.port}, AOF always; "
              f"seed={args.seed}, logs in {log_dir}", flush=True)
        try:
            run.start()
            if args.faults:
                injector = run.faults(deadline)
            else:
                run.chaos(deadline)
            chaos_s = time.monotonic() - t0
            drained = run.wait_drained(deadline)
            drain_s = time.monotonic() - t0 - chaos_s
        finally:
            run.stop()
        verdict: Verdict = verify(server.url, QUEUE, run, drained, args.producers,
                                  results_may_drop=args.faults)
        print(f"chaos: chaos {chaos_s:.0f}s, drain {drain_s:.0f}s, total "
              f"{time.monotonic() - t0:.0f}s", flush=True)
        kinds = Counter(r.rsplit(":", 1)[1] for r in run.revived)
        print(f"chaos: restarted after exiting on their own: {len(run.revived)} "
              f"(refused-start={kinds['refused-start']} crashed={kinds['crashed']}) "
              f"{' '.join(run.revived)}".rstrip(), flush=True)
    for line in verdict.lines:
        print(f"chaos: {line}", flush=True)
    if injector is not None:
        missing = [f for f in FAULTS if f not in injector.done]
        if missing or injector.errors or run.revived:
            verdict.ok = False
            print(f"chaos: PROBLEM: faults not injected {missing} {injector.errors}; daemons "
                  f"that exited: {run.revived}", flush=True)
        verdict.summary += (f" faults={','.join(injector.done)} "
                            f"daemon_exits={len(run.revived)}")
    print(verdict.summary, flush=True)
    if not verdict.ok:
        print(f"chaos: FAILED, logs kept in {log_dir}", file=sys.stderr)
    elif args.log_dir is None:
        shutil.rmtree(log_dir, ignore_errors=True)
    return 0 if verdict.ok else 1


if __name__ == "__main__":
    sys.exit(main())
