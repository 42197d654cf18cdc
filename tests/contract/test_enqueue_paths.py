"""The ways enqueue stores jobs: on PostgreSQL one job by VALUES, a small batch (or one with
identity keys or dependencies) by its JSON document, a big batch by COPY. All store the same
rows and return what they stored; an insert run twice stores its jobs once; a pooled
connection that died unseen costs a retry, not an error.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import fields, replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest

import errand
from errand.errors import ArgumentsError, SerializationError
from errand.jobs import JobRow, NewJob
from errand.storage.postgres import backend as pg
from errand.storage.postgres.backend import COPY_CHUNK, COPY_FROM, PostgresBackend

TEXTS = ["plain", "tab\there", "line\nbreak", "cr\rend", "back\\slash", 'quote"s', "ünïcødé ✓",
         "\\N", "\\.", ""]
ARGS = [json.dumps([text, 1.5, {"k": text}], ensure_ascii=False, separators=(",", ":"))
        for text in TEXTS] + ['[\n\t1,\r\n 2]', "[]"]
ETAS: list[tuple[datetime | None, float]] = [
    (None, 0.0), (None, 1.5), (None, 3600.25),
    (datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=ZoneInfo("Europe/Paris")), 0.0),
    (datetime(2029, 6, 1, 12, 0, tzinfo=timezone(timedelta(hours=-3, minutes=-30))), 0.0)]
JSON_FIELDS = ("args", "kwargs", "context", "retry_pattern")


def variety(count: int, channel: str = "root") -> list[NewJob]:
    """Jobs whose fields go through every escape and conversion the paths make."""
    jobs = []
    for i in range(count):
        eta_at, eta_in = ETAS[i % len(ETAS)]
        text = TEXTS[i % len(TEXTS)]
        jobs.append(NewJob(
            uuid=uuid.uuid4(), task=f"task.{text}", args=ARGS[i % len(ARGS)],
            kwargs=json.dumps({"to": text, "n": i}, ensure_ascii=False),
            context="{}" if i % 2 else json.dumps({"user": text}, ensure_ascii=False),
            description=text, channel=channel if i % 3 else f"{channel}.sub",
            priority=[-5, 0, 10, 2**31 - 1][i % 4], max_retries=i % 6,
            retry_pattern=None if i % 2 else '{"1": 10, "5": 60.5}',
            timeout=[None, 2.5, 30][i % 3], eta_at=eta_at, eta_in=eta_in))
    return jobs


def plain(count: int, channel: str = "root", eta_in: float = 0.0) -> list[NewJob]:
    return [NewJob(uuid=uuid.uuid4(), task="t", args=f"[{i}]", kwargs="{}", context="{}",
                   description="t", channel=channel, priority=10, max_retries=5,
                   retry_pattern=None, timeout=None, eta_in=eta_in) for i in range(count)]


@pytest.fixture
def backend(postgres_url: str) -> Iterator[PostgresBackend]:
    opened = PostgresBackend(postgres_url)
    yield opened
    opened.close()


def stored(url: str, jobs: list[NewJob]) -> list[dict[str, Any]]:
    """Every column of the jobs' rows, in the order of `jobs`; eta also as seconds after
    created_at (what a relative eta is measured from)."""
    with psycopg.connect(url) as conn:
        found = {row[0]: {**row[1], "eta_after_created": row[2]} for row in conn.execute(
            "SELECT uuid, to_jsonb(j), extract(epoch FROM eta - created_at)::float8 "
            "FROM errand_jobs j WHERE uuid = ANY(%s)", [[job.uuid for job in jobs]])}
    return [found[job.uuid] for job in jobs]


def comparable(row: dict[str, Any], job: NewJob) -> dict[str, Any]:
    """A stored row without what differs between two stores of the same job."""
    drop = {"id", "uuid", "created_at", "eta" if job.eta_at is None else "eta_after_created"}
    return {key: value for key, value in row.items() if key not in drop}


def same_job(returned: JobRow, read: JobRow) -> None:
    """A returned row equals the stored one; JSON is compared decoded (PostgreSQL reformats
    jsonb text, the returned row keeps the text that was sent)."""
    for field in fields(JobRow):
        mine, theirs = getattr(returned, field.name), getattr(read, field.name)
        if field.name in JSON_FIELDS and mine is not None and theirs is not None:
            mine, theirs = json.loads(mine), json.loads(theirs)
        assert mine == theirs, field.name


def enqueue_by_json(backend: PostgresBackend, jobs: list[NewJob],
                    monkeypatch: pytest.MonkeyPatch) -> list[JobRow]:
    with monkeypatch.context() as patch:
        patch.setattr(pg, "COPY_FROM", len(jobs) + 1)
        return backend.enqueue(jobs)


def count(url: str) -> int:
    with psycopg.connect(url) as conn:
        return int(conn.execute("SELECT count(*) FROM errand_jobs").fetchone()[0])  # type: ignore[index]


def test_copy_values_and_json_store_the_same_rows(backend: PostgresBackend, postgres_url: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    by_copy = variety(COPY_FROM + 10)
    by_json = [replace(job, uuid=uuid.uuid4()) for job in by_copy]
    one_by_one = [replace(job, uuid=uuid.uuid4()) for job in by_copy]
    returned = backend.enqueue(by_copy)
    returned += enqueue_by_json(backend, by_json, monkeypatch)
    for job in one_by_one:
        returned += backend.enqueue([job])
    rows = [stored(postgres_url, jobs) for jobs in (by_copy, by_json, one_by_one)]
    for job, copied, from_json, alone in zip(by_copy, *rows, strict=True):
        assert comparable(copied, job) == comparable(from_json, job) == comparable(alone, job)
        if job.eta_at is None:
            assert copied["eta_after_created"] == pytest.approx(job.eta_in)
    for row in returned:
        read = backend.get_job(row.uuid)
        assert read is not None
        same_job(row, read)


@contextmanager
def listening(url: str) -> Iterator[Callable[[str], list[str]]]:
    """What an idle worker hears: a function returning the notifications of a channel that
    arrived until none came for a moment."""
    with psycopg.connect(url, autocommit=True) as listener:
        listener.execute("LISTEN errand_jobs")

        def heard(channel: str) -> list[str]:
            payloads: list[str] = []
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline:
                more = [n.payload for n in listener.notifies(timeout=0.3, stop_after=1)]
                if not more:
                    break
                payloads += [payload for payload in more if payload == channel]
            return payloads

        yield heard


@pytest.mark.parametrize("how", ["values", "json", "identity key", "copy"])
def test_each_way_of_storing_wakes_workers_once_and_not_for_later_jobs(
        backend: PostgresBackend, postgres_url: str, how: str) -> None:
    """errand's sessions do not fire the insert trigger: each insert notifies by itself."""
    channel = f"root.wake{uuid.uuid4().hex[:8]}"  # other tests may share this database
    size = {"values": 1, "json": 3, "identity key": 1, "copy": COPY_FROM}[how]

    def jobs(eta_in: float) -> list[NewJob]:
        made = plain(size, channel, eta_in)
        if how == "identity key":
            made = [replace(job, identity_key=f"{channel}.{eta_in}") for job in made]
        return made

    with listening(postgres_url) as heard:
        backend.enqueue(jobs(60))
        assert heard(channel) == []
        backend.enqueue(jobs(60)[:-1] + jobs(0)[-1:])  # one job ready among later ones
        assert heard(channel) == [channel]


