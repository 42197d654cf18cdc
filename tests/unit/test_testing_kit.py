"""The test kit (SPEC section 10) and ERRAND_NO_DELAY: jobs are caught or run here, and the
database is never touched (each test's App points at a file that must never appear)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import errand
from errand import chain, group
from errand.errors import SerializationError
from errand.testing import trap_jobs


class Boom(Exception):
    pass


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "never.db"


@pytest.fixture
def kit(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SimpleNamespace]:
    """An App on a database file that must never be created, its tasks, and what they did."""
    monkeypatch.delenv("ERRAND_NO_DELAY", raising=False)
    monkeypatch.delenv("ERRAND_CHANNELS", raising=False)
    app = errand.App("sqlite:///" + str(db_path))
    ran: list[str] = []
    sent: list[tuple[str, str]] = []
    summaries: list[Any] = []

    @app.task(name="mail.send", priority=5, max_retries=3)
    def send_email(to: str, subject: str, body: str = "") -> str:
        """Send an email"""
        sent.append((to, subject))
        return f"sent to {to}"

    @app.task
    def step(name: str) -> str:
        ran.append(name)
        return name

    @app.task
    def parents(name: str) -> dict[str, Any]:
        ran.append(name)
        job = errand.current_job()
        assert job is not None
        return job.parent_results

    values = {"decimal": Decimal("1.10"),
              "datetime": datetime(2024, 5, 17, 12, 30, tzinfo=timezone(timedelta(hours=-5))),
              "tuple": (1, "two", (3,))}

    @app.task
    def value(kind: str) -> Any:
        ran.append(kind)
        return values[kind]

    @app.task
    def boom(name: str) -> None:
        ran.append(name)
        raise Boom(name)

    @app.task
    def square(i: int) -> int:
        ran.append(f"square{i}")
        return i * i

    @app.task
    def summarize() -> int:
        ran.append("summarize")
        job = errand.current_job()
        assert job is not None
        summaries.append(sorted(job.parent_results.values()))
        return sum(job.parent_results.values())

    @app.task
    def split(n: int) -> int:
        ran.append("split")
        chain(group(*(square.delayable(i) for i in range(n))), summarize.delayable()).delay()
        return n

    yield SimpleNamespace(app=app, ran=ran, sent=sent, summaries=summaries, values=values,
                          send_email=send_email, step=step, parents=parents, value=value,
                          boom=boom, square=square, summarize=summarize, split=split)
    assert not db_path.exists(), "the database was opened"
    app.close()


def by_name(jobs: list[errand.Job[Any]]) -> dict[str, errand.Job[Any]]:
    return {str(job.args[0]): job for job in jobs}


# -- trap_jobs: catching ----------------------------------------------------------------

def test_the_trap_catches_every_way_of_enqueuing_and_nothing_reaches_the_database(
        kit: SimpleNamespace) -> None:
    step = kit.step.delayable
    with trap_jobs() as trap:
        single = kit.send_email.delay("a@x", subject="Hi")
        optioned = kit.send_email.with_delay(priority=1)("b@x", "Yo")
        by_name_ = kit.app.enqueue("mail.send", args=["c@x", "Hey"])
        many = kit.send_email.delay_many([(("d@x",), {"subject": "1"}),
                                          (("e@x",), {"subject": "2"})])
        graph = chain(group(step("a"), step("b")), step("c")).delay()
        linked = step("d").on_done(step("e")).delay()

        trap.assert_jobs_count(5 + 3 + 2)
        assert kit.sent == [] and kit.ran == []
        assert [job.state for job in (single, optioned, by_name_, *many)] == ["pending"] * 5
        assert [job.state for job in graph] == ["pending", "pending", "wait_dependencies"]
        assert linked.state == "pending"
        assert [trapped.job for trapped in trap.enqueued_jobs][:5] == \
            [single, optioned, by_name_, *many]
        assert len({trapped.job.uuid for trapped in trap.enqueued_jobs}) == 10


def test_assert_jobs_count_counts_all_jobs_or_only_one_task(kit: SimpleNamespace) -> None:
    with trap_jobs() as trap:
        trap.assert_jobs_count(0)
        kit.send_email.delay("a@x", "Hi")
        kit.send_email.delay("b@x", "Yo")
        kit.step.delay("s")

        trap.assert_jobs_count(3)
        trap.assert_jobs_count(2, only=kit.send_email)
        trap.assert_jobs_count(1, only=kit.step)
        trap.assert_jobs_count(0, only=kit.square)
        with pytest.raises(AssertionError, match=r"expected 3 job\(s\) of mail.send, 2 enqueued"):
            trap.assert_jobs_count(3, only=kit.send_email)
        with pytest.raises(AssertionError, match=r"expected 1 job\(s\), 3 enqueued") as error:
            trap.assert_jobs_count(1)
    assert "mail.send('a@x', 'Hi')" in str(error.value)


def test_code_under_test_is_checked_without_running_its_jobs(kit: SimpleNamespace) -> None:
    """The reference's example: a function that enqueues, tested with the trap."""

    def invite_everyone(addresses: list[str]) -> int:
        for address in addresses:
            kit.send_email.with_delay(priority=15)(address, subject="Hi")
        return len(addresses)

    with trap_jobs() as trap:
        count = invite_everyone(["a@x", "b@x"])

        assert count == 2
        trap.assert_jobs_count(2, only=kit.send_email)
        trap.assert_enqueued_job(kit.send_email, args=("a@x",), kwargs={"subject": "Hi"},
                                 properties={"priority": 15})
        trap.assert_enqueued_job(kit.send_email, args=("b@x",), kwargs={"subject": "Hi"})
        assert kit.sent == []
        trap.perform_enqueued_jobs()
    assert kit.sent == [("a@x", "Hi"), ("b@x", "Hi")]


