"""Job graphs (SPEC section 6) run by real `errand worker` subprocesses, on both backends.

Jobs write what they do to `events.log` in the test folder (one `os.write` per line, in
append mode, so lines from parallel processes never mix): `<unix time> <start|end> <name>`.
Order assertions compare those times across processes.
"""

from __future__ import annotations

import subprocess
import warnings
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg
import pytest

from errand import Job, chain, group
from errand.errors import ConfigurationError, DatabaseError, PayloadTooLarge, SerializationError
from helpers import import_tasks, run_errand, wait_for, worker

TASKS = '''
import os
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import errand
from errand import chain, group

app = errand.App()
FOLDER = Path(os.environ["ERRAND_TEST_DIR"])


def record(event, name):
    fd = os.open(FOLDER / "events.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{time.time():.6f} {event} {name}\\n".encode())
    finally:
        os.close(fd)


@app.task
def step(name, seconds=0.0):
    record("start", name)
    time.sleep(seconds)
    record("end", name)
    return name


@app.task
def gate(name):
    """Run until the file `name` appears in the test folder."""
    record("start", name)
    while not (FOLDER / name).exists():
        time.sleep(0.01)
    record("end", name)
    return name


@app.task
def give_up(name):
    record("start", name)
    raise errand.FailedJobError("no way")


@app.task(retry_pattern={1: 0})
def flaky(name):
    record("start", name)
    if errand.current_job().attempt < 2:
        raise errand.RetryableJobError("not yet")
    record("end", name)
    return "recovered"


VALUES = {
    "decimal": Decimal("1.10"),
    "datetime": datetime(2024, 5, 17, 12, 30, 15, 123456, tzinfo=timezone(timedelta(hours=2))),
    "tuple": (1, "two", [3.5]),
    "none": None,
    "nested": {"list": [1, 2], "text": "é"},
}


@app.task
def value(kind):
    return VALUES[kind]


@app.task
def parents(name):
    record("start", name)
    return errand.current_job().parent_results


@app.task
def square(i):
    record("start", f"square{i}")
    time.sleep(0.1)
    record("end", f"square{i}")
    return i * i


@app.task
def summarize():
    record("start", "summarize")
    results = errand.current_job().parent_results
    return {"count": len(results), "total": sum(results.values()),
            "values": sorted(results.values())}


@app.task
def split(n):
    """Fan out to n squares, then fan in to one summary; returns the summary job's uuid."""
    jobs = chain(group(*(square.delayable(i) for i in range(n))), summarize.delayable()).delay()
    return next(str(job.uuid) for job in jobs if job.task == summarize.name)
'''


# -- fixtures and helpers ----------------------------------------------------------------

@pytest.fixture
def tasks(tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
          ) -> Iterator[ModuleType]:
    """The tasks above, importable here and by worker subprocesses (cwd=tmp_path)."""
    module = import_tasks(TASKS, tmp_path, database_url, monkeypatch, "graph_tasks")
    yield module
    module.app.close()


def burst(tasks: ModuleType, *args: str) -> None:
    result = run_errand("worker", "--app", f"{tasks.__name__}:app", "--database-url",
                        tasks.app.database_url, "--burst", *args, cwd=Path(tasks.FOLDER))
    assert result.returncode == 0, result.stdout + result.stderr


