"""Acceptance tests of the command line's errors (SPEC section 9): one clear line on stderr,
`errand: error: ...`, no traceback, a non-zero exit; argparse usage errors exit 2."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from cli_project import TASKS, Project

UNREACHABLE = "postgresql://postgres@127.0.0.1:1/nope"
NO_SUCH_JOB = "00000000-0000-4000-8000-000000000000"


@pytest.fixture
def project(tmp_path: Path, app_module: Callable[[str, str], Path], sqlite_url: str) -> Project:
    app_module("tasks", TASKS)
    return Project(tmp_path, sqlite_url)


@pytest.fixture
def any_project(tmp_path: Path, app_module: Callable[[str, str], Path],
                database_url: str) -> Project:
    app_module("tasks", TASKS)
    return Project(tmp_path, database_url)


def error_line(done: subprocess.CompletedProcess[str]) -> str:
    """The command failed with exactly one `errand: error:` line and nothing else."""
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("errand: error: "), lines[0]
    assert done.stdout == ""
    return lines[0]


def run(project: Project, *args: str, app: bool = True) -> subprocess.CompletedProcess[str]:
    """`--app` and `--database-url` are added unless the case gives its own."""
    return project.errand(*args, app=app and "--app" not in args,
                          url="--database-url" not in args)


ENQUEUE_ERRORS = [
    pytest.param(["--args", "[1,"], "--args is not valid JSON", id="bad-json"),
    pytest.param(["--args", '{"a": 1}'], "--args must be a JSON array", id="args-not-array"),
    pytest.param(["--args", "[1]", "--kwargs", "[1]"], "--kwargs must be a JSON object",
                 id="kwargs-not-object"),
    pytest.param(["--args", "[1, 2, 3]"], "demo.add: too many positional arguments",
                 id="too-many-args"),
    pytest.param([], "demo.add: missing a required argument: 'a'", id="missing-arg"),
    pytest.param(["--args", "[1]", "--kwargs", '{"c": 1}'], "unexpected keyword argument 'c'",
                 id="unexpected-kwarg"),
    pytest.param(["--args", "[NaN]"], "NaN", id="nan"),
    pytest.param(["--args", "[1]", "--eta", "soon"], "--eta: 'soon' is not a duration",
                 id="bad-eta"),
    pytest.param(["--args", "[1]", "--eta", "999999999d"], "--eta: '999999999d' is too long",
                 id="eta-too-far"),
    pytest.param(["--args", "[1]", "--channel", "mail"], "channel must be 'root'",
                 id="bad-channel"),
]


@pytest.mark.parametrize(("options", "message"), ENQUEUE_ERRORS)
def test_a_refused_enqueue_is_one_line_and_stores_nothing(project: Project, options: list[str],
                                                          message: str) -> None:
    assert message in error_line(run(project, "enqueue", "demo.add", *options))
    assert project.json("jobs", "list") == []


def test_enqueue_of_an_unknown_task_names_the_registered_ones(project: Project) -> None:
    line = error_line(run(project, "enqueue", "nope"))
    assert line == ("errand: error: no task named 'nope' (registered: demo.add, demo.boom, "
                    "demo.report, demo.wait_for_file, mail.send)")


ERRORS = [
    # jobs
    pytest.param(["jobs", "show", NO_SUCH_JOB], f"no job {NO_SUCH_JOB}", id="unknown-uuid"),
    pytest.param(["jobs", "show", "not-a-uuid"], "'not-a-uuid' is not a job uuid",
                 id="malformed-uuid"),
    pytest.param(["jobs", "cancel", "12345"], "'12345' is not a job uuid",
                 id="malformed-uuid-cancel"),
    pytest.param(["jobs", "list", "--state", "bogus"],
                 "unknown state 'bogus'; states are wait_dependencies, pending, enqueued, "
                 "started, done, failed, cancelled", id="unknown-state-list"),
    pytest.param(["jobs", "requeue", "--state", "finished"], "unknown state 'finished'",
                 id="unknown-state-requeue"),
    pytest.param(["jobs", "purge", "--older-than", "1d", "--state", "gone"],
                 "unknown state 'gone'", id="unknown-state-purge"),
    pytest.param(["jobs", "purge", "--older-than", "1d", "--state", "pending"],
                 "purge deletes finished jobs only", id="purge-unfinished"),
    pytest.param(["jobs", "purge", "--older-than", "soon"],
                 "--older-than: 'soon' is not a duration; write it like 30d, 12h, 15m or 90s",
                 id="bad-older-than"),
    pytest.param(["jobs", "cancel"], "jobs cancel takes job UUIDs or --state",
                 id="neither-uuids-nor-state"),
    pytest.param(["jobs", "requeue", NO_SUCH_JOB, "--state", "failed"],
                 "jobs requeue takes job UUIDs or --state", id="both-uuids-and-state"),
    pytest.param(["jobs", "set-done", "--state", "failed", "--result", "{bad"],
                 "--result is not valid JSON", id="bad-result"),
    pytest.param(["jobs", "list", "--limit", "0"], "--limit must be at least 1",
                 id="bad-limit"),
    pytest.param(["stats", "--days", "0"], "--days must be more than 0", id="bad-days"),
    pytest.param(["stats", "--days", "nan"], "--days must be more than 0", id="nan-days"),
    # worker
    pytest.param(["worker", "--burst", "--concurrency", "0"],
                 "--concurrency must be at least 1", id="worker-concurrency"),
    pytest.param(["worker", "--duration", "soon"], "--duration: 'soon' is not a duration",
                 id="worker-duration"),
    pytest.param(["worker", "--burst", "--channels", "root:x"],
                 "the capacity must be a whole number", id="worker-channels"),
    # --app
    pytest.param(["enqueue", "demo.add", "--app", "no_such_module:app"],
                 "cannot import the app module 'no_such_module'", id="app-module-missing"),
    pytest.param(["jobs", "list", "--app", "tasks:nothing"],
                 "module 'tasks' has no attribute 'nothing'", id="app-attribute-missing"),
    pytest.param(["jobs", "list", "--app", "tasks:add"], "'tasks:add' is a Task, not an "
                 "errand.App", id="app-is-a-task"),
    pytest.param(["jobs", "list", "--app", "tasks:os"], "'tasks:os' is a module",
                 id="app-is-a-module"),
    pytest.param(["jobs", "list", "--app", ":app"], "should look like myproject.tasks:app",
                 id="app-malformed"),
    # --database-url
    pytest.param(["jobs", "list", "--database-url", UNREACHABLE],
                 "cannot connect to PostgreSQL at 127.0.0.1:1/nope", id="unreachable"),
    pytest.param(["enqueue", "demo.add", "--args", "[1]", "--database-url", UNREACHABLE],
                 "cannot connect to PostgreSQL at 127.0.0.1:1/nope", id="unreachable-enqueue"),
    pytest.param(["migrate", "--database-url", UNREACHABLE],
                 "cannot connect to PostgreSQL at 127.0.0.1:1/nope", id="unreachable-migrate"),
    pytest.param(["jobs", "list", "--database-url", "mysql://x"],
                 "unsupported database URL 'mysql://x': use sqlite:///path.db or "
                 "postgresql://user@host/dbname", id="unsupported-scheme"),
    pytest.param(["jobs", "list", "--database-url", "sqlite:////no/such/folder/errand.db"],
                 "the folder /no/such/folder does not exist", id="sqlite-folder-missing"),
    pytest.param(["jobs", "list", "--database-url", "sqlite://errand.db"],
                 "a SQLite URL looks like sqlite:///errand.db", id="sqlite-malformed"),
]


@pytest.mark.parametrize(("args", "message"), ERRORS)
def test_an_error_is_one_clear_line(project: Project, args: list[str], message: str) -> None:
    assert message in error_line(run(project, *args))


@pytest.mark.parametrize("command", [["worker", "--burst"], ["enqueue", "demo.add"]])
def test_commands_that_run_or_check_tasks_need_the_app(project: Project,
                                                       command: list[str]) -> None:
    line = error_line(run(project, *command, app=False))
    assert f"errand {command[0]} needs your tasks: pass --app module:attribute or set " \
           "ERRAND_APP" in line


def test_a_file_that_is_not_a_database(project: Project) -> None:
    (project.folder / "notes.db").write_text("not a database, just notes\n" * 100)
    url = f"sqlite:///{project.folder / 'notes.db'}"
    assert "file is not a database" in error_line(run(project, "jobs", "list",
                                                      "--database-url", url))


def test_a_password_in_the_url_is_never_shown(project: Project) -> None:
    for url in ("postgresql://postgres:s3cret@127.0.0.1:1/nope", "mysql://root:s3cret@db/x"):
        done = run(project, "jobs", "list", "--database-url", url)
        error_line(done)
        assert "s3cret" not in done.stderr


def test_a_worker_that_cannot_reach_its_database_prints_one_line(project: Project) -> None:
    line = error_line(run(project, "worker", "--burst", "--database-url", UNREACHABLE))
    assert "cannot connect to PostgreSQL at 127.0.0.1:1/nope" in line


# -- on both backends --------------------------------------------------------------------


def test_errors_on_either_backend(any_project: Project) -> None:
    project = any_project
    assert error_line(run(project, "jobs", "show", NO_SUCH_JOB)) == \
        f"errand: error: no job {NO_SUCH_JOB}"
    assert "unknown state 'bogus'" in error_line(run(project, "jobs", "list", "--state",
                                                     "bogus"))
    assert "no task named 'nope'" in error_line(run(project, "enqueue", "nope"))
    assert "--older-than: 'soon'" in error_line(run(project, "jobs", "purge", "--older-than",
                                                    "soon"))
    # A uuid that matches no job is refused, not an error of the whole command.
    done = run(project, "jobs", "cancel", NO_SUCH_JOB, "--json")
    assert done.returncode == 1
    assert json.loads(done.stdout) == {"changed": [], "refused": {NO_SUCH_JOB: "no such job"}}


def test_a_priority_out_of_range_is_one_line(tmp_path: Path,
                                             app_module: Callable[[str, str], Path],
                                             postgres_url: str) -> None:
    app_module("tasks", TASKS)
    project = Project(tmp_path, postgres_url)
    error_line(run(project, "enqueue", "demo.add", "--args", "[1]", "--priority",
                   "99999999999"))


# -- argparse ----------------------------------------------------------------------------


@pytest.mark.parametrize("args", [
    pytest.param(["jobs", "list", "--bogus"], id="unknown-option"),
    pytest.param([], id="no-command"),
    pytest.param(["frobnicate"], id="unknown-command"),
    pytest.param(["jobs"], id="no-action"),
    pytest.param(["worker", "--log-level", "loud"], id="bad-choice"),
    pytest.param(["stats", "--days", "a week"], id="not-a-number"),
])
def test_usage_errors_exit_2(project: Project, args: list[str]) -> None:
    done = project.errand(*args, app=False, url=False)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("usage: errand")
    assert "error:" in done.stderr
    assert "Traceback" not in done.stderr


def test_version_and_options_before_the_command(project: Project) -> None:
    done = project.errand("--version", app=False, url=False)
    assert (done.returncode, done.stdout.strip()) == (0, "errand 0.1.0")
    uuid = project.enqueue("demo.add", "--args", "[1]")
    # --database-url and --app given before the command name work the same.
    out = project.ok("--database-url", project.url, "--app", "tasks:app", "jobs", "list",
                     "--json", app=False, url=False)
    assert [job["uuid"] for job in json.loads(out)] == [uuid]
