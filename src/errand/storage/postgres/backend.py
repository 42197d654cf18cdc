"""PostgreSQL storage through psycopg 3: a pool for applications, one connection for a worker.

A worker's supervisor forks its job processes, and a pool runs threads that do not survive
a fork, so the worker asks for `pooled=False`: one plain connection for its own queries
(reopened when it breaks), a second backend of that kind for the claims it runs beside its
writes (`claims_apart`), and one more connection for LISTEN.

Dead pooled connections. The pool does not test a connection with a round trip before
handing it out: that test cost as much as a one-job enqueue. Two cheaper guards replace it:

- `_idle_and_open`, the pool's check, costs no round trip: an idle connection has nothing
  to read, so a readable one was closed by the server (restart, terminated backend, idle
  timeout, a proxy's cut). The pool replaces it. This covers every operation.
- A connection can still die unseen (a host that vanished without closing its sockets,
  or between the check and the statement). It then breaks on its first statement, and
  `_first` runs that statement once more on a new connection, after the pool has tested
  its idle ones. The statement may have run before the connection broke, so only a
  statement harmless to run twice is retried: a read, the reservation of ids for COPY, or
  an enqueue insert, which skips jobs whose uuid is stored already, or for one job fails
  on it (their rows are then read back). Other writes are not retried: an error then
  reaches the caller, as before.

Wake-ups. errand's sessions set errand.notifies_itself (connection_setup): their inserts
notify the channels of the jobs they store ready now (COPY by a statement after it, in its
transaction), and the insert trigger, kept for every other writer, skips their rows.
"""

from __future__ import annotations

import select
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime
from itertools import chain, islice, repeat
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool, PoolTimeout

from errand.channels import ChannelConfig
from errand.errors import ConfigurationError, DatabaseError, SerializationError
from errand.jobs import JobRow, NewJob
from errand.storage import rows
from errand.storage.common import Rows, Run, SqlBackend, T
from errand.storage.sqlfile import load_migrations, load_queries

_PACKAGE = "errand.storage.postgres"
_QUERIES = load_queries(_PACKAGE)
_MIGRATIONS = load_migrations(_PACKAGE)
LATEST_VERSION = _MIGRATIONS[-1][0]
COPY_FROM = 50
"""Batches of this many jobs (without identity keys or dependencies) are stored by COPY: two
more round trips than one insert, but half the cost per job (faster from ~25 jobs on a
local server; each round trip weighs more on a remote one)."""
COPY_CHUNK = 1000
"""Jobs formatted per write: the server stores a chunk while the next one is formatted."""
_REPEATABLE = frozenset({"enqueue_job", "enqueue_jobs"})
"""Writes harmless to run twice (see the module docstring): retried on a dead connection."""
_KEPT_CURSOR = frozenset({"enqueue_job"})
"""One-row statements run on their pool connection's kept cursor (see `_kept_cursor`)."""
_UUID_CONSTRAINT = "errand_jobs_uuid_key"
"""The one-job insert's uuid conflict: its first run went through (see `enqueue_job`)."""

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


class _PoolConnection(psycopg.Connection[Any]):
    """A pool connection, with its kept cursor (see `PostgresBackend._kept_cursor`)."""

    kept_cursor: psycopg.Cursor[Any] | None = None


def _idle_and_open(conn: psycopg.Connection[Any]) -> None:
    """The pool's check of an idle connection, without a round trip: something to read
    means the server closed it. Closing it here makes the pool replace it."""
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN)
    if poller.poll(0):
        conn.close()
        raise psycopg.OperationalError("the server closed this idle connection")


