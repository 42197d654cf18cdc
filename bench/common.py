"""Helpers shared by the benchmarks: throw-away databases, no-op jobs, versions, output.

Every benchmark run gets a database of its own, created here and removed afterwards:
a SQLite file in a temporary folder, or a fresh schema inside a dedicated PostgreSQL
database (so the server's other databases, and the advisory locks taken in them, are
never touched).
"""

from __future__ import annotations

import json
import os
import platform
import sqlite3
import subprocess
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from errand.jobs import NewJob
from errand.storage import Backend

DEFAULT_POSTGRES_URL = os.environ.get(
    "ERRAND_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
BENCH_DATABASE = "errand_bench"
BENCH_SCHEMA = "errand_bench"
ENQUEUE_BATCH = 1000


def noop_jobs(channels: Sequence[str], count: int) -> list[NewJob]:
    """`count` ready no-op jobs, spread round-robin over `channels`, all of one priority."""
    return [NewJob(uuid=uuid.uuid4(), task="bench.noop", args="[]", kwargs="{}", context="{}",
                   description="no-op", channel=channels[i % len(channels)], priority=10,
                   max_retries=0, retry_pattern=None, timeout=None)
            for i in range(count)]


def fill(backend: Backend, jobs: Sequence[NewJob], batch: int = ENQUEUE_BATCH) -> None:
    """Store `jobs` in batches of `batch` (one round trip each)."""
    for start in range(0, len(jobs), batch):
        backend.enqueue(jobs[start:start + batch])


def median(values: Sequence[float]) -> float:
    """The median of a non-empty sequence (mean of the middle two when even)."""
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


def emit(record: dict[str, Any]) -> None:
    """Print one result as a single JSON line."""
    print(json.dumps(record, sort_keys=False), flush=True)


def python_version() -> str:
    return f"{platform.python_implementation()} {platform.python_version()}"


def sqlite_version() -> str:
    return sqlite3.sqlite_version


def source_revision() -> str:
    """The errand checkout's commit (`-dirty` if it has uncommitted changes), or "?"."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        done = subprocess.run(["git", "-C", here, "describe", "--always", "--dirty"],
                              capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return "?"
    return done.stdout.strip() or "?"


def _with_database(url: str, database: str, schema: str | None = None) -> str:
    """`url` pointed at another database, with `search_path` set to `schema` if given."""
    parts = urlsplit(url)
    if not parts.scheme.startswith("postgres"):
        raise SystemExit(f"--postgres-url must be a postgresql:// URL, got {parts.scheme!r}")
    query = parts.query
    if schema is not None:
        if "options=" in query:
            raise SystemExit("--postgres-url must not carry its own options= parameter")
        option = "options=" + quote(f"-csearch_path={schema}", safe="")
        query = f"{query}&{option}" if query else option
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, query, parts.fragment))


class PostgresScratch:
    """A dedicated database on a PostgreSQL server, with a fresh schema per run.

    `server_url` names any database the user may connect to; the bench database is
    created next to it (dropped first if a crashed run left it) and dropped on close.
    """

    def __init__(self, server_url: str, database: str = BENCH_DATABASE) -> None:
        import psycopg

        self._psycopg = psycopg
        self.server_url = server_url
        self.database = database
        self._admin_url = _with_database(server_url, database)
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{database}"')
            row = conn.execute("SHOW server_version").fetchone()
            self.version = str(row[0]) if row else "?"

    def fresh(self, name: str) -> str:
        """Drop and recreate schema `name`; return a URL whose search_path is that schema."""
        schema = f"{BENCH_SCHEMA}_{name}"
        with self._psycopg.connect(self._admin_url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            conn.execute(f'CREATE SCHEMA "{schema}"')
        return _with_database(self.server_url, self.database, schema)

    def analyze(self, url: str) -> None:
        """Vacuum and analyze errand's tables, as autovacuum would after a bulk enqueue."""
        with self._psycopg.connect(url, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE errand_jobs, errand_attempts, errand_workers")

    def close(self) -> None:
        with self._psycopg.connect(self.server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')


@contextmanager
def postgres_scratch(server_url: str) -> Iterator[PostgresScratch]:
    """A `PostgresScratch` that is dropped however the benchmark ends."""
    scratch = PostgresScratch(server_url)
    try:
        yield scratch
    finally:
        scratch.close()


class SqliteScratch:
    """A temporary folder holding one fresh SQLite file per run."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self._files = 0

    def fresh(self, name: str) -> str:
        """A URL naming a database file that does not exist yet (errand creates it)."""
        self._files += 1
        return "sqlite:///" + os.path.join(self.folder, f"{name}-{self._files}.db")

    def analyze(self, url: str) -> None:
        """Nothing: SQLite gathers no statistics unless asked, and errand never asks."""


@contextmanager
def sqlite_scratch(parent: str | None = None) -> Iterator[SqliteScratch]:
    """A `SqliteScratch` whose folder (and every file in it) is removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="errand-bench-", dir=parent) as folder:
        yield SqliteScratch(folder)
