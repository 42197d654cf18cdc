"""The public API on both backends: enqueue paths, handles, transactional enqueue, limits."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from uuid import UUID, uuid4

import psycopg
import pytest

import errand
from errand.errors import (
    ArgumentsError,
    ConfigurationError,
    InvalidStateError,
    JobNotFound,
    PayloadTooLarge,
    SerializationError,
    UnknownTaskError,
)
from errand.settings import Settings


@pytest.fixture
def app(database_url: str) -> Iterator[errand.App]:
    application = errand.App(database_url, settings=Settings(max_payload=64 * 1024))
    yield application
    application.close()


def register_tasks(app: errand.App) -> tuple[errand.Task, errand.Task]:  # type: ignore[type-arg]
    @app.task(name="mail.send", channel="root.mail", priority=5, max_retries=3,
              retry_pattern={1: 10, 5: 60}, timeout=30)
    def send_email(to: str, subject: str, body: str = "") -> str:
        """Send an email.

        More text that is not the description.
        """
        return to

    @app.task
    def resize(path: str, size: tuple[int, int] = (50, 50)) -> None:
        return None

    return send_email, resize


def test_delay_uses_task_defaults_and_docstring(app: errand.App) -> None:
    send_email, resize = register_tasks(app)
    job = send_email.delay("a@example.com", subject="Hi")
    assert job.state == "pending" and job.task == "mail.send"
    assert (job.channel, job.priority, job.max_retries, job.timeout) == ("root.mail", 5, 3, 30)
    assert job.description == "Send an email."
    assert job.args == ["a@example.com"] and job.kwargs == {"subject": "Hi"}
    other = resize.delay("p.png")
    assert other.task == "test_app.register_tasks.<locals>.resize"
    assert other.description == other.task
    assert (other.priority, other.channel, other.max_retries) == (10, "root", 5)


def test_with_delay_overrides_and_eta_forms(app: errand.App) -> None:
    send_email, _ = register_tasks(app)
    soon = send_email.with_delay(priority=1, eta=60, description="welcome")("a@x", "Hi")
    assert soon.priority == 1 and soon.description == "welcome"
    assert 55 < (soon.eta - soon.created_at).total_seconds() <= 61
    later = send_email.with_delay(eta=timedelta(hours=1))("a@x", "Hi")
    assert 3590 < (later.eta - later.created_at).total_seconds() <= 3601
    at = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    fixed = send_email.with_delay(eta=at)("a@x", "Hi")
    assert fixed.eta == at


def test_enqueue_by_name_and_listing(app: errand.App) -> None:
    register_tasks(app)
    job = app.enqueue("mail.send", args=["a@x", "Hi"], priority=2)
    assert job.priority == 2 and job.args == ["a@x", "Hi"]
    assert app.job(job.uuid) == job and app.job(str(job.uuid)).task == "mail.send"
    assert [j.uuid for j in app.jobs(task="mail.send")] == [job.uuid]
    assert app.jobs(state="done") == []
    with pytest.raises(UnknownTaskError, match="no task named 'nope'"):
        app.enqueue("nope")
    with pytest.raises(JobNotFound):
        app.job(uuid4())
    with pytest.raises(ConfigurationError, match="not a job uuid"):
        app.job("not-a-uuid")
    with pytest.raises(ConfigurationError, match="unknown state"):
        app.jobs(state="finished")


def test_delay_many_stores_every_call(app: errand.App) -> None:
    send_email, _ = register_tasks(app)
    jobs = send_email.delay_many([(("a@x",), {"subject": "1"}), (("b@x",), {"subject": "2"})],
                                 priority=7)
    assert [(j.args, j.kwargs, j.priority) for j in jobs] == [
        (["a@x"], {"subject": "1"}, 7), (["b@x"], {"subject": "2"}, 7)]
    assert len(app.jobs()) == 2
    with pytest.raises(ArgumentsError, match="pairs"):
        send_email.delay_many(["a@x"])  # type: ignore[list-item]


def test_extra_types_round_trip_through_the_database(app: errand.App) -> None:
    _, resize = register_tasks(app)
    value = {"when": datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC),
             "day": date(2024, 5, 6), "amount": Decimal("10.10"), "id": UUID(int=7),
             "blob": b"\x00\xffdata", "pair": (1, (2, 3)), "text": "é €"}
    job = resize.delay(value)  # type: ignore[arg-type]
    assert app.job(job.uuid).args == [value]


def test_bad_input_is_refused_and_nothing_is_written(app: errand.App) -> None:
    send_email, _ = register_tasks(app)
    with pytest.raises(SerializationError, match=r"kwargs\['body'\]"):
        send_email.delay("a@x", "Hi", body=object())  # type: ignore[arg-type]
    with pytest.raises(ArgumentsError, match=r"mail\.send"):
        send_email.delay("a@x")  # type: ignore[call-arg]
    with pytest.raises(ConfigurationError, match="unknown option 'prority'"):
        send_email.with_delay(prority=1)  # type: ignore[call-arg]
    with pytest.raises(PayloadTooLarge, match="ERRAND_MAX_PAYLOAD"):
        send_email.delay("a@x", "Hi", body="x" * (70 * 1024))
    assert app.jobs() == []


def test_a_task_name_is_registered_once(app: errand.App) -> None:
    register_tasks(app)
    with pytest.raises(ConfigurationError, match="already registered"):
        @app.task(name="mail.send")
        def other() -> None: ...


def test_handle_operations_follow_the_state_rules(app: errand.App) -> None:
    send_email, _ = register_tasks(app)
    job = send_email.delay("a@x", "Hi")
    with pytest.raises(InvalidStateError, match="requeue applies to"):
        job.requeue()
    assert job.set_done({"sent": True}).state == "done" and job.result == {"sent": True}
    assert job.requeue().state == "pending" and job.result is None
    assert job.cancel().state == "cancelled"
    with pytest.raises(InvalidStateError, match="is cancelled"):
        job.cancel()
    assert job.logs == []


def test_wait_times_out_on_a_job_nobody_runs(app: errand.App) -> None:
    send_email, _ = register_tasks(app)
    job = send_email.delay("a@x", "Hi")
    with pytest.raises(errand.errors.WaitTimeout, match="still pending"):
        job.wait(timeout=0.2)


def test_transactional_enqueue_commits_and_rolls_back_with_the_caller(
        app: errand.App, database_url: str) -> None:
    send_email, _ = register_tasks(app)
    app.migrate()
    if database_url.startswith("sqlite"):
        path = database_url.removeprefix("sqlite:///")
        rollback_conn, commit_conn = sqlite3.connect(path), sqlite3.connect(path)
    else:
        rollback_conn, commit_conn = psycopg.connect(database_url), psycopg.connect(database_url)
    # One after the other: SQLite lets one transaction write at a time.
    dropped = send_email.with_delay(connection=rollback_conn)("dropped@x", "Hi")
    assert app.jobs() == []  # not visible to others before the commit
    rollback_conn.rollback()
    kept = send_email.with_delay(connection=commit_conn)("kept@x", "Hi")
    assert app.jobs() == []
    commit_conn.commit()
    assert [j.uuid for j in app.jobs()] == [kept.uuid]
    with pytest.raises(JobNotFound):
        app.job(dropped.uuid)
    rollback_conn.close()
    commit_conn.close()


def test_connection_of_the_wrong_kind_is_refused(app: errand.App, tmp_path: object) -> None:
    send_email, _ = register_tasks(app)
    with pytest.raises(ConfigurationError, match="connection="):
        send_email.with_delay(connection=object())("a@x", "Hi")


def test_no_delay_runs_inline(app: errand.App, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    @app.task
    def record(value: int) -> int:
        job = errand.current_job()
        assert job is not None
        job.set_progress(50, "halfway")
        calls.append(value)
        return value * 2

    monkeypatch.setenv("ERRAND_NO_DELAY", "1")
    first, second = record.delay(1), record.delay(2)
    assert calls == [1, 2]
    assert (first.state, first.result, second.result) == ("done", 2, 4)
    assert first.logs[0].outcome == "success"
    with pytest.raises(InvalidStateError, match="inline"):
        first.cancel()
    monkeypatch.delenv("ERRAND_NO_DELAY")
    assert app.jobs() == []


@pytest.mark.parametrize("text", ["nul \x00 inside"])
def test_postgres_nul_characters_get_a_clear_error(postgres_url: str, text: str) -> None:
    app = errand.App(postgres_url)
    send = app.task(name="t")(lambda value: value)
    with pytest.raises(SerializationError, match="NUL"):
        send.delay(text)
    app.close()


def test_postgres_connection_to_another_database_is_refused(postgres_url: str) -> None:
    app = errand.App(postgres_url)
    send = app.task(name="t")(lambda value: value)
    other = psycopg.connect(postgres_url.replace("/test?", "/postgres?"))
    with pytest.raises(ConfigurationError, match="open on database 'postgres'"):
        send.with_delay(connection=other)(1)
    other.close()
    app.close()
