#!/usr/bin/env python3
"""The pipeline against an LLM that misbehaves in every way a real provider does (issue 15).

    .venv/bin/python scripts/llm_chaos.py [--entries 600] [--rejected 8] [--refused 7]

A private redis-server (free port), one ``batcher coordinator`` and two ``batcher worker
--simple`` processes running ``batcher.llm.handler:summarize`` against the built-in fake LLM,
which mixes in every misbehaviour (``FAKE_LLM_MISBEHAVE``: code fences, prose, truncation,
omitted entries, junk, 429s with each wait header, 503, 500, answers slower than the timeout,
and quota / auth outages). ``--rejected`` entries carry ``[llm:reject]`` (the API answers 400
for any request holding one) and ``--refused`` carry ``[llm:refuse]`` (the model refuses).

Then it waits for the drain and checks from Redis: every entry acked (its result stored) or
dead; the dead are exactly the marked entries, each with the provider's words; nothing lost.
The last line is ``llm-chaos: accepted=… acked=… dead_rejected=… dead_refused=… lost=…
pauses=… rate_limit_pauses=… requests=…``; the exit code is 1 when a check failed.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

import orjson  # noqa: E402
import redis  # noqa: E402

from batcher.config import BatchProcessingConfig  # noqa: E402
from batcher.connection import connect  # noqa: E402
from batcher.keys import QueueKeys  # noqa: E402
from batcher.llm.fake import (  # noqa: E402
    MISBEHAVIOURS,
    REFUSE_MARK,
    REJECT_MARK,
    FakeLLMOptions,
    FakeLLMServer,
    serve_fake_llm,
)
from batcher.llm.handler import REFUSED_PREFIX  # noqa: E402
from batcher.producer import BatchStateManager  # noqa: E402
from tests.support.redis_server import RedisServer  # noqa: E402

QUEUE = "llmchaos"
SETTINGS = {
    "BATCH_QUEUE": QUEUE,
    "BATCH_HANDLER": "batcher.llm.handler:summarize",
    "BATCH_SIZE_THRESHOLD": "16",
    "BATCH_MIN_BATCH_SIZE": "4",
    "BATCH_MAX_BATCH_SIZE": "32",
    "BATCH_TIME_THRESHOLD_SEC": "1",
    "BATCH_HIGH_TIME_THRESHOLD_SEC": "1",
    "BATCH_URGENT_TIME_THRESHOLD_SEC": "1",
    "BATCH_JOB_TIMEOUT_SEC": "60",
    "BATCH_DISPATCH_LEASE_SEC": "5",
    "BATCH_REAP_INTERVAL_SEC": "0.2",
    "BATCH_RETRY_BACKOFF_SEC": "0.2",
    # retries must save every entry a retry can save: only the marked ones may die
    "BATCH_MAX_ATTEMPTS": "10",
    "BATCH_PERFORMANCE_TARGET_MS": "5000",
    "BATCH_LOG_FORMAT": "json",
    "LLM_TIMEOUT_SECONDS": "1",
    "LLM_PAUSE_PROBE_SEC": "0.5",
    "LLM_API_KEY": "sk-chaos",
    "LLM_PRICE_INPUT_PER_MTOK": "0.15",
    "LLM_PRICE_OUTPUT_PER_MTOK": "0.60",
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--entries", type=int, default=600)
    ap.add_argument("--rejected", type=int, default=8)
    ap.add_argument("--refused", type=int, default=7)
    ap.add_argument("--misbehave-rate", type=float, default=0.25)
    ap.add_argument("--seed", type=int, default=15)
    ap.add_argument("--duration-cap", type=float, default=240.0)
    ap.add_argument("--log-dir", type=Path, default=None)
    return ap.parse_args(argv)


def marks(args: argparse.Namespace) -> dict[str, str]:
    """Entry id -> its marker, the two kinds taken in turn, spread over the run."""
    kinds: list[str] = []
    rejected, refused = args.rejected, args.refused
    while rejected or refused:
        if rejected:
            kinds.append(REJECT_MARK)
            rejected -= 1
        if refused:
            kinds.append(REFUSE_MARK)
            refused -= 1
    step = max(1, args.entries // max(1, len(kinds)))
    return {f"entry-{k * step + step // 2:05d}": mark for k, mark in enumerate(kinds)}


def produce(manager: BatchStateManager, args: argparse.Namespace, marked: dict[str, str]) -> int:
    accepted = 0
    for start in range(0, args.entries, 50):
        rows = []
        for i in range(start, min(args.entries, start + 50)):
            eid = f"entry-{i:05d}"
            title = f"Python release {i} ships a faster cloud app {marked.get(eid, '')}"
            rows.append({"id": eid, "source": "chaos", "priority": i % 3,
                         "payload": {"title": title.strip(), "summary": f"Body of entry {i}."}})
        accepted += manager.queue_many(rows).accepted
        time.sleep(0.05)
    return accepted


def wait_drained(client: redis.Redis, keys: QueueKeys, deadline: float) -> bool:
    quiet = 0
    while time.monotonic() < deadline:
        pipe = client.pipeline(transaction=False)
        for key in (keys.pending, keys.delayed, keys.inflight):
            pipe.zcard(key)
        quiet = quiet + 1 if not any(pipe.execute()) else 0
        if quiet >= 2:
            return True
        time.sleep(0.5)
    return False


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="batcher-llm-chaos-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    marked = marks(args)
    options = FakeLLMOptions(base_latency_ms=20, per_entry_ms=2, misbehave=MISBEHAVIOURS,
                             misbehave_rate=args.misbehave_rate, outage_every=60,
                             outage_seconds=1.0, slow_ms=1500, retry_after_seconds=0.5,
                             seed=args.seed, rng=random.Random(args.seed))
    fake, llm_url = serve_fake_llm(options=options)
    procs: list[subprocess.Popen[bytes]] = []
    deadline = time.monotonic() + args.duration_cap
    with RedisServer() as server:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BATCH_", "LLM_"))}
        env.update(SETTINGS, BATCH_REDIS_URL=server.url, LLM_BASE_URL=llm_url,
                   PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT))
        py = sys.executable
        commands = {"coordinator": [py, "-m", "batcher", "coordinator"],
                    "worker-0": [py, "-m", "batcher", "worker", "--simple"],
                    "worker-1": [py, "-m", "batcher", "worker", "--simple"]}
        try:
            for name, argv_ in commands.items():
                with open(log_dir / f"{name}.log", "ab") as log:
                    procs.append(subprocess.Popen(argv_, env=env, cwd=ROOT, stdout=log,
                                                  stderr=subprocess.STDOUT))
            config = BatchProcessingConfig(queue=QUEUE, redis_url=server.url,
                                           handler=SETTINGS["BATCH_HANDLER"])
            client = connect(server.url)
            accepted = produce(BatchStateManager(client, config), args, marked)
            drained = wait_drained(client, config.keys, deadline)
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
            fake.shutdown()
            fake.server_close()
        ok = report(client, config.keys, accepted, marked, fake, drained)
    print(f"llm-chaos: logs in {log_dir}", file=sys.stderr)
    return 0 if ok else 1


def report(c: redis.Redis, keys: QueueKeys, accepted: int, marked: dict[str, str],
           fake: FakeLLMServer, drained: bool) -> bool:
    ids = [f"entry-{i:05d}" for i in range(accepted)]
    pipe = c.pipeline(transaction=False)
    for eid in ids:
        pipe.exists(keys.result(eid))
    acked = {eid for eid, found in zip(ids, pipe.execute(), strict=True) if found}
    dead_raw = c.hgetall(keys.dead_payloads)
    dead = {k.decode(): orjson.loads(v) for k, v in dead_raw.items()}
    refused = {k for k, v in dead.items() if v["error"].startswith(REFUSED_PREFIX)}
    rejected = set(dead) - refused
    stats = {k.decode(): v.decode() for k, v in c.hgetall(keys.counters).items()}
    lost = [eid for eid in ids if eid not in acked and eid not in dead]
    want_rejected = {k for k, m in marked.items() if m == REJECT_MARK}
    want_refused = {k for k, m in marked.items() if m == REFUSE_MARK}
    checks = {
        "drained": drained,
        "dead are exactly the [llm:reject] entries": rejected == want_rejected,
        "refused are exactly the [llm:refuse] entries": refused == want_refused,
        "every rejected dead says what the API said": all(
            "400" in dead[k]["error"] and dead[k]["reason"] == "rejected" for k in rejected),
        "nothing lost": not lost,
    }
    served = dict(sorted(fake.misbehaved.items()))
    print(f"llm-chaos: misbehaviours served {served}")
    print(f"llm-chaos: tokens prompt={stats.get('llm_prompt_tokens', '0')} "
          f"completion={stats.get('llm_completion_tokens', '0')} "
          f"cached={stats.get('llm_cached_tokens', '0')} "
          f"cost_usd={float(stats.get('llm_cost_usd', 0)):.6f} "
          f"truncated={stats.get('llm_truncated', '0')} "
          f"bisections={stats.get('llm_bisections', '0')} "
          f"batches_failed={stats.get('batches_failed', '0')}")
    for name, passed in checks.items():
        print(f"llm-chaos: {'ok  ' if passed else 'FAIL'} {name}")
    if lost:
        print(f"llm-chaos: lost ids {lost[:20]}")
    print(f"llm-chaos: accepted={accepted} acked={len(acked)} dead_rejected={len(rejected)} "
          f"dead_refused={len(refused)} lost={len(lost)} pauses={stats.get('pauses', 0)} "
          f"rate_limit_pauses={stats.get('rate_limited', 0)} "
          f"requests={fake.requests}")
    return all(checks.values())


if __name__ == "__main__":
    sys.exit(main())
