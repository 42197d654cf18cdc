"""A small errand project for the CLI acceptance tests: a tasks module in a folder, a database.

`Project.errand(...)` runs the real `errand` command in that folder, as a user would, with
`--app tasks:app --database-url URL` added; the `ERRAND_*` variables of the shell running the
tests are blanked so they cannot change what a test sees.
"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import uuid as uuid_module
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from helpers import run_errand

TASKS = """
    import os
    import time

    import errand

    app = errand.App()


    @app.task(name="demo.add")
    def add(a, b=0):
        return a + b


    @app.task(name="demo.boom")
    def boom(message="kaboom"):
        raise ValueError(message)


    @app.task(name="mail.send", channel="root.mail")
    def send(to, subject=""):
        return f"sent to {to}"


    @app.task(name="demo.report")
    def report(lines):
        errand.current_job().set_progress(100, f"wrote {lines} lines")
        return lines


    @app.task(name="demo.wait_for_file")
    def wait_for_file(path):
        job = errand.current_job()
        job.set_progress(40, "halfway there")
        while not os.path.exists(path) and not job.should_stop():
            time.sleep(0.01)
        job.set_progress(100, "all done")
        return "finished"
"""

# Blank, not absent: errand treats an empty ERRAND_* variable as unset, and rich an empty
# FORCE_COLOR / TTY_* as "look at the stream" (a pipe here: plain, wide output).
CLEAN_ENV = {name: "" for name in (
    "ERRAND_APP", "ERRAND_DATABASE_URL", "ERRAND_CHANNELS", "ERRAND_NO_DELAY",
    "ERRAND_CONCURRENCY", "ERRAND_LEASE", "ERRAND_SHUTDOWN_GRACE", "ERRAND_POLL_INTERVAL",
    "ERRAND_MAX_PAYLOAD", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE")}

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def plain(text: str) -> str:
    """Terminal output without its colour and cursor codes."""
    return ANSI.sub("", text)


def line_with(text: str, needle: str) -> str:
    """The one line of `text` that contains `needle`."""
    lines = [line for line in text.splitlines() if needle in line]
    assert len(lines) == 1, f"expected one line with {needle!r} in:\n{text}"
    return lines[0]


@dataclass
class Project:
    folder: Path
    url: str

    def errand(self, *args: str, app: bool = True, url: bool = True,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        extra = []
        if app:
            extra += ["--app", "tasks:app"]
        if url:
            extra += ["--database-url", self.url]
        return run_errand(*args, *extra, cwd=self.folder, env={**CLEAN_ENV, **(env or {})})

    def ok(self, *args: str, **options: Any) -> str:
        """Run a command that must succeed; its standard output."""
        done = self.errand(*args, **options)
        assert done.returncode == 0, (
            f"errand {' '.join(args)} exited {done.returncode}\nstdout:\n{done.stdout}\n"
            f"stderr:\n{done.stderr}")
        assert "Traceback" not in done.stderr, done.stderr
        return done.stdout

    def json(self, *args: str, **options: Any) -> Any:
        return json.loads(self.ok(*args, "--json", **options))

    def enqueue(self, name: str, *options: str) -> str:
        out = self.ok("enqueue", name, *options)
        return str(uuid_module.UUID(out.strip()))

    def job(self, uuid: str) -> dict[str, Any]:
        found: dict[str, Any] = self.json("jobs", "show", uuid)
        return found

    def states(self) -> dict[str, str]:
        return {job["uuid"]: job["state"] for job in self.json("jobs", "list")}

    def force_state(self, uuid: str, state: str) -> None:
        """Put a job in `state` directly in the database, for states the CLI cannot reach
        yet (`wait_dependencies` needs the dependency graph, SPEC section 6)."""
        sql = "UPDATE errand_jobs SET state = {p} WHERE uuid = {p}"
        if self.url.startswith("sqlite:"):
            with sqlite3.connect(self.url.removeprefix("sqlite:///")) as conn:
                changed = conn.execute(sql.format(p="?"), (state, uuid)).rowcount
        else:
            with psycopg.connect(self.url, autocommit=True) as conn:
                changed = conn.execute(sql.format(p="%s"), (state, uuid)).rowcount
        assert changed == 1


@dataclass
class Processed:
    """Jobs enqueued through the CLI, then run by one `errand worker --burst`."""

    project: Project
    add: str           # demo.add(1, 2) on root: done, result 3
    mail: str          # mail.send on root.mail (the task's default): done
    bulk: str          # mail.send on root.mail.bulk: done
    heavy: str         # demo.add(5, 5) on root.heavy: done, result 10
    mailbox: str       # demo.add(0, 0) on root.mailbox (not under root.mail): done
    boom: str          # demo.boom(): failed, ValueError: kaboom
    later: str         # demo.add(7) on root, eta in an hour: pending
    heavy_later: str   # demo.add(8) on root.heavy, eta in an hour: pending
    worker_output: str

    RAN = 6  # jobs the worker ran


def enqueue_and_run(project: Project) -> Processed:
    uuids = {
        "add": project.enqueue("demo.add", "--args", "[1, 2]"),
        "mail": project.enqueue("mail.send", "--args", '["a@example.com"]',
                                "--kwargs", '{"subject": "Hi"}'),
        "bulk": project.enqueue("mail.send", "--args", '["b@example.com"]',
                                "--channel", "root.mail.bulk"),
        "heavy": project.enqueue("demo.add", "--args", "[5, 5]", "--channel", "root.heavy"),
        "mailbox": project.enqueue("demo.add", "--args", "[0, 0]", "--channel", "root.mailbox"),
        "boom": project.enqueue("demo.boom"),
        "later": project.enqueue("demo.add", "--args", "[7]", "--eta", "3600"),
        "heavy_later": project.enqueue("demo.add", "--args", "[8]", "--eta", "1h",
                                       "--channel", "root.heavy"),
    }
    done = project.errand("worker", "--burst", "--concurrency", "2")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    return Processed(project, **uuids, worker_output=done.stderr)
