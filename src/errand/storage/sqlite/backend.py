"""SQLite storage through the standard library: WAL, BEGIN IMMEDIATE, retries on a busy file.

Each thread gets its own connection (sqlite3 connections are not shared across threads).
Every write takes the file's write lock up front (BEGIN IMMEDIATE), so a transaction never
has to upgrade a read lock, and a busy file is retried here: "database is locked" never
reaches the user.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from errand.errors import ConfigurationError, DatabaseError
from errand.storage.common import Run, SqlBackend, T
from errand.storage.sqlfile import load_migrations, load_queries

_PACKAGE = "errand.storage.sqlite"
_QUERIES = load_queries(_PACKAGE)
_MIGRATIONS = load_migrations(_PACKAGE)
LATEST_VERSION = _MIGRATIONS[-1][0]
MINIMUM_SQLITE = (3, 35, 0)  # RETURNING

# SQLite's own busy wait sleeps up to 100 ms between looks and loses the lock to a busy
# neighbour again and again; errand looks every millisecond or so instead (fairer).
BUSY_TIMEOUT = 0.02  # seconds (connection_setup says the same)
LOCKED_GIVE_UP_AFTER = 120.0


def path_from_url(url: str) -> str:
    """`sqlite:///errand.db` is relative to the working directory; `sqlite:////abs` absolute."""
    if not url.startswith("sqlite:///"):
        raise ConfigurationError(
            f"a SQLite URL looks like sqlite:///errand.db or sqlite:////abs/path.db, got {url!r}")
    path = url[len("sqlite:///"):].split("?", 1)[0]
    if not path or path == ":memory:":
        raise ConfigurationError(
            "errand needs a SQLite file shared by its processes; :memory: cannot be used")
    return path


def _is_locked(exc: sqlite3.OperationalError) -> bool:
    message = str(exc).lower()
    return "locked" in message or "busy" in message


class SqliteBackend(SqlBackend):
    dialect = "sqlite"
    queries = _QUERIES
    nested_json = False
    latest_version = LATEST_VERSION

    def __init__(self, url: str) -> None:
        if sqlite3.sqlite_version_info < MINIMUM_SQLITE:
            raise ConfigurationError(
                f"errand needs SQLite >= 3.35 (for RETURNING); this Python has "
                f"{sqlite3.sqlite_version}")
        self.url = url
        self.path = path_from_url(url)
        self.where = f"SQLite database {self.path}"
        self._local = threading.local()
        folder = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(folder):
            raise DatabaseError(f"cannot open SQLite database {self.path}: "
                                f"the folder {folder} does not exist")
        self._ensure_schema()

    # -- connections -----------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT,
                                   isolation_level=None, check_same_thread=False)
            self._retry_locked(lambda: _run_block(conn, self.queries["connection_setup"], {}))
        except sqlite3.DatabaseError as exc:
            raise DatabaseError(f"cannot open SQLite database {self.path}: {exc}") from exc
        return conn

    @property
    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    def _retry_locked(self, operation: Any) -> Any:
        """Run `operation`, retrying while another process holds the write lock."""
        deadline = time.monotonic() + LOCKED_GIVE_UP_AFTER
        pause = 0.001
        while True:
            try:
                return operation()
            except sqlite3.OperationalError as exc:
                if not _is_locked(exc) or time.monotonic() > deadline:
                    raise
            time.sleep(pause * (0.5 + random.random()))
            pause = min(pause * 1.5, 0.005)

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.DatabaseError as exc:
            raise DatabaseError(f"cannot {doing} SQLite database {self.path}: {exc}") from exc

    def _read(self, name: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        conn = self._conn
        with self._errors("read"):
            rows: list[tuple[Any, ...]] = self._retry_locked(
                lambda: conn.execute(self.queries[name][0], params).fetchall())
            return rows

    def _transaction(self, work: Callable[[Run], T]) -> T:
        def attempt() -> T:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = work(lambda name, params: _run_block(conn, self.queries[name], params))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return result

        with self._errors("write"):
            done: T = self._retry_locked(attempt)
            return done

    def _on_connection(self, connection: Any, work: Callable[[Run], T]) -> T:
        if not isinstance(connection, sqlite3.Connection):
            raise ConfigurationError(
                "connection= must be a sqlite3.Connection when the app uses SQLite, "
                f"got {type(connection).__module__}.{type(connection).__qualname__}")
        row = connection.execute(self.queries["database_identity"][0]).fetchone()
        main = row[0] if row else ""
        if not main or os.path.realpath(main) != os.path.realpath(self.path):
            raise ConfigurationError(
                f"connection= is open on {main or 'an in-memory database'}, but the app's "
                f"database is {self.path}")
        with self._errors("use the given connection to"):
            done: T = self._retry_locked(lambda: work(
                lambda name, params: _run_block(connection, self.queries[name], params)))
            return done

    # -- schema ----------------------------------------------------------------------

    def _apply_migrations(self) -> list[int]:
        with self._errors("migrate"):
            applied: list[int] = self._retry_locked(self._migrate)
            return applied

    def _migrate(self) -> list[int]:
        conn = self._conn
        conn.execute(self.queries["lock_schema"][0])
        try:
            conn.execute(self.queries["create_schema_table"][0])
            current = conn.execute(self.queries["schema_version"][0]).fetchone()[0]
            applied = []
            for version, sql in _MIGRATIONS:
                if version > current:
                    for statement in _split_script(sql):
                        conn.execute(statement)
                    conn.execute(self.queries["record_version"][0], {"version": version})
                    applied.append(version)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return applied

    # -- dialect details -------------------------------------------------------------

    def _when(self, value: Any) -> datetime | None:
        return None if value is None else datetime.fromtimestamp(value, UTC)

    def _eta_param(self, value: datetime) -> Any:
        return value.timestamp()

    def _list_param(self, values: Sequence[Any]) -> Any:
        return json.dumps(list(values))

    def _uuid_param(self, uuid: UUID) -> Any:
        return str(uuid)

    def waker(self) -> SqliteWaker:
        return SqliteWaker(self)

    def data_version(self) -> int:
        """Changes when another connection commits; a cheap way to poll for news."""
        return int(self._conn.execute(self.queries["watch_changes"][0]).fetchone()[0])

    def close(self) -> None:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


def _run_block(conn: sqlite3.Connection, statements: list[str],
               params: dict[str, Any]) -> tuple[list[tuple[Any, ...]], int]:
    """Run a named block's statements in order. The block's result is the rows and count of
    its first statement that returns rows (a SELECT, or a write with RETURNING), else the
    first statement's count: a block may write, first, what that statement then changes."""
    result: tuple[list[tuple[Any, ...]], int] | None = None
    first_count = None
    for statement in statements:
        cursor = conn.execute(statement, params)
        found = cursor.fetchall()
        if first_count is None:
            first_count = cursor.rowcount
        if result is None and cursor.description is not None:
            result = found, cursor.rowcount
    return result or ([], first_count or 0)


def _split_script(sql: str) -> list[str]:
    """Statements of a migration file (which holds no triggers, so `;` ends a statement)."""
    lines = [line for line in sql.splitlines() if not line.strip().startswith("--")]
    return [part.strip() for part in "\n".join(lines).split(";") if part.strip()]


class SqliteWaker:
    """Polls `PRAGMA data_version`: no I/O unless another process committed something."""

    poll_interval = 0.01

    def __init__(self, backend: SqliteBackend) -> None:
        self._backend = backend
        self._seen = backend.data_version()

    def fileno(self) -> int | None:
        return None

    def check(self) -> tuple[bool, bool]:
        try:
            version = self._backend.data_version()
        except sqlite3.DatabaseError as exc:
            raise DatabaseError(f"cannot poll SQLite database {self._backend.path}: {exc}") \
                from exc
        changed = version != self._seen
        self._seen = version
        return changed, changed

    def close(self) -> None:
        """Nothing to release: the waker reads through the backend's own connection."""
