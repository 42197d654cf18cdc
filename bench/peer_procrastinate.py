"""Procrastinate's side of the speed benchmarks, on PostgreSQL (runs in bench/.peers/venv).

Configuration: `App(connector=PsycopgConnector(conninfo=...))`, schema applied with
`app.schema_manager.apply_schema()`; jobs deferred through the synchronous API
(`task.defer(token=...)`, `task.batch_defer(...)` for bulk), as a web request would; a
no-op `async def` task (Procrastinate runs coroutines on its event loop, sync tasks in
a thread). Workers: `--processes` (2) separate `procrastinate --app
peer_procrastinate.app worker --concurrency 1` processes (Procrastinate's default
concurrency), `--one-shot` (exit when the queue is empty) for end to end; LISTEN/NOTIFY
on (the default); finished jobs are kept (`--delete-jobs` default "never", as errand keeps
them).

    .peers/venv/bin/python peer_procrastinate.py end_to_end --backend postgres --jobs 10000
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from importlib.metadata import version
from typing import Any

import harness
import procrastinate

URL_ENV = "PROCRASTINATE_BENCH_URL"
CHUNK = 10_000



def build_app() -> procrastinate.App:
    """The app on the database named by $PROCRASTINATE_BENCH_URL, with its no-op task."""
    built = procrastinate.App(connector=procrastinate.PsycopgConnector(
        conninfo=os.environ.get(URL_ENV, "")))

    @built.task(name="noop")
    async def noop(token: int) -> None:
        harness.record(token)

    return built


# The workers import this module (`--app peer_procrastinate.app`); run as a script, it
# imports itself under that name once the URL is set (see `opened`).
app = build_app() if __name__ != "__main__" else None


def opened(url: str) -> procrastinate.App:
    """The app on `url`, opened synchronously, schema applied."""
    os.environ[URL_ENV] = url
    import peer_procrastinate

    configured = peer_procrastinate.app
    assert configured is not None
    configured.open()
    configured.schema_manager.apply_schema()
    return configured


def task_on(configured: procrastinate.App) -> Any:
    return configured.tasks["noop"]


def enqueue_single(url: str, jobs: int) -> dict[str, Any]:
    configured = opened(url)
    task = task_on(configured)
    for token in range(jobs, jobs + 20):  # warm-up, as for errand
        task.defer(token=token)
    started = time.perf_counter()
    for token in range(jobs):
        task.defer(token=token)
    seconds = time.perf_counter() - started
    configured.close()
    return {"jobs_per_s": round(jobs / seconds, 1), "seconds": round(seconds, 3)}


def enqueue_bulk(url: str, jobs: int) -> dict[str, Any]:
    configured = opened(url)
    task = task_on(configured)
    task.batch_defer({"token": -1})  # warm-up
    arguments = [{"token": token} for token in range(jobs)]
    started = time.perf_counter()
    task.batch_defer(*arguments)
    seconds = time.perf_counter() - started
    configured.close()
    return {"jobs_per_s": round(jobs / seconds, 1), "seconds": round(seconds, 3)}


def worker_command(one_shot: bool) -> list[str]:
    command = [os.path.join(os.path.dirname(sys.executable), "procrastinate"),
               "--app", "peer_procrastinate.app", "worker", "--concurrency", "1"]
    return [*command, "--one-shot"] if one_shot else command


def statuses(url: str) -> dict[str, int]:
    import psycopg

    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT status::text, count(*) FROM procrastinate_jobs "
                            "GROUP BY status").fetchall()
    return {str(status): int(count) for status, count in rows}


def end_to_end(url: str, jobs: int, processes: int, folder: str) -> dict[str, Any]:
    configured = opened(url)
    task = task_on(configured)
    for start in range(0, jobs, CHUNK):
        task.batch_defer(*({"token": token} for token in range(start, min(start + CHUNK, jobs))))
    configured.close()
    harness.vacuum_analyze(url, ("procrastinate_jobs",))
    log = os.path.join(folder, "workers.log")
    env = harness.child_env(**{URL_ENV: url, harness.RECORD_DIR_ENV: folder})
    started = time.time()
    workers = [harness.start(worker_command(one_shot=True), env, log)
               for _ in range(processes)]
    ended = harness.wait_all(workers, 600.0, log)
    records = harness.read_records(folder)
    once = harness.exactly_once(records, jobs)
    found = statuses(url)
    if found != {"succeeded": jobs}:
        raise SystemExit(f"procrastinate jobs by status: {found}")
    return harness.drain_result(jobs, started, min(r[1] for r in records), ended, once)


def latency(url: str, jobs: int, processes: int, interval: float,
            folder: str) -> dict[str, Any]:
    configured = opened(url)
    task = task_on(configured)
    log = os.path.join(folder, "workers.log")
    env = harness.child_env(**{URL_ENV: url, harness.RECORD_DIR_ENV: folder})
    workers = [harness.start(worker_command(one_shot=False), env, log)
               for _ in range(processes)]
    try:
        harness.warm_up(folder, jobs, processes, lambda token: task.defer(token=token))
        enqueued_at = harness.pace(jobs, interval, lambda token: task.defer(token=token))
        harness.wait_recorded(folder, jobs)
        time.sleep(0.2)  # a duplicate, if any, would show up now
    finally:
        for worker in workers:
            harness.stop(worker)
        configured.close()
    records = [r for r in harness.read_records(folder) if r[0] < jobs]
    once = harness.exactly_once(records, jobs)
    if not once.ok:
        raise SystemExit(f"procrastinate latency run: {once}")
    return harness.latency_result(enqueued_at, records)


def main() -> int:
    args = harness.peer_arguments(__doc__.splitlines()[0],
                                  ("enqueue_single", "enqueue_bulk", "end_to_end", "latency"))
    database = harness.DATABASES["procrastinate"]
    url = harness.fresh_postgres(args.postgres_url, database)
    folder = harness.scratch_folder()
    try:
        if args.workload == "enqueue_single":
            result = enqueue_single(url, args.jobs)
        elif args.workload == "enqueue_bulk":
            result = enqueue_bulk(url, args.jobs)
        elif args.workload == "end_to_end":
            result = end_to_end(url, args.jobs, args.processes, folder)
        else:
            result = latency(url, args.jobs, args.processes, args.interval, folder)
    finally:
        harness.drop_postgres(args.postgres_url, database)
        shutil.rmtree(folder, ignore_errors=True)
    harness.emit({"version": version("procrastinate"), **result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
