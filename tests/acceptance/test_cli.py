"""Acceptance tests of the command line (SPEC section 9): the real `errand` command, run in
subprocesses against a real SQLite file and, through `database_url`, a real PostgreSQL."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import textwrap
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Any
from uuid import UUID

import pytest
from cli_project import (
    CLEAN_ENV,
    TASKS,
    Processed,
    Project,
    enqueue_and_run,
    line_with,
    plain,
)

from conftest import postgres_schema
from helpers import start_errand, start_worker, wait_for


@pytest.fixture
def project(tmp_path: Path, app_module: Callable[[str, str], Path], database_url: str) -> Project:
    app_module("tasks", TASKS)
    return Project(tmp_path, database_url)


@pytest.fixture
def sqlite_project(tmp_path: Path, app_module: Callable[[str, str], Path],
                   sqlite_url: str) -> Project:
    app_module("tasks", TASKS)
    return Project(tmp_path, sqlite_url)


@pytest.fixture
def processed(project: Project) -> Processed:
    """Jobs run by a burst worker, for a test that changes them."""
    return enqueue_and_run(project)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def ran(request: pytest.FixtureRequest,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[Processed]:
    """The same, shared by the tests that only read them (one worker run per backend)."""
    folder = tmp_path_factory.mktemp("project")
    (folder / "tasks.py").write_text(textwrap.dedent(TASKS))
    if request.param == "sqlite":
        yield enqueue_and_run(Project(folder, f"sqlite:///{folder / 'errand.db'}"))
    else:
        with postgres_schema() as url:
            yield enqueue_and_run(Project(folder, url))


# -- migrate -----------------------------------------------------------------------------


def test_migrate_on_a_fresh_database_reports_the_versions_it_applied(project: Project) -> None:
    out = project.ok("migrate", app=False)
    applied = re.fullmatch(r"applied migrations 1(?:, \d+)*; schema at version (\d+)",
                           out.strip())
    assert applied, out
    assert out.split(";")[0].endswith(applied.group(1))  # every one, up to the last


def test_migrate_again_says_the_schema_is_already_at_that_version(project: Project) -> None:
    first = project.ok("migrate", app=False)
    version = re.search(r"schema (?:already )?at version (\d+)", first)
    assert version, first
    again = project.ok("migrate", app=False)
    assert again.strip() == f"schema already at version {version.group(1)}"


# -- enqueue -----------------------------------------------------------------------------


def test_enqueue_prints_the_new_job_uuid_and_stores_every_option(project: Project) -> None:
    out = project.ok("enqueue", "mail.send", "--args", '["a@example.com"]',
                     "--kwargs", '{"subject": "Hi"}', "--priority", "3", "--eta", "3600",
                     "--channel", "root.mail.bulk")
    assert len(out.splitlines()) == 1
    uuid = str(UUID(out.strip()))

    job = project.job(uuid)
    assert job["task"] == "mail.send"
    assert job["state"] == "pending"
    assert job["priority"] == 3
    assert job["channel"] == "root.mail.bulk"
    assert job["args"] == ["a@example.com"]
    assert job["kwargs"] == {"subject": "Hi"}
    eta = datetime.fromisoformat(job["eta"]) - datetime.fromisoformat(job["created_at"])
    assert timedelta(seconds=3590) <= eta <= timedelta(seconds=3610)


def test_enqueue_json_prints_the_job_with_the_task_defaults(project: Project) -> None:
    job = project.json("enqueue", "mail.send", "--args", '["b@example.com"]')
    assert str(UUID(job["uuid"])) == job["uuid"]
    assert job["task"] == "mail.send"
    assert job["state"] == "pending"
    assert job["priority"] == 10              # SPEC section 2 default
    assert job["channel"] == "root.mail"      # the task's own channel
    assert job["args"] == ["b@example.com"]
    assert job["kwargs"] == {}
    assert job["attempt"] == 0
    assert job["result"] is None and job["error"] is None
    assert project.states() == {job["uuid"]: "pending"}


# -- worker and jobs list ----------------------------------------------------------------


def test_a_burst_worker_runs_the_jobs_and_jobs_list_shows_them(ran: Processed) -> None:
    project, p = ran.project, ran
    assert f"stopped after {Processed.RAN} job(s)" in p.worker_output

    jobs = {job["uuid"]: job for job in project.json("jobs", "list")}
    assert {uuid: job["state"] for uuid, job in jobs.items()} == {
        p.add: "done", p.mail: "done", p.bulk: "done", p.heavy: "done", p.mailbox: "done",
        p.boom: "failed", p.later: "pending", p.heavy_later: "pending"}
    assert jobs[p.add]["result"] == 3
    assert jobs[p.heavy]["result"] == 10
    assert jobs[p.mail]["result"] == "sent to a@example.com"
    assert jobs[p.boom]["error"] == "ValueError: kaboom"
    assert jobs[p.add]["attempt"] == 1
    assert jobs[p.later]["attempt"] == 0

    table = project.ok("jobs", "list")
    assert re.search(r"\bdone\b.*\broot\b.*\b3\s*$", line_with(table, p.add))
    assert "failed" in line_with(table, p.boom)
    assert "ValueError: kaboom" in line_with(table, p.boom)
    assert "pending" in line_with(table, p.later)
    assert "sent to a@example.com" in line_with(table, p.mail)


def test_jobs_list_filters_by_state_task_channel_and_limit(ran: Processed) -> None:
    project, p = ran.project, ran

    def listed(*filters: str) -> list[str]:
        return [job["uuid"] for job in project.json("jobs", "list", *filters)]

    # Newest first.
    assert listed() == [p.heavy_later, p.later, p.boom, p.mailbox, p.heavy, p.bulk, p.mail,
                        p.add]
    assert listed("--state", "failed") == [p.boom]
    assert listed("--state", "pending") == [p.heavy_later, p.later]
    assert listed("--state", "cancelled") == []
    assert listed("--task", "mail.send") == [p.bulk, p.mail]
    assert listed("--task", "demo.add", "--state", "done") == [p.mailbox, p.heavy, p.add]
    # A channel includes its sub-channels, and only those: root.mailbox is not under root.mail.
    assert listed("--channel", "root.mail") == [p.bulk, p.mail]
    assert listed("--channel", "root.mail.bulk") == [p.bulk]
    assert listed("--channel", "root.heavy") == [p.heavy_later, p.heavy]
    assert len(listed("--channel", "root")) == 8
    assert listed("--limit", "2") == [p.heavy_later, p.later]

    table = project.ok("jobs", "list", "--channel", "root.mail")
    assert p.bulk in table and p.mail in table
    assert p.heavy not in table and p.mailbox not in table
    assert project.ok("jobs", "list", "--state", "cancelled").strip() == "no jobs"


# -- jobs show ---------------------------------------------------------------------------


def test_jobs_show_gives_the_job_its_result_and_its_tries(ran: Processed) -> None:
    project, processed = ran.project, ran
    out = project.ok("jobs", "show", processed.add)
    assert processed.add in out.splitlines()[0]
    assert re.search(r"^\s*task\s+demo\.add\s*$", out, re.M)
    assert re.search(r"^\s*state\s+done\s*$", out, re.M)
    assert re.search(r"^\s*result\s+3\s*$", out, re.M)
    assert re.search(r"^tries\b", out, re.M)  # the title of the tries table
    try_line = line_with(out, "success")
    assert re.match(r"^1\s", try_line)

    job = project.job(processed.add)
    assert job["state"] == "done" and job["result"] == 3
    [entry] = job["logs"]
    assert entry["attempt"] == 1
    assert entry["outcome"] == "success"
    assert entry["result"] == 3
    assert entry["error"] is None and entry["traceback"] is None
    assert isinstance(entry["duration"], float) and 0 <= entry["duration"] < 30
    assert entry["worker"] == job["worker"] and entry["worker"]
    assert isinstance(entry["pid"], int) and entry["pid"] > 0
    assert isinstance(entry["memory_mb"], float) and entry["memory_mb"] > 0
    assert str(entry["pid"]) in try_line and entry["worker"] in try_line


def test_jobs_show_of_a_failed_job_gives_the_error_and_the_traceback(ran: Processed) -> None:
    project, processed = ran.project, ran
    out = project.ok("jobs", "show", processed.boom)
    assert re.search(r"^\s*state\s+failed\s*$", out, re.M)
    assert re.search(r"^\s*error\s+ValueError: kaboom\s*$", out, re.M)
    assert "Traceback (most recent call last)" in out
    assert 'raise ValueError(message)' in out

    job = project.job(processed.boom)
    assert job["error"] == "ValueError: kaboom"
    [entry] = job["logs"]
    assert entry["outcome"] == "error"
    assert entry["error"] == "ValueError: kaboom"
    assert entry["traceback"].startswith("Traceback (most recent call last)")
    assert entry["traceback"].rstrip().endswith("ValueError: kaboom")


def test_jobs_show_of_a_job_not_yet_run_has_no_tries(project: Project) -> None:
    uuid = project.enqueue("demo.add", "--args", "[1]", "--eta", "1h")
    assert project.job(uuid)["logs"] == []
    out = project.ok("jobs", "show", uuid)
    assert re.search(r"^\s*state\s+pending\s*$", out, re.M)
    assert not re.search(r"^tries\b", out, re.M)
    assert re.search(r"^\s*tries\s+0 ", out, re.M)


class _Drain(threading.Thread):
    """Reads a pipe as it is written, so a test can wait on what a command has shown."""

    def __init__(self, stream: IO[str]) -> None:
        super().__init__(daemon=True)
        self._fd = stream.fileno()
        self._data = bytearray()
        self._lock = threading.Lock()
        self.start()

    def run(self) -> None:
        while chunk := os.read(self._fd, 4096):
            with self._lock:
                self._data += chunk

    def text(self) -> str:
        with self._lock:
            return plain(self._data.decode(errors="replace"))


def test_jobs_show_follow_draws_progress_until_a_running_job_ends(project: Project,
                                                                   tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    worker = start_worker("--app", "tasks:app", "--database-url", project.url,
                          "--concurrency", "1", cwd=project.folder,
                          env={**CLEAN_ENV, "ERRAND_SHUTDOWN_GRACE": "5"})
    follower = None
    try:
        uuid = project.enqueue("demo.wait_for_file", "--args", json.dumps([str(gate)]))
        wait_for(lambda: project.job(uuid)["progress"] == 40)
        assert project.job(uuid)["state"] == "started"

        # The live worker, as `errand workers` shows it meanwhile.
        [me] = [w for w in project.json("workers") if w["pid"] == worker.pid]
        assert me["status"] == "running"
        assert me["host"] == socket.gethostname()
        assert me["running"] == 1 and me["concurrency"] == 1
        row = line_with(project.ok("workers"), me["id"])
        assert "running" in row and str(worker.pid) in row and "1/1" in row

        # A terminal, so the bar is drawn while the job runs (piped, it shows only its end).
        follower = start_errand(
            "jobs", "show", uuid, "--follow", "--database-url", project.url,
            cwd=project.folder,
            env={**CLEAN_ENV, "TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1", "COLUMNS": "200"})
        assert follower.stderr is not None and follower.stdout is not None
        drawn = _Drain(follower.stderr)
        wait_for(lambda: "started: halfway there" in drawn.text())
        assert "40%" in drawn.text()
        assert follower.poll() is None, "--follow returned before the job ended"

        gate.touch()
        assert follower.wait(timeout=30) == 0
        drawn.join(timeout=10)
        out = plain(follower.stdout.read())
        assert re.search(r"^\s*state\s+done\s*$", out, re.M), out
        assert re.search(r"^\s*progress\s+100%\s+all done\s*$", out, re.M), out
        assert re.search(r"^\s*result\s+finished\s*$", out, re.M), out
        assert "success" in out
        assert re.search(r"100%.*done: all done", drawn.text())
        assert "Traceback" not in drawn.text()
    finally:
        gate.touch()
        if follower is not None and follower.poll() is None:
            follower.kill()
            follower.wait()
        worker.send_signal(signal.SIGTERM)
        output, _ = worker.communicate(timeout=60)
    assert worker.returncode == 0, output
    assert [w["status"] for w in project.json("workers")] == ["stopped"]


def test_the_last_status_message_of_a_job_is_kept(project: Project) -> None:
    uuids = [project.enqueue("demo.report", "--args", str([n])) for n in range(4)]
    project.ok("worker", "--burst", "--concurrency", "2")
    for n, uuid in enumerate(uuids):
        job = project.job(uuid)
        assert (job["state"], job["progress"]) == ("done", 100)
        assert job["status_message"] == f"wrote {n} lines"


# -- requeue, cancel, set-done -----------------------------------------------------------


def _changed(project: Project, *args: str) -> tuple[int, dict[str, Any]]:
    done = project.errand("jobs", *args, "--json")
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, json.loads(done.stdout)


def test_requeue_cancel_and_set_done_move_jobs_as_spec_section_3_says(
        project: Project, processed: Processed) -> None:
    p = processed

    # cancel: anything not finished.
    out = project.ok("jobs", "cancel", p.later)
    assert out.strip() == "cancelled 1 job(s)"
    assert project.job(p.later)["state"] == "cancelled"

    # requeue: failed, cancelled and done go back to pending.
    code, report = _changed(project, "requeue", p.boom, p.later, p.add)
    assert code == 0
    assert sorted(report["changed"]) == sorted([p.boom, p.later, p.add])
    assert report["refused"] == {}
    for uuid in (p.boom, p.later, p.add):
        job = project.job(uuid)
        assert job["state"] == "pending"
        assert job["result"] is None and job["error"] is None

    # set-done: pending (and failed, wait_dependencies: below) become done, with a result.
    out = project.ok("jobs", "set-done", p.add, "--result", '{"by": "hand"}')
    assert out.strip() == "set done 1 job(s)"
    job = project.job(p.add)
    assert job["state"] == "done" and job["result"] == {"by": "hand"}

    project.force_state(p.heavy_later, "wait_dependencies")
    code, report = _changed(project, "set-done", p.heavy_later)
    assert (code, report) == (0, {"changed": [p.heavy_later], "refused": {}})
    assert project.job(p.heavy_later)["state"] == "done"
    assert project.job(p.heavy_later)["result"] is None

    project.ok("jobs", "cancel", p.boom)
    project.ok("jobs", "requeue", p.boom)
    assert project.job(p.boom)["state"] == "pending"


def test_set_done_a_failed_job_records_the_result(project: Project,
                                                  processed: Processed) -> None:
    code, report = _changed(project, "set-done", processed.boom, "--result", "42")
    assert (code, report) == (0, {"changed": [processed.boom], "refused": {}})
    job = project.job(processed.boom)
    assert job["state"] == "done"
    assert job["result"] == 42
    assert job["error"] is None


def test_an_action_on_a_job_in_a_state_it_does_not_apply_to_is_refused(
        project: Project, processed: Processed) -> None:
    p = processed
    before = project.states()
    for action, uuid, state in [("cancel", p.add, "done"), ("cancel", p.boom, "failed"),
                                ("requeue", p.later, "pending"), ("set-done", p.mail, "done")]:
        done = project.errand("jobs", action, uuid)
        assert done.returncode == 1, (action, state)
        assert "Traceback" not in done.stderr
        assert f"is {state}; {action} applies to jobs that are" in line_with(done.stdout, uuid)
    assert project.states() == before


def test_json_lists_the_changed_and_the_refused(project: Project,
                                                processed: Processed) -> None:
    p = processed
    missing = "00000000-0000-4000-8000-000000000000"
    code, report = _changed(project, "cancel", p.later, p.add, missing)
    assert code == 1
    assert report["changed"] == [p.later]
    assert set(report["refused"]) == {p.add, missing}
    assert report["refused"][p.add].startswith("is done; cancel applies to jobs that are")
    assert report["refused"][missing] == "no such job"
    assert project.states()[p.later] == "cancelled"


def test_actions_by_state_take_every_job_in_that_state(project: Project,
                                                       processed: Processed) -> None:
    p = processed
    code, report = _changed(project, "requeue", "--state", "failed")
    assert (code, report) == (0, {"changed": [p.boom], "refused": {}})
    assert project.json("jobs", "list", "--state", "failed") == []

    code, report = _changed(project, "cancel", "--state", "pending")
    assert code == 0
    assert sorted(report["changed"]) == sorted([p.boom, p.later, p.heavy_later])

    # cancelled is not a state set-done applies to: each job is refused, none changed.
    done = project.errand("jobs", "set-done", "--state", "cancelled")
    assert done.returncode == 1
    assert done.stdout.splitlines()[0] == "set done 0 job(s)"
    for uuid in (p.boom, p.later, p.heavy_later):
        assert "is cancelled; set-done applies to jobs that are" in line_with(done.stdout, uuid)
    states = project.states()
    assert [states[u] for u in (p.boom, p.later, p.heavy_later)] == ["cancelled"] * 3

    out = project.ok("jobs", "requeue", "--state", "cancelled")
    assert out.strip() == "requeued 3 job(s)"
    out = project.ok("jobs", "set-done", "--state", "pending", "--result", '"by hand"')
    assert out.strip() == "set done 3 job(s)"
    assert set(project.states().values()) == {"done"}
    assert project.job(p.later)["result"] == "by hand"


# -- purge -------------------------------------------------------------------------------


def test_purge_deletes_old_finished_jobs(project: Project, processed: Processed) -> None:
    p = processed
    project.ok("jobs", "cancel", p.later)
    everything = set(project.states())

    assert project.ok("jobs", "purge", "--older-than", "1d").strip() == "purged 0 job(s)"
    assert set(project.states()) == everything

    # By default: done and cancelled; failed and pending stay.
    assert project.json("jobs", "purge", "--older-than", "0s") == {"purged": 6}
    assert project.states() == {p.boom: "failed", p.heavy_later: "pending"}

    out = project.ok("jobs", "purge", "--older-than", "0s", "--state", "failed")
    assert out.strip() == "purged 1 job(s)"
    assert project.states() == {p.heavy_later: "pending"}

    gone = project.errand("jobs", "show", p.add)
    assert gone.returncode == 1
    assert gone.stderr.strip() == f"errand: error: no job {p.add}"


# -- workers, channels, stats ------------------------------------------------------------


def test_workers_shows_a_worker_that_ran_a_burst_as_stopped(ran: Processed) -> None:
    project, processed = ran.project, ran
    [worker] = project.json("workers")
    assert worker["status"] == "stopped"
    assert worker["host"] == socket.gethostname()
    assert isinstance(worker["pid"], int)
    assert worker["concurrency"] == 2
    assert worker["running"] == 0
    assert worker["jobs_done"] == Processed.RAN
    assert worker["heartbeat_age"] >= 0
    assert project.job(processed.add)["worker"] == worker["id"]

    row = line_with(project.ok("workers"), worker["id"])
    assert "stopped" in row and socket.gethostname() in row and str(worker["pid"]) in row


def test_workers_says_so_when_there_are_none(project: Project) -> None:
    assert project.ok("workers").strip() == "no workers"
    assert project.json("workers") == []


def test_stats_counts_jobs_per_task_and_state(ran: Processed) -> None:
    project = ran.project
    stats = {row["task"]: row for row in project.json("stats", "--days", "7")}
    assert set(stats) == {"demo.add", "demo.boom", "mail.send"}
    assert stats["demo.add"]["counts"] == {"done": 3, "pending": 2}
    assert stats["demo.add"]["total"] == 5
    assert stats["demo.add"]["failure_rate"] == 0.0
    assert stats["mail.send"]["counts"] == {"done": 2}
    assert stats["demo.boom"]["counts"] == {"failed": 1}
    assert stats["demo.boom"]["failure_rate"] == 1.0
    assert stats["demo.boom"]["avg_duration"] is None  # durations are of done jobs
    assert 0 <= stats["mail.send"]["avg_duration"] <= stats["mail.send"]["max_duration"] < 30

    table = project.ok("stats", "--days", "7")
    assert "last 7 days" in table
    # task, total, done, failed, cancelled, waiting/running, failure rate
    assert re.search(r"demo\.add\s*│\s*5\s*│\s*3\s*│\s*0\s*│\s*0\s*│\s*2\s*│\s*0\.0%",
                     line_with(table, "demo.add"))
    assert re.search(r"demo\.boom\s*│\s*1\s*│\s*0\s*│\s*1\s*│.*100\.0%",
                     line_with(table, "demo.boom"))


def test_stats_on_an_empty_database(project: Project) -> None:
    assert project.json("stats") == []
    assert project.ok("stats", "--days", "2").strip() == "no jobs in the last 2 days"


def _channels(project: Project, env: dict[str, str] | None = None) -> dict[str, Any]:
    """`errand channels --json` by channel name, each row without its name."""
    rows = {}
    for row in project.json("channels", env=env):
        name = row.pop("name") if "name" in row else row.pop("channel")
        rows[name] = row
    return rows


def _counts(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row["capacity"], row["sequential"], row["running"], row["pending"],
            row["waiting"])


def test_channels_shows_the_waiting_jobs_of_each_channel(ran: Processed) -> None:
    project = ran.project
    rows = _channels(project)
    # capacity, sequential, running, pending, waiting
    assert _counts(rows["root"]) == (None, False, 0, 1, 0)
    assert _counts(rows["root.heavy"]) == (None, False, 0, 1, 0)
    assert set(rows) == {"root", "root.heavy"}   # finished jobs hold no channel

    configured = {"ERRAND_CHANNELS": "root:4,root.mail:2,root.heavy:1:sequential"}
    rows = _channels(project, env=configured)
    assert _counts(rows["root"]) == (4, False, 0, 1, 0)
    assert _counts(rows["root.mail"]) == (2, False, 0, 0, 0)
    assert _counts(rows["root.heavy"]) == (1, True, 0, 1, 0)

    table = project.ok("channels", env=configured)
    assert re.search(r"root\.heavy\s*│\s*1 sequential\s*│\s*0\s*│\s*1\s*│\s*0",
                     line_with(table, "root.heavy"))


# -- environment -------------------------------------------------------------------------


def test_errand_database_url_is_used_when_no_option_is_given(sqlite_project: Project,
                                                             tmp_path: Path) -> None:
    project = sqlite_project
    from_env = f"sqlite:///{tmp_path / 'from_env.db'}"
    env = {"ERRAND_DATABASE_URL": from_env}
    out = project.ok("enqueue", "demo.add", "--args", "[1, 1]", url=False, env=env)
    uuid = str(UUID(out.strip()))
    assert (tmp_path / "from_env.db").exists()
    assert not (tmp_path / "errand.db").exists()   # not the default sqlite:///errand.db

    listed = json.loads(project.ok("jobs", "list", "--json", url=False, env=env))
    assert [job["uuid"] for job in listed] == [uuid]
    # --database-url wins over the variable.
    assert project.json("jobs", "list", env=env) == []

    # ERRAND_APP stands for --app the same way.
    done = project.errand("worker", "--burst", "--concurrency", "1", app=False, url=False,
                          env={**env, "ERRAND_APP": "tasks:app"})
    assert done.returncode == 0, done.stderr
    job = json.loads(project.ok("jobs", "show", uuid, "--json", url=False, env=env))
    assert (job["state"], job["result"]) == ("done", 2)