def _nul_refused() -> SerializationError:
    return SerializationError("an argument contains a NUL character (\\u0000), which "
                              "PostgreSQL cannot store in JSON")


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
    claims_apart = True

    def __init__(self, url: str, *, pooled: bool = True, pool_size: int = 10) -> None:
        self.url = url
        self.where = describe(url)
        self._pool: ConnectionPool[_PoolConnection] | None = None
        self._conn: psycopg.Connection[Any] | None = None
        with self._connection_error("connect to"):  # fail fast, with the server's reason
            first = psycopg.connect(url, **_CONNECT_OPTIONS)
            _configure(first)
            self._identity = _run_block(first, self.queries["database_identity"], {})[0]
        if pooled:
            first.close()
            self._pool = ConnectionPool(url, connection_class=_PoolConnection, min_size=1,
                                        max_size=pool_size, timeout=10,
                                        kwargs=_CONNECT_OPTIONS, configure=_configure,
                                        check=_idle_and_open, name="errand", open=False)
        else:
            self._conn = first
        try:
            if self._pool is not None:
                # A first request finding no connection ready would grow the pool to two,
                # and the pool hands idle connections out in turn: one producer's statements
                # would then alternate between two server processes, each a little slower.
                with self._connection_error("connect to"):
                    self._pool.open(wait=True, timeout=10)
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
                conn = self._pool.getconn()  # not pool.connection(): half the cost, same work
                try:                         # for autocommit connections
                    yield conn
                finally:
                    self._pool.putconn(conn)
                return
            if self._conn is None or self._conn.closed or self._conn.broken:
                if self._conn is not None:
                    self._conn.close()
                self._conn = None
                self._conn = psycopg.connect(self.url, **_CONNECT_OPTIONS)
                _configure(self._conn)
            yield self._conn

    @contextmanager
    def _first(self, name: str, params: dict[str, Any]
               ) -> Iterator[tuple[psycopg.Connection[Any], Rows, int]]:
        """A connection on which the named one-statement block (harmless to run twice) has
        just run, with its rows and rowcount; run once more on a new connection if the first
        connection was dead (see the module docstring)."""
        [statement] = self.queries[name]
        for last_try in (False, True):
            with self._connection() as conn:
                try:
                    found, count = _execute(conn, statement, params,
                                            self._kept_cursor(conn, name))
                except psycopg.OperationalError:
                    if last_try or self._pool is None or not conn.broken:
                        raise
                else:
                    yield conn, found, count
                    return
            self._pool.check()  # the dead one is out; its idle neighbours may be dead too

    def _kept_cursor(self, conn: psycopg.Connection[Any],
                     name: str) -> psycopg.Cursor[Any] | None:
        """A cursor kept with its pool connection for the statement `name`, or None for a
        new one. A new cursor (and its adapters) per one-job insert cost a tenth of the
        enqueue's client time. Only on pool connections, which one thread at a time holds,
        and for one-row results: a cursor keeps its last result until its next statement."""
        if not isinstance(conn, _PoolConnection) or name not in _KEPT_CURSOR:
            return None
        if conn.kept_cursor is None:
            conn.kept_cursor = conn.cursor()
        return conn.kept_cursor

    def _read(self, name: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        with self._first(name, params) as (_, found, _):
            return found

    def _write(self, name: str, params: dict[str, Any]) -> tuple[list[tuple[Any, ...]], int]:
        statements = self.queries[name]
        if len(statements) > 1:
            return super()._write(name, params)
        if name in _REPEATABLE:
            with self._first(name, params) as (_, found, count):
                return found, count
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
        with self._their_connection(connection) as conn:
            return work(lambda name, params: _run_block(conn, self.queries[name], params))

    @contextmanager
    def _their_connection(self, connection: Any) -> Iterator[psycopg.Connection[Any]]:
        """The caller's connection (`connection=`), once checked to be on our database."""
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
            yield connection

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
        """One job without identity key or dependencies is one VALUES insert; a batch of
        COPY_FROM jobs or more without either goes by COPY; any other batch by enqueue_jobs'
        JSON document."""
        try:
            if len(jobs) == 1 and not jobs[0].depends_on and jobs[0].identity_key is None:
                found = self._inserted(jobs, self._insert_one(jobs[0], connection))
                # Stored, as a rule; else skipped (see enqueue_jobs) and matched.
                return found if found else self._match_identities(jobs, found)
            if len(jobs) >= COPY_FROM and not any(job.identity_key is not None or job.depends_on
                                                  for job in jobs):
                return self._copy_jobs(jobs, connection)
            return super().enqueue(jobs, connection)
        except pg_errors.UntranslatableCharacter as exc:
            raise _nul_refused() from exc

    def enqueue_alike(self, count: int, jobs: Iterator[NewJob]) -> list[JobRow]:
        """By COPY from COPY_FROM jobs, each chunk built while the server stores the one
        before; the first job's eta is every job's (they share their options)."""
        if count < COPY_FROM:
            return self.enqueue(list(jobs))
        first = next(jobs)
        delays = [] if first.eta_at is not None else [first.eta_in]
        try:
            with self._first("reserve_jobs", {"count": count, "delays": delays}) as (
                    conn, [reserved], _):
                return self._copy(conn, chain([first], jobs), delays, reserved)
        except pg_errors.UntranslatableCharacter as exc:
            raise _nul_refused() from exc

    def _insert_one(self, job: NewJob, connection: Any) -> Rows:
        if "\x00" in job.task or "\x00" in job.description:
            raise _nul_refused()  # as the JSON document of enqueue_jobs reports it
        params = {"uuid": job.uuid, "task": job.task, "description": job.description,
                  "channel": job.channel, "priority": job.priority, "eta_at": job.eta_at,
                  "eta_in": job.eta_in, "args": job.args, "kwargs": job.kwargs,
                  "context": job.context, "max_retries": job.max_retries,
                  "retry_pattern": job.retry_pattern, "timeout": job.timeout}
        if connection is None:
            try:
                inserted, _ = self._write("enqueue_job", params)
            except pg_errors.UniqueViolation as exc:
                if exc.diag.constraint_name != _UUID_CONSTRAINT:
                    raise
                return []  # stored by a first run that went through (see _first)
            return inserted
        with self._their_connection(connection) as conn:
            return _execute(conn, self.queries["enqueue_job"][0], params)[0]

    def _inserted(self, jobs: Sequence[NewJob], inserted: Rows) -> list[JobRow]:
        """enqueue_jobs returns (uuid, id, eta, created_at) of each job it inserted."""
        by_uuid = {job.uuid: job for job in jobs}
        return [rows.new_job_row(by_uuid[uuid], job_id, eta.astimezone(UTC),
                                 created.astimezone(UTC))
                for uuid, job_id, eta, created in inserted]

    def _copy_jobs(self, jobs: Sequence[NewJob], connection: Any) -> list[JobRow]:
        """Store a batch by COPY, as one statement: on the caller's connection (in their
        transaction, if they have one), or on a pooled one (COPY is atomic by itself)."""
        delays = sorted({job.eta_in for job in jobs if job.eta_at is None})
        params = {"count": len(jobs), "delays": delays}
        if connection is not None:
            with self._their_connection(connection) as conn:
                [reserved], _ = _execute(conn, self.queries["reserve_jobs"][0], params)
                return self._copy(conn, jobs, delays, reserved)
        with self._first("reserve_jobs", params) as (conn, [reserved], _):
            return self._copy(conn, jobs, delays, reserved)

    def _copy(self, conn: psycopg.Connection[Any], jobs: Iterable[NewJob],
              delays: list[float], reserved: tuple[Any, ...]) -> list[JobRow]:
        """COPY the jobs, then wake the workers for those ready now (COPY cannot notify by
        itself, as the inserts do), in one transaction: the caller's, if they have one."""
        with (conn.transaction() if conn.autocommit else nullcontext()), conn.cursor() as cursor:
            stored = self._copy_rows(cursor, jobs, delays, reserved)
            channel_etas = {(row.channel, row.eta) for row in stored}
            cursor.execute(self.queries["notify_ready"][0],
                           {"channels": [channel for channel, _ in channel_etas],
                            "etas": [eta for _, eta in channel_etas]})
        return stored

    def _copy_rows(self, cursor: psycopg.Cursor[Any], jobs: Iterable[NewJob],
                   delays: list[float], reserved: tuple[Any, ...]) -> list[JobRow]:
        """COPY one job per reserved id, COPY_CHUNK at a time. Any error before the last
        chunk is sent (a job that cannot be built, a count that does not match) aborts the
        COPY, so none of the jobs is stored."""
        ids, delayed, now = reserved
        after = {delay: eta.astimezone(UTC) for delay, eta in zip(delays, delayed, strict=True)}
        created_at = now.astimezone(UTC)
        stored: list[JobRow] = []
        remaining = iter(jobs)
        with cursor.copy(self.queries["copy_jobs"][0]) as copy:
            for start in range(0, len(ids), COPY_CHUNK):
                chunk = list(islice(remaining, COPY_CHUNK))
                chunk_ids = ids[start:start + COPY_CHUNK]
                etas = [after[job.eta_in] if job.eta_at is None else job.eta_at.astimezone(UTC)
                        for job in chunk]
                lines = rows.copy_lines(chunk, chunk_ids, etas, created_at)
                if "\x00" in lines:  # only a task or description can hold one: JSON escapes it
                    raise _nul_refused()
                copy.write(lines)
                stored += map(rows.new_job_row, chunk, chunk_ids, etas, repeat(created_at))
            if next(remaining, None) is not None:
                raise ValueError(f"more jobs than the {len(ids)} announced")
        return stored

    def waker(self) -> PostgresWaker:
        return PostgresWaker(self.url, self.where)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
        if self._conn is not None:
            self._conn.close()


def _execute(conn: psycopg.Connection[Any], sql: str, params: dict[str, Any],
             cursor: psycopg.Cursor[Any] | None = None) -> tuple[list[tuple[Any, ...]], int]:
    if cursor is None:
        with conn.cursor() as cur:
            return _fetch(cur, sql, params)
    return _fetch(cursor, sql, params)


def _fetch(cur: psycopg.Cursor[Any], sql: str,
           params: dict[str, Any]) -> tuple[list[tuple[Any, ...]], int]:
    cur.execute(sql, params)
    # The result's status, not cur.description: that builds a Column per column.
    result = cur.pgresult
    returned = result is not None and result.status == pq.ExecStatus.TUPLES_OK
    return (cur.fetchall() if returned else []), cur.rowcount


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