def test_rows_stored_past_errand_wake_workers_through_the_trigger(
        backend: PostgresBackend, postgres_url: str) -> None:
    """psql, another language, a caller's own connection: sessions that are not errand's."""
    channel = f"root.sql{uuid.uuid4().hex[:8]}"
    insert = ("INSERT INTO errand_jobs (uuid, task, description, state, channel, eta) "
              "VALUES (gen_random_uuid(), 't', 't', 'pending', %(channel)s, "
              "now() + make_interval(secs => %(delay)s)), "
              "(gen_random_uuid(), 't', 't', 'pending', %(channel)s, "
              "now() + make_interval(secs => %(delay)s))")
    with listening(postgres_url) as heard, psycopg.connect(postgres_url) as theirs:
        theirs.execute(insert, {"channel": channel, "delay": 60})
        theirs.commit()
        assert heard(channel) == []
        theirs.execute(insert, {"channel": channel, "delay": 0})
        backend.enqueue(plain(1, channel), connection=theirs)  # errand's, on their session
        assert heard(channel) == []  # not before they commit
        theirs.commit()
        assert heard(channel) == [channel]  # one transaction's notifications fold into one
        with backend._connection() as ours:  # errand's own sessions skip the trigger
            ours.execute(insert, {"channel": channel, "delay": 0})
        assert heard(channel) == []
    assert count(postgres_url) == 7


