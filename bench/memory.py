"""Workload f: the supervisor's RSS before and after N (100,000) jobs; target: it grows by
less than 5 MB.

One `errand worker --concurrency 2` (not burst) on a fresh database, fed in chunks of
1,000 jobs (about 1,000 waiting at any time). Readings of the
supervisor's VmRSS (/proc): `idle` once it has registered and sat idle for a second,
`warm` after its first 1,000 jobs, then every tenth of the N jobs, and `after` once all N
are done and written. Growth is reported from `idle` (the target) and from `warm` (what
a leak would add, without the one-off costs of the first jobs). Every job must have run
exactly once. From the repository root:

    .venv/bin/python bench/memory.py --backend all --jobs 100000
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

import errand

TARGET_GROWTH_MB = 5.0
WARM_JOBS = 1_000
BACKLOG = 1_000


def done_jobs(url: str) -> int:
    return int(errand_side.query(
        url, "SELECT count(*) FROM errand_jobs WHERE state = 'done'")[0][0])


def feed(round_: errand_side.Round, jobs: int, warm: int, pid: int) -> list[float]:
    """Enqueue the N jobs in chunks, keeping about BACKLOG waiting (the workload is about
    memory, not about a deep queue); read the RSS at every tenth. Returns the readings."""
    enqueued, samples, marks = 0, [], [jobs * step // 10 for step in range(1, 11)]
    counter = harness.RecordCounter(round_.folder)
    deadline = time.monotonic() + 3600.0
    while marks:
        ran = counter() - warm
        if ran >= marks[0]:
            samples.append(round(harness.rss_mb(pid), 2))
            marks.pop(0)
            continue
        if enqueued < jobs and enqueued - ran < BACKLOG:
            chunk = min(BACKLOG, jobs - enqueued)
            errand_side.prefill(chunk, first=enqueued)
            enqueued += chunk
            continue
        if time.monotonic() > deadline:
            raise SystemExit(f"only {ran} of {jobs} jobs ran within an hour")
        time.sleep(0.05)
    return samples


def measure(round_: errand_side.Round) -> dict[str, Any]:
    app = errand_side.bind(round_.url)
    jobs = round_.jobs
    warm = min(WARM_JOBS, max(jobs // 10, 1))
    log = os.path.join(round_.folder, "worker.log")
    worker = harness.start(errand_side.worker_command(burst=False),
                           errand_side.worker_env(round_), log)
    try:
        harness.wait_for(lambda: bool(app.backend.list_workers()), 60.0,
                         "the worker to register", interval=0.05)
        time.sleep(1.0)
        idle = harness.rss_mb(worker.pid)
        errand_side.prefill(warm, first=jobs)
        harness.wait_for(lambda: done_jobs(round_.url) >= warm, 600.0, "the warm-up jobs",
                         interval=0.05)
        time.sleep(0.5)
        warm_rss = harness.rss_mb(worker.pid)
        started = time.perf_counter()
        samples = feed(round_, jobs, warm, worker.pid)
        harness.wait_for(lambda: done_jobs(round_.url) >= warm + jobs, 600.0,
                         "every job to be written done", interval=0.1)
        seconds = time.perf_counter() - started
        time.sleep(1.0)
        after = harness.rss_mb(worker.pid)
    finally:
        status = harness.stop(worker)
    if status != 0:
        raise SystemExit(f"the worker exited with status {status}; see {log}")
    records = [r for r in harness.read_records(round_.folder) if r[0] < jobs]
    once = harness.exactly_once(records, jobs)
    if not once.ok:
        raise SystemExit(f"errand memory run: {once}")
    return {
        "idle_mb": round(idle, 2), "warm_mb": round(warm_rss, 2), "after_mb": round(after, 2),
        "growth_mb": round(after - idle, 2), "growth_after_warmup_mb": round(after - warm_rss, 2),
        "samples_mb": samples, "jobs_per_s": round(jobs / seconds, 1),
        "exactly_once": once.ok, "met": after - idle < TARGET_GROWTH_MB,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    errand_side.add_common_arguments(parser, jobs=100_000, repeat=1)
    args = parser.parse_args(argv)
    for backend in errand_side.BACKENDS if args.backend == "all" else (args.backend,):
        load = harness.load_average()
        with errand_side.fresh_round(backend, args) as round_:
            record = measure(round_)
        harness.emit({"bench": "memory", "backend": backend, "system": "errand",
                      "version": errand.__version__, "jobs": args.jobs,
                      "primary": "growth_mb", **record,
                      "target_growth_mb": TARGET_GROWTH_MB, "load_1m": round(load, 2)})
        errand_app.app.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
