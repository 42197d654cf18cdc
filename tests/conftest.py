"""Shared fixtures: a real SQLite file and a real PostgreSQL schema per test.

PostgreSQL tests skip when no server answers, except in CI (`CI=true`), where they fail:
a skipped PostgreSQL test must never pass for a green run.
"""

from __future__ import annotations

import os
import subprocess
import textwrap
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest

from helpers import stop_all

POSTGRES_URL = os.environ.get("ERRAND_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

_postgres_checked: bool | None = None


def postgres_available() -> bool:
    global _postgres_checked
    if _postgres_checked is None:
        try:
            psycopg.connect(POSTGRES_URL, connect_timeout=3).close()
            _postgres_checked = True
        except psycopg.OperationalError:
            _postgres_checked = False
    return _postgres_checked


def require_postgres() -> None:
    if not postgres_available():
        message = f"PostgreSQL is not reachable at {POSTGRES_URL}"
        if IN_CI:
            pytest.fail(message + " (in CI PostgreSQL tests must run)")
        pytest.skip(message)


def with_search_path(url: str, schema: str) -> str:
    joiner = "&" if "?" in url else "?"
    return f"{url}{joiner}options=-csearch_path%3D{schema}"


@contextmanager
def postgres_schema() -> Iterator[str]:
    """A PostgreSQL URL whose tables live in a fresh schema, dropped at the end."""
    require_postgres()
    schema = f"errand_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield with_search_path(POSTGRES_URL, schema)
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture
def postgres_url() -> Iterator[str]:
    with postgres_schema() as url:
        yield url


@pytest.fixture
def workers() -> Iterator[list[subprocess.Popen[Any]]]:
    """Worker processes a test started (helpers.worker), SIGKILLed at its end."""
    started: list[subprocess.Popen[Any]] = []
    yield started
    stop_all(started)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'errand.db'}"


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each test using this runs once on a SQLite file and once on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'errand.db'}"
    else:
        yield request.getfixturevalue("postgres_url")


@pytest.fixture
def app_module(tmp_path: Path) -> Callable[[str, str], Path]:
    """Write a module of tasks into a fresh folder: `app_module("tasks", source)`."""

    def write(name: str, source: str) -> Path:
        path = tmp_path / f"{name}.py"
        path.write_text(textwrap.dedent(source))
        return path

    return write
