"""Workload d: an idle worker, N jobs enqueued one by one 20 ms apart: enqueue-to-start
p50/p95/p99 in ms.

The enqueuer notes time.time() just before each `noop.delay(token)`; the job notes
time.time() as its first act (same machine, same clock). errand runs one `errand worker
--concurrency 2` (not burst), warmed up with a job first; PostgreSQL wakes it by
LISTEN/NOTIFY, SQLite by polling `PRAGMA data_version` (every 10 ms). From the
repository root:

    .venv/bin/python bench/latency.py --backend all --jobs 200 --with-peers
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import errand_app
import errand_side
import harness


def measure(round_: errand_side.Round) -> dict[str, Any]:
    errand_side.bind(round_.url)
    jobs, task = round_.jobs, errand_app.noop
    log = os.path.join(round_.folder, "worker.log")
    worker = harness.start(errand_side.worker_command(burst=False),
                           errand_side.worker_env(round_), log)
    try:
        # The supervisor forks its job processes before it claims: one job proves it ready.
        harness.warm_up(round_.folder, jobs, 1, task.delay)
        enqueued_at = harness.pace(jobs, round_.args.interval, task.delay)
        harness.wait_recorded(round_.folder, jobs)
        time.sleep(0.2)  # a duplicate, if any, would show up now
    finally:
        status = harness.stop(worker)
    if status != 0:
        raise SystemExit(f"the worker exited with status {status}; see {log}")
    records = [r for r in harness.read_records(round_.folder) if r[0] < jobs]
    once = harness.exactly_once(records, jobs)
    if not once.ok:
        raise SystemExit(f"errand latency run: {once}")
    return harness.latency_result(enqueued_at, records)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    errand_side.add_common_arguments(parser, jobs=200)
    parser.add_argument("--interval", type=float, default=0.02,
                        help="seconds between two enqueues (default 0.02)")
    args = parser.parse_args(argv)
    errand_side.compare("latency", args, measure, primary="p50_ms",
                        peer_options={"interval": args.interval})
    return 0


if __name__ == "__main__":
    sys.exit(main())