# -- trap_jobs: assert_enqueued_job --------------------------------------------------------

def test_assert_enqueued_job_matches_arguments_and_properties(kit: SimpleNamespace) -> None:
    when = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    with trap_jobs() as trap:
        kit.send_email.with_delay(
            priority=3, eta=60, channel="root.mail", max_retries=2, description="Say hi",
            identity_key="hi-1", retry_pattern={1: 5, 3: 60}, timeout=30,
            context={"user": 7})("a@x", "Hi", body="Hello")
        kit.send_email.with_delay(eta=when)("b@x", "Later")
        kit.send_email.delay("c@x", "Defaults")

        found = trap.assert_enqueued_job(
            kit.send_email, args=("a@x", "Hi"), kwargs={"body": "Hello"},
            properties={"priority": 3, "eta": 60, "channel": "root.mail", "max_retries": 2,
                        "description": "Say hi", "identity_key": "hi-1",
                        "retry_pattern": {1: 5, 3: 60}, "timeout": 30,
                        "context": {"user": 7}})
        assert found.args == ("a@x", "Hi") and found.kwargs == {"body": "Hello"}
        # Only the properties asked about are compared.
        trap.assert_enqueued_job(kit.send_email, args=("a@x", "Hi"), kwargs={"body": "Hello"})
        trap.assert_enqueued_job(kit.send_email, args=("b@x", "Later"),
                                 properties={"eta": when})
        # The task's defaults and the computed ones.
        trap.assert_enqueued_job(kit.send_email, args=("c@x", "Defaults"), properties={
            "priority": 5, "max_retries": 3, "channel": "root", "description": "Send an email",
            "identity_key": None, "eta": 0})
        # Arguments must match exactly: a missing kwarg or a different value is no match.
        with pytest.raises(AssertionError):
            trap.assert_enqueued_job(kit.send_email, args=("a@x", "Hi"))
        with pytest.raises(AssertionError):
            trap.assert_enqueued_job(kit.send_email, args=("a@x", "Hi"),
                                     kwargs={"body": "Hello"}, properties={"priority": 4})


def test_assert_enqueued_job_failure_shows_what_was_enqueued_instead(
        kit: SimpleNamespace) -> None:
    with trap_jobs() as trap:
        with pytest.raises(AssertionError, match=r"enqueued instead:\n  \(nothing\)"):
            trap.assert_enqueued_job(kit.send_email, args=("a@x",))

        kit.send_email.with_delay(priority=15)("a@x", subject="Hi")
        kit.step.delay("other")
        with pytest.raises(AssertionError) as error:
            trap.assert_enqueued_job(kit.send_email, args=("a@x",), kwargs={"subject": "Hello"},
                                     properties={"priority": 15})
        message = str(error.value)
        assert "no job mail.send('a@x', subject='Hello') with properties {'priority': 15}" \
            in message
        assert "mail.send('a@x', subject='Hi') {'priority': 15}" in message
        assert f"{kit.step.name}('other') {{'priority': 10}}" in message

        with pytest.raises(AssertionError) as error:
            trap.assert_enqueued_job(kit.send_email, args=("a@x",), kwargs={"subject": "Hi"},
                                     properties={"priority": 1, "channel": "root.mail"})
        assert "mail.send('a@x', subject='Hi') {'priority': 15, 'channel': 'root'}" \
            in str(error.value)

        with pytest.raises(AssertionError, match=r"unknown properties \['colour'\]"):
            trap.assert_enqueued_job(kit.send_email, args=("a@x",), kwargs={"subject": "Hi"},
                                     properties={"colour": "blue"})