def test_copy_in_the_callers_transaction(backend: PostgresBackend, postgres_url: str) -> None:
    with psycopg.connect(postgres_url) as conn:
        backend.enqueue(plain(COPY_FROM), connection=conn)
        conn.rollback()
    assert count(postgres_url) == 0
    kept = plain(COPY_FROM)
    with psycopg.connect(postgres_url) as conn:
        returned = backend.enqueue(kept, connection=conn)
        conn.commit()
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        returned += backend.enqueue(plain(COPY_FROM), connection=conn)
    assert count(postgres_url) == 2 * COPY_FROM
    assert [row.uuid for row in returned[:COPY_FROM]] == [job.uuid for job in kept]
    for row in returned:
        read = backend.get_job(row.uuid)
        assert read is not None
        same_job(row, read)


def test_a_copy_that_fails_stores_nothing(backend: PostgresBackend, postgres_url: str) -> None:
    jobs = plain(COPY_CHUNK + 1)  # the first chunk is sent before the bad job is seen
    jobs[-1] = replace(jobs[-1], description="a NUL \x00 here")
    with pytest.raises(SerializationError, match="NUL"):
        backend.enqueue(jobs)
    with pytest.raises(SerializationError, match="NUL"):
        backend.enqueue(jobs[-1:])
    assert count(postgres_url) == 0
    backend.enqueue(plain(COPY_FROM))  # the connection is fine afterwards
    assert count(postgres_url) == COPY_FROM


def test_an_insert_run_twice_stores_its_jobs_once(backend: PostgresBackend,
                                                  postgres_url: str) -> None:
    """What a retry after a lost answer does: the same uuids again."""
    job = plain(1)[0]
    [first] = backend.enqueue([job])
    [again] = backend.enqueue([job])
    assert again.id == first.id and again == backend.get_job(job.uuid)
    other = plain(1)[0]
    both = backend.enqueue([job, other])
    assert [row.uuid for row in both] == [job.uuid, other.uuid] and both[0].id == first.id
    assert count(postgres_url) == 2


def kill_pooled_connection(backend: PostgresBackend, url: str) -> None:
    with backend._connection() as conn:
        pid = conn.info.backend_pid
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [pid])
        while admin.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s",
                            [pid]).fetchone() != (0,):
            time.sleep(0.01)


