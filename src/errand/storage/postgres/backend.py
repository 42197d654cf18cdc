"""PostgreSQL storage through psycopg 3: a pool for applications, one connection for a worker.

A worker's supervisor forks its job processes, and a pool runs threads that do not survive
a fork, so the worker asks for `pooled=False`: one plain connection for its own queries
(reopened when it breaks) and one more for LISTEN.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool, PoolTimeout

from errand.channels import ChannelConfig
from errand.errors import ConfigurationError, DatabaseError, SerializationError
from errand.jobs import JobRow, NewJob
from errand.storage.common import Run, SqlBackend, T
from errand.storage.sqlfile import load_migrations, load_queries

_PACKAGE = "errand.storage.postgres"
_QUERIES = load_queries(_PACKAGE)
_MIGRATIONS = load_migrations(_PACKAGE)
LATEST_VERSION = _MIGRATIONS[-1][0]

# A dead server or network must surface as an error within seconds, not hang a worker.
def _configure(conn: psycopg.Connection[Any]) -> None:
    _run_block(conn, _QUERIES["connection_setup"], {})


_CONNECT_OPTIONS: dict[str, Any] = {
    "autocommit": True,
    "connect_timeout": 5,
    "application_name": "errand",
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 3,
    "keepalives_count": 3,
}


def describe(url: str) -> str:
    """The server and database of a URL, without its password, for error messages."""
    try:
        parts = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "PostgreSQL (unparsable URL)"
    host = parts.get("host") or "localhost"
    port = parts.get("port") or "5432"
    return f"PostgreSQL at {host}:{port}/{parts.get('dbname') or parts.get('user') or ''}"


class PostgresBackend(SqlBackend):
    dialect = "postgresql"
    queries = _QUERIES
    nested_json = True
    latest_version = LATEST_VERSION
    gate_says_closed = True

    def __init__(self, url: str, *, pooled: bool = True, pool_size: int = 10) -> None:
        self.url = url
        self.where = describe(url)
        self._pool: ConnectionPool | None = None
        self._conn: psycopg.Connection[Any] | None = None
        with self._connection_error("connect to"):  # fail fast, with the server's reason
            first = psycopg.connect(url, **_CONNECT_OPTIONS)
            _configure(first)
            self._identity = _run_block(first, self.queries["database_identity"], {})[0]
        if pooled:
            first.close()
            # check: after a server restart the pool must not hand out dead connections.
            self._pool = ConnectionPool(url, min_size=1, max_size=pool_size, timeout=10,
                                        kwargs=_CONNECT_OPTIONS, configure=_configure,
                                        check=ConnectionPool.check_connection,
                                        name="errand", open=True)
        else:
            self._conn = first
        try:
            self._ensure_schema()
        except BaseException:
            self.close()
            raise

    # -- connections -----------------------------------------------------------------

    @contextmanager
    def _connection_error(self, doing: str) -> Iterator[None]:
        try:
            yield
        except (psycopg.OperationalError, PoolTimeout) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DatabaseError(f"cannot {doing} {self.where}: {reason}") from exc

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        with self._connection_error("use"):
            if self._pool is not None:
                with self._pool.connection() as conn:
                    yield conn
                return
            if self._conn is None or self._conn.closed or self._conn.broken:
                if self._conn is not None:
                    self._conn.close()
                self._conn = None
                self._conn = psycopg.connect(self.url, **_CONNECT_OPTIONS)
                _configure(self._conn)
            yield self._conn

    def _read(self, name: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        with self._connection() as conn:
            return _run_block(conn, self.queries[name], params)[0]

    def _write(self, name: str, params: dict[str, Any]) -> tuple[list[tuple[Any, ...]], int]:
        statements = self.queries[name]
        if len(statements) > 1:
            return super()._write(name, params)
        with self._connection() as conn:  # autocommit: one statement is one round trip
            return _execute(conn, statements[0], params)

    def _batch(self, steps: Sequence[tuple[str, dict[str, Any]]]) -> list[list[tuple[Any, ...]]]:
        """Pipelined: every statement goes out at once, one round trip for the lot."""
        with self._connection() as conn:
            cursors = []
            with conn.pipeline():
                for name, params in steps:
                    [statement] = self.queries[name]
                    cursor = conn.cursor()
                    cursor.execute(statement, params)
                    cursors.append(cursor)
            results = [cursor.fetchall() if cursor.description is not None else []
                       for cursor in cursors]
            for cursor in cursors:
                cursor.close()
            return results

    def _claim_gated(self, worker_id: str, limit: int,
                     channels: Mapping[str, ChannelConfig]) -> list[tuple[Any, ...]] | None:
        """One round trip: the gate function takes the claim lock and checks capacities."""
        if any(config.paused or config.sequential for config in channels.values()):
            return None
        rows, _ = self._write("claim_gated", {"worker": worker_id, "limit": limit,
                                              "caps": self._capacities(channels)})
        if rows and rows[-1][0] is None:
            return None  # the gate is closed: some capacity is near its limit
        return rows

    def _transaction(self, work: Callable[[Run], T]) -> T:
        with self._connection() as conn, conn.transaction():
            return work(lambda name, params: _run_block(conn, self.queries[name], params))

    def _on_connection(self, connection: Any, work: Callable[[Run], T]) -> T:
        if not isinstance(connection, psycopg.Connection):
            raise ConfigurationError(
                "connection= must be a psycopg Connection when the app uses PostgreSQL, "
                f"got {type(connection).__module__}.{type(connection).__qualname__}")
        with self._connection_error("use the given connection to"):
            theirs = _run_block(connection, self.queries["database_identity"], {})[0]
            if theirs != self._identity:
                raise ConfigurationError(
                    f"connection= is open on database {theirs[0][0]!r}, but the app's "
                    f"database is {self._identity[0][0]!r}")
            return work(lambda name, params: _run_block(connection, self.queries[name], params))

    # -- schema ----------------------------------------------------------------------

    def _apply_migrations(self) -> list[int]:
        applied = []
        with self._connection() as conn, conn.transaction():
            conn.execute(self.queries["lock_schema"][0])
            conn.execute(self.queries["create_schema_table"][0])
            row = conn.execute(self.queries["schema_version"][0]).fetchone()
            current = row[0] if row else 0
            for version, sql in _MIGRATIONS:
                if version > current:
                    conn.execute(sql.encode())
                    conn.execute(self.queries["record_version"][0], {"version": version})
                    applied.append(version)
        return applied

    # -- dialect details -------------------------------------------------------------

    def _when(self, value: Any) -> datetime | None:
        return None if value is None else value.astimezone(UTC)

    def _eta_param(self, value: datetime) -> Any:
        return value.astimezone(UTC).isoformat()

    def _list_param(self, values: Sequence[Any]) -> Any:
        return list(values)

    def enqueue(self, jobs: Sequence[NewJob], connection: Any = None) -> list[JobRow]:
        try:
            return super().enqueue(jobs, connection)
        except pg_errors.UntranslatableCharacter as exc:
            raise SerializationError(
                "an argument contains a NUL character (\\u0000), which PostgreSQL cannot "
                "store in JSON") from exc

    def waker(self) -> PostgresWaker:
        return PostgresWaker(self.url, self.where)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
        if self._conn is not None:
            self._conn.close()


def _execute(conn: psycopg.Connection[Any], sql: str,
             params: dict[str, Any]) -> tuple[list[tuple[Any, ...]], int]:
    with conn.cursor() as cur:
        cur.execute(sql, params)
        rows = cur.fetchall() if cur.description is not None else []
        return rows, cur.rowcount


def _run_block(conn: psycopg.Connection[Any], statements: list[str],
               params: dict[str, Any]) -> tuple[list[tuple[Any, ...]], int]:
    """Run a named block's statements in order; the first one's rows are the block's result."""
    first = _execute(conn, statements[0], params)
    for statement in statements[1:]:
        _execute(conn, statement, params)
    return first


class PostgresWaker:
    """LISTENs on its own connection; readable when jobs are ready or a cancel happened."""

    poll_interval = 1.0

    def __init__(self, url: str, where: str) -> None:
        self.where = where
        try:
            self._conn = psycopg.connect(url, **_CONNECT_OPTIONS)
            _run_block(self._conn, _QUERIES["watch_changes"], {})
        except psycopg.OperationalError as exc:
            raise DatabaseError(f"cannot listen on {where}: {exc}") from exc

    def fileno(self) -> int | None:
        return self._conn.fileno()

    def check(self) -> tuple[bool, bool]:
        work = control = False
        try:
            for notify in self._conn.notifies(timeout=0):
                if notify.channel == "errand_control":
                    control = True
                else:
                    work = True
        except psycopg.OperationalError as exc:
            raise DatabaseError(f"lost the LISTEN connection to {self.where}: {exc}") from exc
        return work, control

    def close(self) -> None:
        self._conn.close()
