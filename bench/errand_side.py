"""errand's side of the speed benchmarks: databases, workers, checks, and the loop that
measures errand and its peers round by round and prints one JSON line per system.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import errand_app
import harness
import peers

import errand

BACKENDS = ("postgres", "sqlite")
PEERS = {"postgres": ("pgqueuer", "procrastinate"), "sqlite": ("huey",)}
CONCURRENCY = 2  # "2 worker processes' worth": one errand worker, two job processes
FILL_BATCH = 10_000

Measure = Callable[["Round"], dict[str, Any]]


@dataclass
class Round:
    """One measurement: a backend, a fresh database and a fresh folder for records."""

    backend: str
    url: str
    folder: str
    args: argparse.Namespace

    @property
    def jobs(self) -> int:
        return int(self.args.jobs)


@contextmanager
def fresh_round(backend: str, args: argparse.Namespace, suffix: str = "") -> Iterator[Round]:
    """A new errand database (and record folder), removed afterwards."""
    folder = harness.scratch_folder()
    database = harness.DATABASES["errand"] + suffix
    try:
        if backend == "postgres":
            url = harness.fresh_postgres(args.postgres_url, database)
        else:
            url = "sqlite:///" + os.path.join(folder, "errand.db")
        try:
            yield Round(backend, url, folder, args)
        finally:
            errand_app.app.close()
            if backend == "postgres":
                harness.drop_postgres(args.postgres_url, database)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def bind(url: str) -> errand.App:
    """The bench app, pointed at `url`, schema created."""
    app = errand_app.app
    app.use_database(url)
    app.migrate()
    return app


def prefill(count: int, task: Any = None, first: int = 0) -> None:
    """Store `count` ready jobs (tokens first..first+count-1) in bulk; not timed."""
    task = task or errand_app.noop
    for start in range(first, first + count, FILL_BATCH):
        end = min(start + FILL_BATCH, first + count)
        task.delay_many([((token,), {}) for token in range(start, end)])


def analyze(round_: Round) -> None:
    """VACUUM ANALYZE after a bulk load, as autovacuum would (PostgreSQL only; errand
    never runs ANALYZE on SQLite, and neither do the SQLite peers)."""
    if round_.backend == "postgres":
        harness.vacuum_analyze(round_.url, ("errand_jobs", "errand_attempts"))


def worker_command(burst: bool = True, concurrency: int = CONCURRENCY) -> list[str]:
    command = [sys.executable, "-m", "errand", "worker", "--app", "errand_app:app",
               "--concurrency", str(concurrency), "--log-level", "warning"]
    return [*command, "--burst"] if burst else command


def worker_env(round_: Round) -> dict[str, str]:
    return harness.child_env(ERRAND_DATABASE_URL=round_.url,
                             **{harness.RECORD_DIR_ENV: round_.folder})


def query(url: str, sql: str) -> list[tuple[Any, ...]]:
    """A read for the checks, outside errand (bench SQL stays in bench/)."""
    if url.startswith("sqlite:///"):
        with sqlite3.connect(url[len("sqlite:///"):]) as conn:
            return conn.execute(sql).fetchall()
    import psycopg

    with psycopg.connect(url) as conn:
        return conn.execute(sql).fetchall()


def clear_records(folder: str) -> None:
    for name in os.listdir(folder):
        if name.startswith("jobs-"):
            os.remove(os.path.join(folder, name))


def verify_done(url: str, jobs: int) -> dict[str, Any]:
    """Every job done after exactly one try, according to errand's own tables."""
    states = dict(query(url, "SELECT state, count(*) FROM errand_jobs GROUP BY state"))
    tries, jobs_tried, successes, max_attempt = query(
        url, "SELECT count(*), count(DISTINCT job_id), "
             "sum(CASE WHEN outcome = 'success' THEN 1 ELSE 0 END), max(attempt) "
             "FROM errand_attempts")[0]
    ok = (states == {"done": jobs} and tries == jobs and jobs_tried == jobs
          and successes == jobs and max_attempt == 1)
    if not ok:
        raise SystemExit(f"errand did not run every job exactly once: states {states}, "
                         f"{tries} tries of {jobs_tried} jobs, {successes} successes")
    return {"attempts_checked": True}


# -- the comparison loop ---------------------------------------------------------------


def add_common_arguments(parser: argparse.ArgumentParser, jobs: int, repeat: int = 3) -> None:
    parser.add_argument("--backend", choices=(*BACKENDS, "all"), default="all")
    parser.add_argument("--jobs", type=int, default=jobs, help=f"(default {jobs:,})")
    parser.add_argument("--repeat", type=int, default=repeat,
                        help=f"rounds; medians are reported (default {repeat})")
    parser.add_argument("--with-peers", action="store_true",
                        help="also measure the peers (in bench/.peers/venv), round by round")
    parser.add_argument("--postgres-url", default=harness.DEFAULT_POSTGRES_URL,
                        help="any database on the server; the bench creates and drops its "
                             "own databases next to it")


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of the numbers over the rounds; flags must hold in every round."""
    summary: dict[str, Any] = {}
    for key, value in rounds[0].items():
        values = [r[key] for r in rounds]
        if isinstance(value, bool):
            summary[key] = all(values)
        elif isinstance(value, int | float):
            summary[key] = round(harness.median(values), 3)
        else:
            summary[key] = value
    return summary


def compare(bench: str, args: argparse.Namespace, measure: Measure,
            primary: str, peer_options: dict[str, Any] | None = None,
            peers_by_backend: dict[str, tuple[str, ...]] | None = None) -> None:
    """For each backend: `repeat` rounds, each measuring errand then every peer (so a load
    spike on a shared machine hits all alike); then one JSON line per system."""
    backends = BACKENDS if args.backend == "all" else (args.backend,)
    peer_table = PEERS if peers_by_backend is None else peers_by_backend
    for backend in backends:
        systems = ["errand", *(peer_table.get(backend, ()) if args.with_peers else ())]
        results: dict[str, list[dict[str, Any]]] = {system: [] for system in systems}
        versions = {"errand": errand.__version__}
        for number in range(1, args.repeat + 1):
            for system in systems:
                load = harness.load_average()
                if system == "errand":
                    with fresh_round(backend, args) as round_:
                        result = measure(round_)
                else:
                    result = peers.measure(system, bench, backend, args.jobs,
                                           args.postgres_url, peer_options or {})
                    versions[system] = result.pop("version", "?")
                result["load_1m"] = round(load, 2)
                results[system].append(result)
                harness.note(f"{bench} {backend} {system} round {number}: "
                             f"{primary}={result.get(primary)} (load {load:.2f})")
        for system in systems:
            harness.emit({"bench": bench, "backend": backend, "system": system,
                          "version": versions.get(system, "?"), "jobs": args.jobs,
                          "repeat": args.repeat, "primary": primary,
                          **summarize(results[system]),
                          "rounds": [r[primary] for r in results[system]],
                          "per_round": results[system]})


def timed(action: Callable[[], None]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started