def test_a_dead_connection_the_check_misses_costs_a_retry(postgres_url: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A connection can die unseen by the pool's check (a host gone without a word): the
    first statement on it is run again on a new connection, and stores its jobs once."""
    monkeypatch.setattr(pg, "_idle_and_open", lambda conn: None)
    backend = PostgresBackend(postgres_url, pool_size=1)  # the connection killed is the one used
    try:
        for jobs in (plain(1), plain(3), plain(COPY_FROM)):  # VALUES, JSON, COPY
            kill_pooled_connection(backend, postgres_url)
            assert [row.uuid for row in backend.enqueue(jobs)] == [job.uuid for job in jobs]
        kill_pooled_connection(backend, postgres_url)
        assert backend.get_job(jobs[0].uuid) is not None  # a read
        assert backend._pool is not None
        assert backend._pool.get_stats()["returns_bad"] == 4  # each first try did fail
    finally:
        backend.close()
    assert count(postgres_url) == 1 + 3 + COPY_FROM


def test_one_job_inserts_reuse_a_cursor_that_reads_do_not_touch(postgres_url: str) -> None:
    backend = PostgresBackend(postgres_url, pool_size=1)
    try:
        backend.enqueue(plain(1))
        with backend._connection() as conn:
            assert isinstance(conn, pg._PoolConnection)
            kept = conn.kept_cursor
        assert kept is not None
        backend.enqueue(plain(1))
        assert len(backend.list_jobs()) == 2  # a read: a cursor of its own, let go at once
        with backend._connection() as conn:
            assert conn.kept_cursor is kept
        assert kept.rowcount == 1  # its last statement is the second insert
    finally:
        backend.close()


def test_the_pool_check_spots_a_connection_the_server_closed(postgres_url: str) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        pg._idle_and_open(conn)  # alive and idle: passes
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", [conn.info.backend_pid])
        deadline = time.monotonic() + 5
        while True:
            try:
                pg._idle_and_open(conn)
            except psycopg.OperationalError:
                break
            assert time.monotonic() < deadline, "the closed connection was not noticed"
            time.sleep(0.01)
        assert conn.closed


@pytest.mark.parametrize("calls", [1, 10, COPY_FROM + 5])
def test_handles_show_what_was_stored(database_url: str, calls: int) -> None:
    app = errand.App(database_url)
    try:
        @app.task(name="mail.send", channel="root.mail", priority=5, retry_pattern={1: 10},
                  timeout=30)
        def send(to: str, subject: str = "", when: datetime | None = None) -> None:
            """Send a mail."""

        jobs = send.delay_many(
            [((f"{i}@x",), {"subject": "tab\tand\\slash", "when": datetime(2024, 1, 1, tzinfo=UTC)})
             for i in range(calls)], eta=30, context={"user": "ü"})
        for job in jobs:
            read = app.job(job.uuid)
            for name in ("task", "description", "state", "channel", "priority", "eta", "args",
                         "kwargs", "context", "identity_key", "max_retries", "retries",
                         "timeout", "attempt", "result", "error", "progress", "status_message",
                         "worker", "created_at", "started_at", "ended_at"):
                assert getattr(job, name) == getattr(read, name), name
    finally:
        app.close()


@pytest.mark.parametrize("bad_at", [0, COPY_CHUNK + 10])
def test_a_bad_call_in_a_big_batch_stores_none_of_it(database_url: str, bad_at: int) -> None:
    """On PostgreSQL the jobs are built while the first chunks are stored: a call that
    cannot be stored, seen after some chunks went out, aborts the COPY."""
    app = errand.App(database_url)
    try:
        @app.task(name="add")
        def add(a: int, b: int) -> int:
            return a + b

        calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
            ((i, i), {}) for i in range(2 * COPY_CHUNK)]
        calls[bad_at] = ((1, object()), {})
        with pytest.raises(SerializationError, match=r"args\[1\]"):
            add.delay_many(calls)
        calls[bad_at] = ((1,), {"c": 2})
        with pytest.raises(ArgumentsError, match="add"):
            add.delay_many(calls)
        assert app.jobs(limit=10) == []
        calls[bad_at] = ((1, 2), {})
        assert len(add.delay_many(calls)) == 2 * COPY_CHUNK  # the connection is fine after
        assert len(app.jobs(limit=3 * COPY_CHUNK)) == 2 * COPY_CHUNK
    finally:
        app.close()
