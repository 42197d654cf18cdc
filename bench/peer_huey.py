"""Huey's side of the speed benchmarks, on SQLite (runs in bench/.peers/venv).

Configuration: `SqliteHuey(filename=...)` with Huey's defaults: WAL journal, SQLite's
default `synchronous` (FULL, 2, in this build: Huey sets it only when given `fsync=`),
results stored (a `None` result is not written, as Huey never stores None). Jobs enqueued
by calling the task (`noop(token)`), one transaction each; Huey has no bulk enqueue.
Consumer: `huey_consumer peer_huey.huey -k process -w 2` (two worker processes under one
consumer process), `-n` (no periodic tasks), and a 10 ms polling interval
(`-d 0.01 -m 0.01 -b 1`, where Huey's default backs off from 0.1 s to 10 s when idle):
the interval errand's SQLite worker polls at. Huey has no exit-when-empty mode: the
bench stops the consumer (SIGINT, graceful) once every job is recorded and the queue is
empty, and counts up to that moment.

    .peers/venv/bin/python peer_huey.py end_to_end --backend sqlite --jobs 10000
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import sys
import time
from importlib.metadata import version
from typing import Any

import harness
from huey import SqliteHuey

DB_ENV = "HUEY_BENCH_DB"



def build() -> tuple[SqliteHuey, Any]:
    """Huey on the file named by $HUEY_BENCH_DB, and its no-op task."""
    built = SqliteHuey(filename=os.environ[DB_ENV])

    @built.task(name="noop")
    def noop(token: int) -> None:
        harness.record(token)

    return built, noop


# The consumer imports this module (`huey_consumer peer_huey.huey`); run as a script, it
# imports itself under that name once the file is known (see `bind`).
if __name__ != "__main__":
    huey, noop = build()


def bind(path: str) -> Any:
    """This module's task, on a Huey whose database is `path` (as the consumer sees it)."""
    os.environ[DB_ENV] = path
    import peer_huey  # imported under its own name, as `huey_consumer peer_huey.huey` does

    return peer_huey.noop


def queued(path: str) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("SELECT count(*) FROM task").fetchone()[0])


def enqueue_single(path: str, jobs: int) -> dict[str, Any]:
    task = bind(path)
    for token in range(jobs, jobs + 20):  # warm-up, as for errand
        task(token)
    started = time.perf_counter()
    for token in range(jobs):
        task(token)
    seconds = time.perf_counter() - started
    return {"jobs_per_s": round(jobs / seconds, 1), "seconds": round(seconds, 3)}


def consumer_command(processes: int) -> list[str]:
    return [os.path.join(os.path.dirname(sys.executable), "huey_consumer"), "peer_huey.huey",
            "-k", "process", "-w", str(processes), "-n", "-d", "0.01", "-m", "0.01",
            "-b", "1", "-q"]


def end_to_end(path: str, jobs: int, processes: int, folder: str) -> dict[str, Any]:
    task = bind(path)
    for token in range(jobs):  # no bulk enqueue in Huey; not timed
        task(token)
    log = os.path.join(folder, "workers.log")
    env = harness.child_env(**{DB_ENV: path, harness.RECORD_DIR_ENV: folder})
    counter = harness.RecordCounter(folder)
    started = time.time()
    consumer = harness.start(consumer_command(processes), env, log)
    try:
        ended = harness.wait_for(lambda: counter() >= jobs and queued(path) == 0, 600.0,
                                 "Huey to run every job")
    finally:
        harness.stop(consumer, signal.SIGINT)
    time.sleep(0.1)
    records = harness.read_records(folder)
    once = harness.exactly_once(records, jobs)
    return harness.drain_result(jobs, started, min(r[1] for r in records), ended, once)


def latency(path: str, jobs: int, processes: int, interval: float,
            folder: str) -> dict[str, Any]:
    task = bind(path)
    log = os.path.join(folder, "workers.log")
    env = harness.child_env(**{DB_ENV: path, harness.RECORD_DIR_ENV: folder})
    consumer = harness.start(consumer_command(processes), env, log)
    try:
        harness.warm_up(folder, jobs, processes, task)
        enqueued_at = harness.pace(jobs, interval, task)
        harness.wait_recorded(folder, jobs)
        time.sleep(0.2)  # a duplicate, if any, would show up now
    finally:
        harness.stop(consumer, signal.SIGINT)
    records = [r for r in harness.read_records(folder) if r[0] < jobs]
    once = harness.exactly_once(records, jobs)
    if not once.ok:
        raise SystemExit(f"huey latency run: {once}")
    return harness.latency_result(enqueued_at, records)


def main() -> int:
    args = harness.peer_arguments(__doc__.splitlines()[0],
                                  ("enqueue_single", "end_to_end", "latency"))
    folder = harness.scratch_folder()
    path = os.path.join(folder, "huey.db")
    try:
        if args.workload == "enqueue_single":
            result = enqueue_single(path, args.jobs)
        elif args.workload == "end_to_end":
            result = end_to_end(path, args.jobs, args.processes, folder)
        else:
            result = latency(path, args.jobs, args.processes, args.interval, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    harness.emit({"version": version("huey"), **result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