def events(tasks: ModuleType) -> dict[str, dict[str, float]]:
    """`{name: {"start": t, "end": t}}` from the jobs' log (the last of each event)."""
    path = Path(tasks.FOLDER) / "events.log"
    found: dict[str, dict[str, float]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            when, event, name = line.split(" ", 2)
            found.setdefault(name, {})[event] = float(when)
    return found


def by_name(jobs: Iterable[Job[Any]]) -> dict[str, Job[Any]]:
    """Handles keyed by their first argument (every test task takes a name first)."""
    return {str(job.args[0]): job for job in jobs}


def states(jobs: dict[str, Job[Any]]) -> dict[str, str]:
    return {name: job.refresh().state for name, job in jobs.items()}


def all_finished(jobs: Iterable[Job[Any]]) -> bool:
    return all(job.refresh().finished for job in jobs)


# -- order -------------------------------------------------------------------------------

def test_a_chain_of_groups_runs_group_after_group(
        tasks: ModuleType, workers: list[subprocess.Popen[str]]) -> None:
    first = [tasks.step.delayable(f"first{i}", 0.4) for i in range(4)]
    second = [tasks.step.delayable(f"second{i}", 0.4) for i in range(4)]
    jobs = by_name(chain(group(*first), group(*second), tasks.step.delayable("last")).delay())

    assert len(jobs) == 9
    assert {name: job.state for name, job in jobs.items()} == {
        **{f"first{i}": "pending" for i in range(4)},
        **{f"second{i}": "wait_dependencies" for i in range(4)},
        "last": "wait_dependencies"}
    # Eight slots: only the dependencies can keep the second group from starting at once.
    worker(tasks, workers, "--concurrency", "8")
    wait_for(lambda: all_finished(jobs.values()), timeout=30)

    assert set(states(jobs).values()) == {"done"}
    seen = events(tasks)
    first_starts = [seen[f"first{i}"]["start"] for i in range(4)]
    first_ends = [seen[f"first{i}"]["end"] for i in range(4)]
    second_starts = [seen[f"second{i}"]["start"] for i in range(4)]
    second_ends = [seen[f"second{i}"]["end"] for i in range(4)]
    assert max(first_starts) < min(first_ends), "the first group ran side by side"
    assert min(second_starts) >= max(first_ends)
    assert seen["last"]["start"] >= max(second_ends)


def test_a_job_waits_until_every_parent_is_done(
        tasks: ModuleType, workers: list[subprocess.Popen[str]]) -> None:
    quick, slow = tasks.step.delayable("quick"), tasks.gate.delayable("slow")
    jobs = by_name(group(quick, slow).on_done(tasks.step.delayable("child")).delay())
    worker(tasks, workers, "--concurrency", "4")

    wait_for(lambda: jobs["quick"].refresh().state == "done"
             and jobs["slow"].refresh().state == "started")
    assert jobs["child"].refresh().state == "wait_dependencies"
    assert jobs["child"].attempt == 0

    (Path(tasks.FOLDER) / "slow").write_text("")
    wait_for(lambda: jobs["child"].refresh().state == "done")
    seen = events(tasks)
    assert seen["child"]["start"] >= max(seen["quick"]["end"], seen["slow"]["end"])


# -- failures, retries, set-done ---------------------------------------------------------

def test_a_failed_parent_holds_its_dependents_while_the_rest_of_the_graph_goes_on(
        tasks: ModuleType, workers: list[subprocess.Popen[str]]) -> None:
    held = chain(tasks.give_up.delayable("failing"), tasks.parents.delayable("dependent"))
    independent = chain(tasks.step.delayable("other1", 0.2), tasks.step.delayable("other2"))
    jobs = by_name(group(held, independent).delay())
    worker(tasks, workers, "--concurrency", "4")

    wait_for(lambda: jobs["failing"].refresh().state == "failed"
             and jobs["other2"].refresh().state == "done")
    assert jobs["failing"].error == "FailedJobError: no way"
    assert jobs["dependent"].refresh().state == "wait_dependencies"
    assert jobs["dependent"].attempt == 0
    assert "dependent" not in events(tasks)

    # Set done by hand: the dependent is released, and sees the result given by hand.
    jobs["failing"].set_done({"fixed": "by hand"})
    assert jobs["failing"].state == "done"
    wait_for(lambda: jobs["dependent"].refresh().state == "done")
    assert jobs["dependent"].result == {str(jobs["failing"].uuid): {"fixed": "by hand"}}
    assert jobs["dependent"].attempt == 1


def test_a_parent_that_succeeds_on_retry_releases_its_dependents(
        tasks: ModuleType, workers: list[subprocess.Popen[str]]) -> None:
    jobs = by_name(chain(tasks.flaky.delayable("flaky"), tasks.parents.delayable("dependent"),
                         tasks.step.delayable("grandchild")).delay())
    worker(tasks, workers, "--concurrency", "4")
    wait_for(lambda: jobs["grandchild"].refresh().state == "done")

    flaky, dependent = jobs["flaky"].refresh(), jobs["dependent"].refresh()
    assert (flaky.state, flaky.attempt, flaky.result) == ("done", 2, "recovered")
    assert [log.outcome for log in flaky.logs] == ["error", "success"]
    assert dependent.attempt == 1
    assert dependent.result == {str(flaky.uuid): "recovered"}
    first_try, second_try = flaky.logs
    started = dependent.logs[0].started_at
    assert first_try.ended_at and second_try.ended_at and started
    assert started >= second_try.ended_at


# -- cancelling ----------------------------------------------------------------------------

def test_cancelling_a_job_cancels_every_job_that_depends_on_it(tasks: ModuleType) -> None:
    step = tasks.step.delayable
    # root -> (b1, b2) -> c -> d, next to an unrelated branch of the same graph.
    cascade = chain(step("root"), group(step("b1"), step("b2")), step("c"), step("d"))
    jobs = by_name(group(cascade, step("solo")).delay())
    # x -> y -> z: cancelling y leaves x alone.
    line = by_name(chain(step("x"), step("y"), step("z")).delay())

    jobs["root"].cancel()
    line["y"].cancel()

    assert states(jobs) == {"root": "cancelled", "b1": "cancelled", "b2": "cancelled",
                            "c": "cancelled", "d": "cancelled", "solo": "pending"}
    assert states(line) == {"x": "pending", "y": "cancelled", "z": "cancelled"}
    burst(tasks, "--concurrency", "4")
    assert states(jobs)["solo"] == "done"
    assert states(line) == {"x": "done", "y": "cancelled", "z": "cancelled"}
    assert set(events(tasks)) == {"solo", "x"}
    for name in ("root", "b1", "b2", "c", "d"):
        assert jobs[name].attempt == 0 and jobs[name].logs == [], name


def test_cancelling_a_parent_waiting_for_its_eta_cancels_its_dependents(
        tasks: ModuleType, workers: list[subprocess.Popen[str]]) -> None:
    worker(tasks, workers, "--concurrency", "4")
    step = tasks.step.delayable
    jobs = by_name(chain(step("later").set(eta=3600), step("child"),
                         group(step("grandchild1"), step("grandchild2"))).delay())
    assert jobs["later"].state == "pending"

    jobs["later"].cancel()
    marker = tasks.step.delay("marker")  # the worker is alive and taking jobs
    wait_for(lambda: marker.refresh().state == "done")
    assert set(states(jobs).values()) == {"cancelled"}
    assert set(events(tasks)) == {"marker"}


def test_a_burst_worker_runs_every_link_of_many_short_chains(tasks: ModuleType) -> None:
    """Links become ready only as the ends before them are written, often while a claim
    that found nothing is on its way: the worker must claim again, not exit or sleep."""
    chains = [chain(*(tasks.value.delayable("none") for _ in range(3))).delay()
              for _ in range(100)]
    burst(tasks, "--concurrency", "4")
    assert {job.refresh().state for links in chains for job in links} == {"done"}


# -- results -------------------------------------------------------------------------------

def test_a_job_reads_its_parents_results(tasks: ModuleType) -> None:
    kinds = ["decimal", "datetime", "tuple", "none", "nested"]
    jobs = by_name(group(*(tasks.value.delayable(kind) for kind in kinds))
                   .on_done(tasks.parents.delayable("child")).delay())
    orphan = tasks.parents.delay("orphan")
    burst(tasks, "--concurrency", "4")

    child = jobs["child"].refresh()
    assert child.state == "done"
    assert child.result == {
        str(jobs["decimal"].uuid): Decimal("1.10"),
        str(jobs["datetime"].uuid): datetime(2024, 5, 17, 12, 30, 15, 123456,
                                             tzinfo=timezone(timedelta(hours=2))),
        str(jobs["tuple"].uuid): (1, "two", [3.5]),
        str(jobs["none"].uuid): None,
        str(jobs["nested"].uuid): {"list": [1, 2], "text": "é"},
    }
    assert isinstance(child.result[str(jobs["tuple"].uuid)], tuple)
    assert orphan.refresh().result == {}


def test_a_running_job_fans_out_then_fans_in(
        tasks: ModuleType, workers: list[subprocess.Popen[str]]) -> None:
    split = tasks.split.delay(6)
    worker(tasks, workers, "--concurrency", "6")
    wait_for(lambda: split.refresh().state == "done")
    summary = tasks.app.job(split.result)
    wait_for(lambda: summary.refresh().state == "done")

    assert summary.task == tasks.summarize.name
    assert summary.result == {"count": 6, "total": 55, "values": [0, 1, 4, 9, 16, 25]}
    squares = tasks.app.jobs(task=tasks.square.name)
    assert sorted(job.result for job in squares) == [0, 1, 4, 9, 16, 25]
    seen = events(tasks)
    assert seen["summarize"]["start"] >= max(seen[f"square{i}"]["end"] for i in range(6))


# -- storing a graph -------------------------------------------------------------------------

def test_a_graph_that_cannot_be_stored_leaves_nothing_behind(tasks: ModuleType) -> None:
    step = tasks.step.delayable

    with pytest.raises(SerializationError):
        chain(step("a"), group(step("b"), step("c", object())), step("d")).delay()
    with pytest.raises(SerializationError, match="context"):
        chain(step("a"), step("b").set(context={"handle": object()}), step("c")).delay()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tasks.app, "settings", tasks.app.settings.with_overrides(max_payload=2000))
        with pytest.raises(PayloadTooLarge):
            chain(step("a"), step("x" * 5000), step("c")).delay()
    assert tasks.app.jobs() == []

    # The database refuses the dependencies after the jobs were inserted: all rolled back.
    graph = chain(step("a"), group(step("b"), step("c")), step("d"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(tasks.app.backend.queries, "add_dependencies",
                      ["INSERT INTO errand_no_such_table VALUES (1)"])
        with pytest.raises((DatabaseError, psycopg.Error)):
            graph.delay()
    assert tasks.app.jobs() == []

    # Nothing was marked delayed: once the database accepts it, the same graph is stored.
    jobs = by_name(graph.delay())
    assert states(jobs) == {"a": "pending", "b": "wait_dependencies",
                            "c": "wait_dependencies", "d": "wait_dependencies"}


def test_delay_on_an_inner_node_warns_and_stores_the_whole_graph(tasks: ModuleType) -> None:
    step = tasks.step.delayable
    top, middle, bottom = step("top"), step("middle"), step("bottom")
    chain(top, middle, bottom)
    with pytest.warns(UserWarning, match="top of the graph"):
        job = middle.delay()
    assert job.args == ["middle"]
    stored = by_name(tasks.app.jobs())
    assert states(stored) == {"top": "pending", "middle": "wait_dependencies",
                              "bottom": "wait_dependencies"}

    inner = group(step("g2a"), step("g2b"))
    chain(group(step("g1a"), step("g1b")), inner)
    with pytest.warns(UserWarning, match="top of the graph"):
        inner.delay()
    assert len(tasks.app.jobs()) == 7

    burst(tasks, "--concurrency", "4")
    seen = events(tasks)
    assert seen["top"]["end"] <= seen["middle"]["start"]
    assert seen["middle"]["end"] <= seen["bottom"]["start"]
    assert max(seen["g1a"]["end"], seen["g1b"]["end"]) <= \
        min(seen["g2a"]["start"], seen["g2b"]["start"])


def test_delay_on_the_top_does_not_warn(tasks: ModuleType) -> None:
    step = tasks.step.delayable
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        chain(group(step("a"), step("b")), step("c")).delay()
        step("d").on_done(step("e")).delay()
    assert len(tasks.app.jobs()) == 5


def test_a_graph_is_delayed_only_once(tasks: ModuleType) -> None:
    step = tasks.step.delayable
    first, second = step("first"), step("second")
    graph = chain(first, second)
    graph.delay()

    with pytest.raises(ConfigurationError, match="already delayed"):
        graph.delay()
    with pytest.raises(ConfigurationError, match="already delayed"):
        first.delay()
    late = step("late")
    second.on_done(late)
    with pytest.raises(ConfigurationError, match="already delayed"):
        late.delay()
    assert sorted(job.args[0] for job in tasks.app.jobs()) == ["first", "second"]


# -- two workers finishing the parents of one job at the same time (PostgreSQL) -----------

FINISH_STATEMENT_BLOCKED_BY = (
    "SELECT count(*) FROM pg_stat_activity"
    " WHERE query LIKE '%%jsonb_to_recordset($1::jsonb) AS f(%%'"
    " AND %s::integer = ANY(pg_blocking_pids(pid))")


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_parents_finished_at_once_by_two_workers_release_their_child(
        tasks: ModuleType, workers: list[subprocess.Popen[str]]) -> None:
    jobs = by_name(group(tasks.gate.delayable("one"), tasks.gate.delayable("two"))
                   .on_done(tasks.step.delayable("child")).delay())
    # One slot each, so each worker runs one parent; a long lease keeps heartbeats away.
    for _ in range(2):
        worker(tasks, workers, "--concurrency", "1", env={"ERRAND_LEASE": "120"})
    wait_for(lambda: jobs["one"].refresh().state == "started"
             and jobs["two"].refresh().state == "started")
    assert jobs["one"].worker != jobs["two"].worker

    # The two finishes overlap: the worker of "one" starts its finish statement and is held
    # (on its own errand_workers row) while the worker of "two" finishes and commits.
    url = tasks.app.database_url
    with psycopg.connect(url) as blocker, psycopg.connect(url, autocommit=True) as watcher:
        blocker.execute("SELECT 1 FROM errand_workers WHERE id = %s FOR UPDATE",
                        (jobs["one"].worker,))
        (Path(tasks.FOLDER) / "one").write_text("")
        wait_for(lambda: watcher.execute(FINISH_STATEMENT_BLOCKED_BY,
                                         (blocker.info.backend_pid,)).fetchone() == (1,))
        (Path(tasks.FOLDER) / "two").write_text("")
        wait_for(lambda: jobs["two"].refresh().state == "done")
        assert jobs["one"].refresh().state == "started"
    # The blocker's transaction ends; "one" becomes done: every parent of the child is done.
    wait_for(lambda: jobs["one"].refresh().state == "done")
    wait_for(lambda: jobs["child"].refresh().state != "wait_dependencies", timeout=5)
    wait_for(lambda: jobs["child"].refresh().state == "done")
