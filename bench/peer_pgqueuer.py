"""pgqueuer's side of the speed benchmarks, on PostgreSQL (runs in bench/.peers/venv).

Configuration: schema installed with `Queries.install()` (durability "durable", the
default: every table logged); the asyncpg driver (pgqueuer's recommended one); jobs
enqueued with `Queries.enqueue` (lists of entrypoints/payloads/priorities for bulk); a
no-op `async def` entrypoint (pgqueuer runs only coroutines). Workers: `--processes`
(2) separate `pgq run peer_pgqueuer:create_manager` processes with pgqueuer's defaults
(batch size 10, no concurrency cap, LISTEN/NOTIFY), `--mode drain` for end to end.

    .peers/venv/bin/python peer_pgqueuer.py end_to_end --backend postgres --jobs 10000
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import version
from typing import Any

import asyncpg
import harness
from pgqueuer import AsyncpgDriver, Job, QueueManager
from pgqueuer.queries import Queries

URL_ENV = "PGQUEUER_BENCH_URL"
ENTRYPOINT = "noop"
CHUNK = 10_000


@asynccontextmanager
async def create_manager() -> AsyncIterator[QueueManager]:
    """The worker's factory (`pgq run peer_pgqueuer:create_manager`)."""
    connection = await asyncpg.connect(os.environ[URL_ENV])
    manager = QueueManager(Queries(AsyncpgDriver(connection)))

    @manager.entrypoint(ENTRYPOINT)
    async def noop(job: Job) -> None:
        harness.record(int(job.payload or b"0"))

    try:
        yield manager
    finally:
        await connection.close()


async def connect(url: str, install: bool = True) -> tuple[asyncpg.Connection, Queries]:
    connection = await asyncpg.connect(url)
    queries = Queries(AsyncpgDriver(connection))
    if install:
        await queries.install()
    return connection, queries


async def enqueue_many(queries: Queries, tokens: range) -> None:
    for start in range(tokens.start, tokens.stop, CHUNK):
        chunk = range(start, min(start + CHUNK, tokens.stop))
        await queries.enqueue([ENTRYPOINT] * len(chunk),
                              [str(token).encode() for token in chunk], [0] * len(chunk))


async def enqueue_single(url: str, jobs: int) -> dict[str, Any]:
    connection, queries = await connect(url)
    for token in range(jobs, jobs + 20):  # warm-up, as for errand
        await queries.enqueue(ENTRYPOINT, str(token).encode())
    started = time.perf_counter()
    for token in range(jobs):
        await queries.enqueue(ENTRYPOINT, str(token).encode())
    seconds = time.perf_counter() - started
    await connection.close()
    return {"jobs_per_s": round(jobs / seconds, 1), "seconds": round(seconds, 3)}


async def enqueue_bulk(url: str, jobs: int) -> dict[str, Any]:
    connection, queries = await connect(url)
    await queries.enqueue([ENTRYPOINT], [b"-1"], [0])  # warm-up
    entrypoints = [ENTRYPOINT] * jobs
    payloads: list[bytes | None] = [str(token).encode() for token in range(jobs)]
    priorities = [0] * jobs
    started = time.perf_counter()
    await queries.enqueue(entrypoints, payloads, priorities)
    seconds = time.perf_counter() - started
    await connection.close()
    return {"jobs_per_s": round(jobs / seconds, 1), "seconds": round(seconds, 3)}


def worker_command(drain: bool) -> list[str]:
    """`pgq run` of pgqueuer 1.6.0 fails at start-up with this typer (its --log-level is
    passed on as a str), so the worker is started as `pgq run` does it: `pgqueuer.run`
    on uvloop when installed."""
    return [sys.executable, os.path.abspath(__file__), "worker",
            "--mode", "drain" if drain else "continuous"]


