#!/usr/bin/env python3
"""Failover under load on the 3+3 test cluster, N times per BATCH_REPLICA_ACKS value (issue 18
items 4 and 6): the counts of every run and the median recovery time, for docs/scaling.md.

Each run forms a fresh cluster and runs producers, a coordinator and two workers as processes
(BATCH_RQ_REDIS_URL on a standalone Redis). Once enough entries are acked it SIGKILLs the
master owning the queue's slot, its replica SIGSTOPped around the kill so that it lags; it
starts the killed node again once the replica is promoted, and waits until every confirmed id
is acked or known lost (tests/support/cluster_failover.py says what each count means).

    .venv/bin/python scripts/cluster_failover.py --runs 3 [--acks 0 1] [--producers 2]
        [--seconds 15] [--chunks-per-second 50] [--replica-lag-ms 3000]
        [--pad-bytes 2000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from tests.support.cluster_failover import FailoverRun, run_failover  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--acks", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--producers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--chunks-per-second", type=float, default=50.0,
                        help="per producer; a chunk is 10 entries")
    parser.add_argument("--replica-lag-ms", type=int, default=3000,
                        help="the replica SIGSTOPped this long around the kill (0: keeping up)")
    parser.add_argument("--pad-bytes", type=int, default=2000,
                        help="padding per payload: heavier writes outgrow the socket buffers")
    args = parser.parse_args()
    failed = False
    for acks in args.acks:
        runs: list[FailoverRun] = []
        for _ in range(args.runs):
            with tempfile.TemporaryDirectory(prefix="cluster-failover-") as work:
                run = run_failover(acks, Path(work), producers=args.producers,
                                   seconds=args.seconds,
                                   chunks_per_second=args.chunks_per_second,
                                   replica_lag_ms=args.replica_lag_ms,
                                   pad_bytes=args.pad_bytes)
            print(run.line(), flush=True)
            failed |= run.check_exit != 0 or run.lost_confirmed_after_kill > 0 or (
                acks > 0 and run.lost > 0)
            runs.append(run)
        print(f"replica_acks={acks}: runs={len(runs)} "
              f"accepted={sum(r.accepted for r in runs)} lost={sum(r.lost for r in runs)} "
              f"duplicates={sum(r.duplicates for r in runs)} "
              f"recovery_s median={statistics.median(r.recovery_s for r in runs):.2f} "
              f"max={max(r.recovery_s for r in runs):.2f} "
              f"promoted_s median={statistics.median(r.promoted_s for r in runs):.2f}",
              flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