def test_an_eta_given_as_a_timedelta_is_asserted_as_given(kit: SimpleNamespace) -> None:
    with trap_jobs() as trap:
        kit.send_email.with_delay(eta=timedelta(minutes=1))("a@x", "Hi")
        trap.assert_enqueued_job(kit.send_email, args=("a@x", "Hi"),
                                 properties={"eta": timedelta(minutes=1)})


# -- trap_jobs: perform_enqueued_jobs -------------------------------------------------------

def test_perform_enqueued_jobs_runs_a_graph_parents_first(kit: SimpleNamespace) -> None:
    step = kit.step.delayable
    # Priorities and etas that would reverse the order if they were obeyed before the graph.
    first = [step(f"first{i}").set(priority=50, eta=120) for i in range(3)]
    second = [step(f"second{i}").set(priority=0) for i in range(2)]
    end = kit.parents.delayable("end").set(priority=0)
    with trap_jobs() as trap:
        jobs = by_name(chain(group(*first), group(*second), end).delay())
        kit.step.delay("alone")
        assert kit.ran == []

        performed = trap.perform_enqueued_jobs()

    assert len(performed) == 7
    ran = kit.ran
    assert sorted(ran[:3]) == ["first0", "first1", "first2"]
    assert ran.index("end") > max(ran.index("second0"), ran.index("second1"))
    assert min(ran.index("second0"), ran.index("second1")) > 2
    for name, job in jobs.items():
        assert job.state == "done", name
        assert [log.outcome for log in job.logs] == ["success"]
    assert [jobs[f"first{i}"].result for i in range(3)] == ["first0", "first1", "first2"]
    assert jobs["end"].result == {str(jobs["second0"].uuid): "second0",
                                  str(jobs["second1"].uuid): "second1"}


def test_perform_enqueued_jobs_passes_parent_results_exactly(kit: SimpleNamespace) -> None:
    kinds = ["decimal", "datetime", "tuple"]
    with trap_jobs() as trap:
        jobs = by_name(group(*(kit.value.delayable(kind) for kind in kinds))
                       .on_done(kit.parents.delayable("child")).delay())
        orphan = kit.parents.delay("orphan")
        trap.perform_enqueued_jobs()

    child = jobs["child"]
    assert child.result == {str(jobs[kind].uuid): kit.values[kind] for kind in kinds}
    assert type(child.result[str(jobs["decimal"].uuid)]) is Decimal
    assert type(child.result[str(jobs["tuple"].uuid)]) is tuple
    assert orphan.result == {}


def test_jobs_enqueued_by_performed_jobs_are_trapped_and_run_next_time(
        kit: SimpleNamespace) -> None:
    with trap_jobs() as trap:
        split = kit.split.delay(4)
        trap.perform_enqueued_jobs()
        assert split.state == "done" and split.result == 4
        trap.assert_jobs_count(4, only=kit.square)
        trap.assert_jobs_count(1, only=kit.summarize)
        trap.assert_enqueued_job(kit.square, args=(3,))
        assert kit.ran == ["split"]

        performed = trap.perform_enqueued_jobs()

    assert len(performed) == 5
    assert kit.ran[-1] == "summarize" and kit.ran.count("split") == 1
    assert kit.summaries == [[0, 1, 4, 9]]
    assert performed[-1].result == 14


def test_a_failing_job_stops_perform_and_its_dependents_do_not_run(
        kit: SimpleNamespace) -> None:
    step = kit.step.delayable
    with trap_jobs() as trap:
        jobs = by_name(chain(step("before"), kit.boom.delayable("boom"), step("after")).delay())
        with pytest.raises(Boom, match="boom"):
            trap.perform_enqueued_jobs()
    assert kit.ran == ["before", "boom"]
    assert jobs["after"].state == "wait_dependencies"


def test_a_graph_refused_under_the_trap_traps_nothing(kit: SimpleNamespace) -> None:
    step = kit.step.delayable
    with trap_jobs() as trap:
        with pytest.raises(SerializationError):
            chain(step("a"), step("b"), step(object())).delay()
        with pytest.raises(SerializationError):
            chain(step("a"), step("b").set(context={"x": object()})).delay()
        trap.assert_jobs_count(0)