def run_worker(mode: str) -> None:
    """One worker process: `pgqueuer.run(factory, mode=...)`, as `pgq run` would."""
    import logging

    import pgqueuer
    from pgqueuer.types import QueueExecutionMode

    logging.getLogger("pgqueuer").setLevel(logging.WARNING)
    coroutine = pgqueuer.run(create_manager, mode=QueueExecutionMode(mode))
    try:
        import uvloop
    except ImportError:
        asyncio.run(coroutine)
    else:
        uvloop.run(coroutine)


def queue_left(url: str) -> int:
    async def count() -> int:
        connection = await asyncpg.connect(url)
        try:
            return int(await connection.fetchval("SELECT count(*) FROM pgqueuer"))
        finally:
            await connection.close()
    return asyncio.run(count())


def end_to_end(url: str, jobs: int, processes: int, folder: str) -> dict[str, Any]:
    async def fill() -> None:
        connection, queries = await connect(url)
        await enqueue_many(queries, range(jobs))
        await connection.close()
    asyncio.run(fill())
    harness.vacuum_analyze(url, ("pgqueuer",))
    log = os.path.join(folder, "workers.log")
    env = harness.child_env(**{URL_ENV: url, harness.RECORD_DIR_ENV: folder})
    started = time.time()
    workers = [harness.start(worker_command(drain=True), env, log) for _ in range(processes)]
    ended = harness.wait_all(workers, 600.0, log)
    records = harness.read_records(folder)
    once = harness.exactly_once(records, jobs)
    left = queue_left(url)
    if left:
        raise SystemExit(f"pgqueuer left {left} jobs in its queue")
    return harness.drain_result(jobs, started, min(r[1] for r in records), ended, once)


def latency(url: str, jobs: int, processes: int, interval: float,
            folder: str) -> dict[str, Any]:
    loop = asyncio.new_event_loop()
    connection, queries = loop.run_until_complete(connect(url))

    def enqueue(token: int) -> None:
        loop.run_until_complete(queries.enqueue(ENTRYPOINT, str(token).encode()))

    log = os.path.join(folder, "workers.log")
    env = harness.child_env(**{URL_ENV: url, harness.RECORD_DIR_ENV: folder})
    workers = [harness.start(worker_command(drain=False), env, log) for _ in range(processes)]
    try:
        harness.warm_up(folder, jobs, processes, enqueue)
        enqueued_at = harness.pace(jobs, interval, enqueue)
        harness.wait_recorded(folder, jobs)
        time.sleep(0.2)  # a duplicate, if any, would show up now
    finally:
        for worker in workers:
            harness.stop(worker)
        loop.run_until_complete(connection.close())
        loop.close()
    records = [r for r in harness.read_records(folder) if r[0] < jobs]
    once = harness.exactly_once(records, jobs)
    if not once.ok:
        raise SystemExit(f"pgqueuer latency run: {once}")
    return harness.latency_result(enqueued_at, records)


def main() -> int:
    if sys.argv[1:2] == ["worker"]:
        run_worker(sys.argv[sys.argv.index("--mode") + 1])
        return 0
    args = harness.peer_arguments(__doc__.splitlines()[0],
                                  ("enqueue_single", "enqueue_bulk", "end_to_end", "latency"))
    database = harness.DATABASES["pgqueuer"]
    url = harness.fresh_postgres(args.postgres_url, database)
    folder = harness.scratch_folder()
    try:
        if args.workload == "enqueue_single":
            result = asyncio.run(enqueue_single(url, args.jobs))
        elif args.workload == "enqueue_bulk":
            result = asyncio.run(enqueue_bulk(url, args.jobs))
        elif args.workload == "end_to_end":
            result = end_to_end(url, args.jobs, args.processes, folder)
        else:
            result = latency(url, args.jobs, args.processes, args.interval, folder)
    finally:
        harness.drop_postgres(args.postgres_url, database)
        shutil.rmtree(folder, ignore_errors=True)
    harness.emit({"version": version("pgqueuer"), **result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
