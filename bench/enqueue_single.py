"""Workload a: enqueue N no-op jobs one call at a time (one transaction each), jobs/s.

errand: `noop.delay(token)` N times, through the app's connection pool (PostgreSQL) or its
per-thread connection (SQLite, WAL). Nothing runs the jobs. From the repository root:

    .venv/bin/python bench/enqueue_single.py --backend all --jobs 10000 --with-peers
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import errand_app
import errand_side

WARMUP = 20  # calls before the clock starts: connect, create the schema, warm caches


def measure(round_: errand_side.Round) -> dict[str, Any]:
    errand_side.bind(round_.url)
    task = errand_app.noop
    for token in range(round_.jobs, round_.jobs + WARMUP):
        task.delay(token)

    def enqueue() -> None:
        for token in range(round_.jobs):
            task.delay(token)

    seconds = errand_side.timed(enqueue)
    stored = errand_side.query(round_.url, "SELECT count(*) FROM errand_jobs")[0][0]
    if stored != round_.jobs + WARMUP:
        raise SystemExit(f"expected {round_.jobs + WARMUP} jobs stored, found {stored}")
    return {"jobs_per_s": round(round_.jobs / seconds, 1), "seconds": round(seconds, 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    errand_side.add_common_arguments(parser, jobs=10_000)
    args = parser.parse_args(argv)
    errand_side.compare("enqueue_single", args, measure, primary="jobs_per_s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