# -- trap_jobs: its extent ------------------------------------------------------------------

def test_the_trap_ends_with_its_block(kit: SimpleNamespace,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ERRAND_NO_DELAY", "1")
    with trap_jobs() as outer:
        with trap_jobs() as inner:
            kit.step.delay("inner")
        kit.step.delay("outer")
    with pytest.raises(Boom), trap_jobs():
        raise Boom("in the block")

    after = kit.step.delay("after")  # not trapped any more: ERRAND_NO_DELAY runs it

    inner.assert_jobs_count(1)
    inner.assert_enqueued_job(kit.step, args=("inner",))
    outer.assert_jobs_count(1)
    outer.assert_enqueued_job(kit.step, args=("outer",))
    assert kit.ran == ["after"] and after.state == "done"


def test_jobs_enqueued_from_another_thread_are_trapped(kit: SimpleNamespace,
                                                       db_path: Path) -> None:
    with trap_jobs() as trap:
        thread = threading.Thread(target=kit.step.delay, args=("threaded",))
        thread.start()
        thread.join()
        exists = db_path.exists()
        if exists:  # let the fixture's check pass; this test reports the leak itself
            kit.app.close()
            db_path.unlink()
        assert not exists, "the job reached the database"
        trap.assert_jobs_count(1)


# -- ERRAND_NO_DELAY ----------------------------------------------------------------------

def test_no_delay_runs_a_graph_in_order_with_parent_results(
        kit: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ERRAND_NO_DELAY", "1")
    step = kit.step.delayable
    first = [step(f"first{i}").set(priority=50) for i in range(3)]
    second = [kit.value.delayable(kind).set(priority=0) for kind in ("decimal", "tuple")]
    jobs = by_name(chain(group(*first), group(*second), kit.parents.delayable("end")).delay())

    assert sorted(kit.ran[:3]) == ["first0", "first1", "first2"]
    assert sorted(kit.ran[3:5]) == ["decimal", "tuple"]
    assert kit.ran[5:] == ["end"]
    assert all(job.state == "done" for job in jobs.values())
    assert jobs["end"].result == {str(jobs["decimal"].uuid): Decimal("1.10"),
                                  str(jobs["tuple"].uuid): (1, "two", (3,))}


def test_no_delay_runs_every_kind_of_call_at_once(kit: SimpleNamespace,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ERRAND_NO_DELAY", "1")
    job = kit.send_email.delay("a@x", subject="Hi")
    assert (job.state, job.result) == ("done", "sent to a@x")
    assert [log.outcome for log in job.logs] == ["success"]
    kit.send_email.with_delay(priority=1, eta=3600)("b@x", "Later")
    kit.app.enqueue("mail.send", args=["c@x", "Hey"])
    many = kit.send_email.delay_many([(("d@x", "1"), {}), (("e@x", "2"), {})])
    assert [job.result for job in many] == ["sent to d@x", "sent to e@x"]
    assert kit.sent == [("a@x", "Hi"), ("b@x", "Later"), ("c@x", "Hey"), ("d@x", "1"),
                        ("e@x", "2")]


def test_no_delay_runs_a_fan_out_and_fan_in_made_inside_a_job(
        kit: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ERRAND_NO_DELAY", "1")
    split = kit.split.delay(3)
    assert split.result == 3
    assert kit.ran[0] == "split" and kit.ran[-1] == "summarize"
    assert sorted(kit.ran[1:4]) == ["square0", "square1", "square2"]
    assert kit.summaries == [[0, 1, 4]]


def test_no_delay_raises_a_jobs_error_to_the_caller_and_stops_the_graph(
        kit: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ERRAND_NO_DELAY", "1")
    with pytest.raises(Boom, match="alone"):
        kit.boom.delay("alone")
    with pytest.raises(Boom, match="middle"):
        chain(kit.step.delayable("before"), kit.boom.delayable("middle"),
              kit.step.delayable("after")).delay()
    assert kit.ran == ["alone", "before", "middle"]


def test_the_trap_wins_over_no_delay(kit: SimpleNamespace,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ERRAND_NO_DELAY", "1")
    with trap_jobs() as trap:
        chain(kit.step.delayable("a"), kit.step.delayable("b")).delay()
        assert kit.ran == []
        trap.assert_jobs_count(2)
        trap.perform_enqueued_jobs()
    assert kit.ran == ["a", "b"]
