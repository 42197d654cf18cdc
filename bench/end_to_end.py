"""Workload c: N pre-filled no-op jobs drained by 2 processes' worth of workers, jobs/s.

errand: one `errand worker --concurrency 2 --burst` (a supervisor and two job processes,
so every job runs in a child process a timeout can kill), on N jobs stored beforehand in
bulk (then VACUUM ANALYZE on PostgreSQL, as for the peers). Each job appends its token
to a file of its process; afterwards every token must appear exactly once, and errand's
tables must show every job done after exactly one try. From the repository root:

    .venv/bin/python bench/end_to_end.py --backend all --jobs 10000 --with-peers
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import errand_side
import harness


def drain(round_: errand_side.Round, timeout: float = 900.0,
          check_tables: bool = True) -> dict[str, Any]:
    """Run one burst worker over the jobs already stored; check and return the figures.

    `check_tables`: also check errand's tables (only when they hold these jobs alone)."""
    log = os.path.join(round_.folder, "worker.log")
    started = time.time()
    worker = harness.start(errand_side.worker_command(burst=True),
                           errand_side.worker_env(round_), log)
    ended = harness.wait_all([worker], timeout, log)
    records = harness.read_records(round_.folder)
    once = harness.exactly_once(records, round_.jobs)
    if not once.ok:
        states = errand_side.query(round_.url, "SELECT state, count(*) FROM errand_jobs "
                                               "WHERE id > (SELECT max(id) FROM errand_jobs) "
                                               f"- {round_.jobs} GROUP BY state")
        with open(log, errors="replace") as handle:
            tail = handle.read()[-3000:]
        raise SystemExit(f"errand end to end: {once}; the last {round_.jobs} jobs by state: "
                         f"{states}; worker log:\n{tail}")
    if check_tables:
        errand_side.verify_done(round_.url, round_.jobs)
    return harness.drain_result(round_.jobs, started, min(r[1] for r in records), ended, once)


def measure(round_: errand_side.Round) -> dict[str, Any]:
    errand_side.bind(round_.url)
    errand_side.prefill(round_.jobs)
    errand_side.analyze(round_)
    return drain(round_)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    errand_side.add_common_arguments(parser, jobs=10_000)
    args = parser.parse_args(argv)
    errand_side.compare("end_to_end", args, measure, primary="jobs_per_s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
