"""Workload b: enqueue N no-op jobs in one bulk call, jobs/s.

errand: one `noop.delay_many([...N calls...])` (one statement, one transaction). Nothing
runs the jobs. From the repository root:

    .venv/bin/python bench/enqueue_bulk.py --backend all --jobs 10000 --with-peers
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import errand_app
import errand_side


def measure(round_: errand_side.Round) -> dict[str, Any]:
    errand_side.bind(round_.url)
    task = errand_app.noop
    task.delay_many([((-1,), {})])  # warm-up: connect, create the schema
    calls: list[tuple[tuple[int], dict[str, Any]]] = [((token,), {})
                                                      for token in range(round_.jobs)]

    def enqueue() -> None:
        task.delay_many(calls)

    seconds = errand_side.timed(enqueue)
    stored = errand_side.query(round_.url, "SELECT count(*) FROM errand_jobs")[0][0]
    if stored != round_.jobs + 1:
        raise SystemExit(f"expected {round_.jobs + 1} jobs stored, found {stored}")
    return {"jobs_per_s": round(round_.jobs / seconds, 1), "seconds": round(seconds, 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    errand_side.add_common_arguments(parser, jobs=10_000)
    args = parser.parse_args(argv)
    # Huey has no bulk enqueue: on SQLite errand is measured alone.
    errand_side.compare("enqueue_bulk", args, measure, primary="jobs_per_s",
                        peers_by_backend={"postgres": errand_side.PEERS["postgres"]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
