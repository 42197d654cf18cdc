"""Real workers (`errand worker` subprocesses) on a real database, on both backends."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

import errand
from errand.jobs import NewJob
from helpers import import_tasks, run_errand, wait_for, worker

TASKS = '''
import ctypes
import os
import time
from pathlib import Path

import errand

app = errand.App()
SIGNALS = Path(os.environ["ERRAND_TEST_DIR"])


@app.task
def add(a, b):
    return a + b


@app.task(retry_pattern={1: 0})
def flaky():
    if errand.current_job().attempt < 2:
        raise errand.RetryableJobError("not yet")
    return "ok"


class Transient(Exception):
    pass


@app.task(retry_on=(Transient,), retry_pattern={1: 0}, max_retries=2)
def transient():
    raise Transient("again")


@app.task
def broken():
    raise KeyError("missing")


@app.task
def nap(seconds):
    began = time.time()
    time.sleep(seconds)
    return [os.getpid(), began, time.time()]


@app.task
def give_up():
    raise errand.FailedJobError("no way")


@app.task
def irrelevant():
    raise errand.CancelJob("record gone")


@app.task(timeout=1, max_retries=1, retry_pattern={1: 0})
def spin():
    while True:
        pass


@app.task(max_retries=1, retry_pattern={1: 0})
def crash(how):
    if how == "abort":
        os.abort()
    if how == "segv":
        ctypes.string_at(0)
    if how == "exit":
        os._exit(3)


@app.task
def wait_for_file(name, obey_stop=True):
    job = errand.current_job()
    job.set_progress(50, "halfway")
    (SIGNALS / f"{name}.started").write_text(str(os.getpid()))
    while not (SIGNALS / name).exists():
        if obey_stop and job.should_stop():
            raise errand.CancelJob("asked to stop")
        time.sleep(0.01)
    return "released"


@app.task
def stubborn(name):
    (SIGNALS / f"{name}.started").write_text(str(os.getpid()))
    while True:
        time.sleep(0.05)


@app.task
def fan_out(n):
    for i in range(n):
        add.delay(i, i)
    return n
'''


@pytest.fixture
def tasks(tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
          ) -> Iterator[ModuleType]:
    """The tasks above, importable here and by worker subprocesses (cwd=tmp_path)."""
    module = import_tasks(TASKS, tmp_path, database_url, monkeypatch, "worker_tasks")
    yield module
    module.app.close()


def burst(tasks: ModuleType, *args: str) -> subprocess.CompletedProcess[str]:
    result = run_errand("worker", "--app", f"{tasks.__name__}:app", "--database-url",
                        tasks.app.database_url, "--burst", *args, cwd=Path(tasks.SIGNALS))
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def started_pid(tasks: ModuleType, name: str) -> int:
    path = Path(tasks.SIGNALS) / f"{name}.started"
    wait_for(path.exists)
    return int(path.read_text())


def test_burst_runs_every_kind_of_end(tasks: ModuleType) -> None:
    sums = [tasks.add.delay(i, 1) for i in range(20)]
    flaky, transient, broken = tasks.flaky.delay(), tasks.transient.delay(), tasks.broken.delay()
    give_up, irrelevant = tasks.give_up.delay(), tasks.irrelevant.delay()
    burst(tasks, "--concurrency", "3")
    assert [job.refresh().result for job in sums] == [i + 1 for i in range(20)]
    assert all(job.state == "done" and job.attempt == 1 for job in sums)
    flaky.refresh()
    assert (flaky.state, flaky.result, flaky.attempt) == ("done", "ok", 2)
    assert [log.outcome for log in flaky.logs] == ["error", "success"]
    assert flaky.logs[0].error == "RetryableJobError: not yet"
    transient.refresh()
    assert transient.state == "failed" and transient.attempt == 3  # max_retries=2
    broken.refresh()
    assert (broken.state, broken.attempt, broken.error) == ("failed", 1, "KeyError: 'missing'")
    assert "raise KeyError" in (broken.logs[0].traceback or "")
    assert give_up.refresh().state == "failed" and give_up.attempt == 1
    irrelevant.refresh()
    assert irrelevant.state == "cancelled" and irrelevant.logs[0].outcome == "cancelled"
    log = sums[0].logs[0]
    assert log.worker and log.pid and log.pid != os.getpid()
    assert log.memory_mb and log.memory_mb > 1 and log.duration is not None
    assert log.started_at and log.ended_at and log.started_at <= log.ended_at


def test_no_job_waits_behind_a_long_one(tasks: ModuleType) -> None:
    """Under a stream of short jobs each process holds its next jobs; those held behind a
    job that turns out long are asked back and run by the other process meanwhile."""
    def naps(count: int) -> list[errand.Job]:
        return tasks.nap.delay_many([((0,), {})] * count)

    before, long_one, after = naps(1500), tasks.nap.delay(3), naps(300)
    burst(tasks, "--concurrency", "2")
    long_pid, long_began, long_ended = long_one.refresh().result
    assert long_ended - long_began >= 3
    ends = [job.refresh().result for job in after]
    assert Counter((job.refresh().state, job.attempt) for job in [*before, *after]) == {
        ("done", 1): len(before) + len(after)}
    late = [end for end in ends if end[2] > long_began + 1.0]
    assert not late, f"{len(late)} jobs ended more than 1 s after the long one began"
    assert not any(pid == long_pid and began > long_began for pid, began, _ in ends)


def test_timeouts_and_crashes_are_contained(tasks: ModuleType) -> None:
    spin = tasks.spin.delay()
    crashes = {how: tasks.crash.delay(how) for how in ("abort", "segv", "exit")}
    sums = [tasks.add.delay(i, i) for i in range(10)]
    burst(tasks, "--concurrency", "2")
    spin.refresh()
    assert spin.state == "failed" and [log.outcome for log in spin.logs] == ["timeout"] * 2
    assert "killed after 1 s" in (spin.error or "")
    expected = {"abort": "SIGABRT", "segv": "SIGSEGV", "exit": "exited with code 3"}
    for how, job in crashes.items():
        job.refresh()
        assert job.state == "failed" and job.attempt == 2, how
        assert [log.outcome for log in job.logs] == ["crash", "crash"]
        assert expected[how] in (job.error or ""), job.error
    assert all(job.refresh().state == "done" for job in sums)


def test_progress_shows_while_running_and_cancel_stops_the_job(
        tasks: ModuleType, workers: list[subprocess.Popen[str]]) -> None:
    worker(tasks, workers, "--concurrency", "2")
    job = tasks.wait_for_file.delay("never")
    wait_for(lambda: job.refresh().progress == 50)
    assert job.state == "started" and job.status_message == "halfway"
    job.cancel()
    assert job.state == "cancelled"
    # The try is shown from the job's row while it runs; once cancelled, from its own row
    # when the worker has stopped it and written it.
    wait_for(lambda: [log.outcome for log in job.logs] == ["cancelled"])
    after = tasks.add.delay(2, 3)
    wait_for(lambda: after.refresh().state == "done")
    assert workers[0].poll() is None


def test_a_job_ignoring_cancel_is_killed(tasks: ModuleType,
                                         workers: list[subprocess.Popen[str]]) -> None:
    worker(tasks, workers, "--concurrency", "1", env={"ERRAND_CANCEL_GRACE": "0.5"})
    job = tasks.stubborn.delay("stubborn")
    pid = started_pid(tasks, "stubborn")
    job.cancel()
    wait_for(lambda: not alive(pid))
    wait_for(lambda: [log.outcome for log in job.logs] == ["cancelled"])
    assert job.refresh().state == "cancelled"
    after = tasks.add.delay(1, 1)
    wait_for(lambda: after.refresh().state == "done")


def test_sigterm_lets_running_jobs_finish(tasks: ModuleType,
                                          workers: list[subprocess.Popen[str]]) -> None:
    process = worker(tasks, workers, "--concurrency", "1")
    running = tasks.wait_for_file.delay("release", obey_stop=False)
    started_pid(tasks, "release")
    queued = [tasks.add.delay(i, i) for i in range(3)]
    process.send_signal(signal.SIGTERM)
    time.sleep(0.3)  # the worker is draining: the running job must still be running
    assert process.poll() is None and running.refresh().state == "started"
    (Path(tasks.SIGNALS) / "release").write_text("")
    assert process.wait(timeout=20) == 0
    assert running.refresh().state == "done" and running.result == "released"
    assert [(job.refresh().state, job.attempt) for job in queued] == [("pending", 0)] * 3


def test_a_job_that_stops_early_for_a_shutdown_is_put_back(
        tasks: ModuleType, workers: list[subprocess.Popen[str]]) -> None:
    process = worker(tasks, workers, "--concurrency", "1")
    job = tasks.wait_for_file.delay("early")
    started_pid(tasks, "early")
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=20) == 0
    job.refresh()
    assert (job.state, job.attempt, job.retries) == ("pending", 1, 0)
    assert job.logs[-1].outcome == "interrupted"


def test_sigterm_puts_back_jobs_longer_than_the_grace(
        tasks: ModuleType, workers: list[subprocess.Popen[str]]) -> None:
    process = worker(tasks, workers, "--concurrency", "1", env={"ERRAND_SHUTDOWN_GRACE": "1"})
    job = tasks.stubborn.delay("long")
    pid = started_pid(tasks, "long")
    stopped_at = time.monotonic()
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=20) == 0
    assert time.monotonic() - stopped_at < 1 + 3
    assert not alive(pid)
    job.refresh()
    assert (job.state, job.attempt, job.retries) == ("pending", 1, 0)
    assert job.logs[-1].outcome == "interrupted"


def test_a_killed_workers_job_is_rescued_by_another(
        tasks: ModuleType, workers: list[subprocess.Popen[str]]) -> None:
    lease = {"ERRAND_LEASE": "1"}
    first = worker(tasks, workers, "--concurrency", "1", env=lease)
    job = tasks.wait_for_file.delay("rescue")
    pid = started_pid(tasks, "rescue")
    first.kill()
    first.wait(timeout=10)
    wait_for(lambda: not alive(pid), timeout=5)  # the job process died with its supervisor
    (Path(tasks.SIGNALS) / "rescue").write_text("")
    worker(tasks, workers, "--concurrency", "1", env=lease)
    wait_for(lambda: job.refresh().state == "done", timeout=20)
    assert job.attempt == 2
    assert [log.outcome for log in job.logs] == ["interrupted", "success"]


def test_jobs_may_enqueue_jobs(tasks: ModuleType) -> None:
    parent = tasks.fan_out.delay(5)
    burst(tasks)
    assert parent.refresh().result == 5
    children = tasks.app.jobs(task=tasks.add.name)
    assert sorted(job.result for job in children) == [0, 2, 4, 6, 8]


def test_unknown_tasks_and_malformed_rows_fail_once(tasks: ModuleType) -> None:
    @tasks.app.task(name="only.in.the.test")
    def elsewhere() -> None: ...

    unknown = elsewhere.delay()
    template = tasks.add.delay(1, 2)
    malformed_uuid = uuid.uuid4()
    tasks.app.backend.enqueue([NewJob(
        uuid=malformed_uuid, task=tasks.add.name, args='{"not": "a list"}', kwargs="{}",
        context="{}", description="bad row", channel="root", priority=10, max_retries=5,
        retry_pattern=None, timeout=None)])
    burst(tasks)
    assert unknown.refresh().state == "failed" and unknown.attempt == 1
    assert unknown.error_type == "UnknownTaskError"
    malformed = tasks.app.job(malformed_uuid)
    assert (malformed.state, malformed.attempt, malformed.error_type) == \
        ("failed", 1, "MalformedJob")
    assert template.refresh().result == 3


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_postgres_wakes_an_idle_worker_at_once(
        tasks: ModuleType, workers: list[subprocess.Popen[str]]) -> None:
    # With an hour between polls, only a notification can start the job.
    worker(tasks, workers, "--concurrency", "1", env={"ERRAND_POLL_INTERVAL": "3600"})
    wait_for(tasks.app.backend.list_workers)
    time.sleep(0.5)  # let the worker go idle
    job = tasks.add.delay(20, 22)
    wait_for(lambda: job.refresh().state == "done", timeout=10)
    assert job.result == 42
