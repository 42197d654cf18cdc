"""Workload e: the same claims with --history (1,000,000) finished jobs in the table as
with none; the cost must stay flat (target: within 20%).

Per backend, two databases: "empty", and "history" holding H finished jobs (state done,
one successful try each, written by SQL in one statement, then VACUUM ANALYZE on
PostgreSQL, as autovacuum would do). Each round stores N ready jobs in both and drains
them twice:

- cycle: the worker's database work, driven directly (no processes): claim 2 jobs (as a
  worker with two idle job processes does), mark them started, finish them; the two
  databases take turns claim by claim, so a load spike on a shared machine hits both
  alike. `overhead` = history's time per job / empty's - 1 (median over rounds).
- end to end: `errand worker --concurrency 2 --burst` over N more jobs in each (noisier).

From the repository root:

    .venv/bin/python bench/history.py --backend all --jobs 10000 --history 1000000
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import end_to_end
import errand_side
import harness

import errand
from errand.jobs import Finish, Outcome, State
from errand.storage import Backend, open_backend
from errand.storage.base import WorkerInfo

TARGET_OVERHEAD = 0.20
CLAIM_LIMIT = 2

# Finished jobs (and their tries) made in bulk, as errand itself would have left them.
FILL_SQL = {
    "postgres": [
        """INSERT INTO errand_jobs (uuid, task, description, state, channel, priority, eta,
                                    args, kwargs, context, max_retries, retries, attempt,
                                    result, progress, worker_id, created_at, enqueued_at,
                                    started_at, ended_at)
           SELECT gen_random_uuid(), 'bench.noop', 'history', 'done', 'root', 10,
                  now() - interval '1 day', jsonb_build_array(-g), '{}', '{}', 5, 0, 1,
                  'null', 100, 'bench-history', now() - interval '1 day',
                  now() - interval '1 day', now() - interval '1 day',
                  now() - interval '1 day'
           FROM generate_series(1, %(count)s) AS g""",
        """INSERT INTO errand_attempts (job_id, attempt, worker_id, pid, started_at, ended_at,
                                        duration, outcome, result)
           SELECT id, 1, worker_id, 1, started_at, ended_at, 0.001, 'success', 'null'
           FROM errand_jobs WHERE state = 'done'""",
    ],
    "sqlite": [
        """WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < :count)
           INSERT INTO errand_jobs (uuid, task, description, state, channel, priority, eta,
                                    args, kwargs, context, max_retries, retries, attempt,
                                    result, progress, worker_id, created_at, enqueued_at,
                                    started_at, ended_at)
           SELECT lower(printf('%s-%s-4%s-a%s-%s', hex(randomblob(4)), hex(randomblob(2)),
                               substr(hex(randomblob(2)), 2), substr(hex(randomblob(2)), 2),
                               hex(randomblob(6)))),
                  'bench.noop', 'history', 'done', 'root', 10, unixepoch() - 86400,
                  json_array(-n), '{}', '{}', 5, 0, 1, 'null', 100, 'bench-history',
                  unixepoch() - 86400, unixepoch() - 86400, unixepoch() - 86400,
                  unixepoch() - 86400
           FROM g""",
        """INSERT INTO errand_attempts (job_id, attempt, worker_id, pid, started_at, ended_at,
                                        duration, outcome, result)
           SELECT id, 1, worker_id, 1, started_at, ended_at, 0.001, 'success', 'null'
           FROM errand_jobs WHERE state = 'done'""",
    ],
}


def fill_history(backend: str, url: str, count: int) -> float:
    """Write `count` finished jobs; return the seconds it took."""
    started = time.perf_counter()
    if backend == "postgres":
        import psycopg

        with psycopg.connect(url) as conn:
            for statement in FILL_SQL[backend]:
                conn.execute(statement, {"count": count})
        harness.vacuum_analyze(url, ("errand_jobs", "errand_attempts"))
    else:
        import sqlite3

        with sqlite3.connect(url[len("sqlite:///"):]) as conn:
            for statement in FILL_SQL[backend]:
                conn.execute(statement, {"count": count})
    return time.perf_counter() - started


@dataclass
class Lane:
    """One database, drained as a worker's supervisor would, one cycle at a time."""

    name: str
    round: errand_side.Round
    backend: Backend
    worker_id: str
    cycle_seconds: float = 0.0
    claim_seconds: float = 0.0
    jobs: int = 0
    done: bool = False
    e2e: list[float] = field(default_factory=list)
    cycles: list[float] = field(default_factory=list)

    def step(self) -> None:
        clock = time.perf_counter
        started = clock()
        claimed = self.backend.claim(self.worker_id, CLAIM_LIMIT, {})
        self.claim_seconds += clock() - started
        if not claimed:
            self.done = True
            return
        self.backend.mark_started(self.worker_id, [(j.id, j.attempt, 0) for j in claimed])
        self.backend.finish(self.worker_id, [
            Finish(id=j.id, attempt=j.attempt, state=State.DONE, outcome=Outcome.SUCCESS,
                   retries=j.retries, duration=0.0) for j in claimed])
        self.cycle_seconds += clock() - started
        self.jobs += len(claimed)


@contextmanager
def lane(name: str, backend: str, args: argparse.Namespace) -> Iterator[Lane]:
    """A database for one configuration; PostgreSQL gets one database per lane."""
    with ExitStack() as stack:
        round_ = stack.enter_context(errand_side.fresh_round(backend, args, f"_{name}"))
        errand_side.bind(round_.url)
        store = open_backend(round_.url, pooled=False)
        stack.callback(store.close)
        worker_id = f"bench-{name}-{os.getpid()}"
        store.register_worker(WorkerInfo(id=worker_id, host=socket.gethostname(),
                                         pid=os.getpid(), concurrency=CLAIM_LIMIT,
                                         channels=None, version=errand.__version__))
        yield Lane(name, round_, store, worker_id)


def refill(lanes: list[Lane], jobs: int, first: int) -> None:
    for one in lanes:
        errand_side.bind(one.round.url)
        errand_side.prefill(jobs, first=first)
        errand_side.analyze(one.round)
        one.done, one.jobs, one.cycle_seconds, one.claim_seconds = False, 0, 0.0, 0.0


def measure(backend: str, args: argparse.Namespace) -> dict[str, Any]:
    with lane("empty", backend, args) as empty, lane("history", backend, args) as full:
        lanes = [empty, full]
        seconds = fill_history(backend, full.round.url, args.history)
        harness.note(f"history {backend}: {args.history:,} finished jobs written in "
                     f"{seconds:.1f} s")
        for number in range(args.repeat):
            refill(lanes, args.jobs, first=0)
            turn = 0
            while not all(one.done for one in lanes):
                for one in lanes if turn % 2 == 0 else lanes[::-1]:
                    if not one.done:
                        one.step()
                turn += 1
            for one in lanes:
                if one.jobs != args.jobs:
                    raise SystemExit(f"{one.name}: drained {one.jobs} of {args.jobs} jobs")
                one.cycles.append(one.cycle_seconds / one.jobs)
            if args.end_to_end:
                for one in lanes:
                    refill([one], args.jobs, first=0)
                    errand_side.clear_records(one.round.folder)
                    result = end_to_end.drain(one.round, check_tables=False)
                    one.e2e.append(result["jobs_per_s"])
            harness.note(f"history {backend} round {number + 1}: cycle "
                         f"{empty.cycles[-1] * 1e6:.0f} us/job empty, "
                         f"{full.cycles[-1] * 1e6:.0f} us/job with history"
                         + (f"; end to end {empty.e2e[-1]:.0f} vs {full.e2e[-1]:.0f} jobs/s"
                            if args.end_to_end else ""))
        overheads = [h / e - 1 for e, h in zip(empty.cycles, full.cycles, strict=True)]
        record: dict[str, Any] = {
            "empty_us_per_job": round(harness.median(empty.cycles) * 1e6, 1),
            "history_us_per_job": round(harness.median(full.cycles) * 1e6, 1),
            "overhead": round(harness.median(overheads), 3),
            "rounds": [round(o, 3) for o in overheads],
        }
        if args.end_to_end:
            e2e = [e / h - 1 for e, h in zip(empty.e2e, full.e2e, strict=True)]
            record.update({
                "e2e_empty_jobs_per_s": round(harness.median(empty.e2e), 1),
                "e2e_history_jobs_per_s": round(harness.median(full.e2e), 1),
                "e2e_overhead": round(harness.median(e2e), 3)})
        record["met"] = record["overhead"] <= TARGET_OVERHEAD
        return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    errand_side.add_common_arguments(parser, jobs=10_000)
    parser.add_argument("--history", type=int, default=1_000_000,
                        help="finished jobs in the 'history' database (default 1,000,000)")
    parser.add_argument("--no-end-to-end", dest="end_to_end", action="store_false",
                        help="skip the worker drains (cycle cost only)")
    args = parser.parse_args(argv)
    for backend in errand_side.BACKENDS if args.backend == "all" else (args.backend,):
        load = harness.load_average()
        record = measure(backend, args)
        harness.emit({"bench": "history", "backend": backend, "system": "errand",
                      "version": errand.__version__, "jobs": args.jobs,
                      "history": args.history, "repeat": args.repeat,
                      "primary": "overhead", **record,
                      "target_overhead": TARGET_OVERHEAD, "load_1m": round(load, 2)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
