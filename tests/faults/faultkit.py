"""Tools of the fault battery: the tasks module, real worker processes, and direct SQL.

Every worker runs in its own session (process group), so teardown can SIGKILL a worker and
any job process it left behind, even after the supervisor itself was killed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg

from helpers import ERRAND, wait_for

SCALE = float(os.environ.get("ERRAND_FAULTS_SCALE", "1"))
"""Size of the big scenarios relative to the issue's numbers (2,000 jobs, 500 good jobs).

The issue's sizes fit the CI budget on 2 cores (this part of the battery takes about two
minutes, scenario 10's kills dominate), so 1 is the default; `ERRAND_FAULTS_SCALE=0.25`
runs a quarter of the jobs for a quicker local loop, a larger value soaks.
"""


def scaled(count: int) -> int:
    return max(1, round(count * SCALE))


TASKS = '''
import ctypes
import math
import os
import re
import resource
import signal
import subprocess
import time
from pathlib import Path

import errand

app = errand.App()
DIR = Path(os.environ["ERRAND_TEST_DIR"])
STARTS = DIR / "starts.log"

if os.environ.get("ERRAND_FAULTS_SLOW_FORK"):
    # A freshly forked job process that the scheduler does not run for a while (a loaded
    # host): the supervisor goes on, and may die, before the child's first line runs.
    os.register_at_fork(after_in_child=lambda: time.sleep(
        float(os.environ["ERRAND_FAULTS_SLOW_FORK"])))

if os.environ.get("ERRAND_FAULTS_GIVE_BACK_STORM"):
    # Every job process of this worker is asked to give its held jobs back (SIGUSR1) at
    # random moments, unasked by the supervisor and far more often than it ever asks: each
    # answer, whenever it lands, must keep the supervisor's books right.
    import random
    import threading

    def give_back_storm(interval):
        children = f"/proc/{os.getpid()}/task/{os.getpid()}/children"
        while True:
            time.sleep(random.uniform(0, interval))
            with open(children) as handle:
                pids = [int(pid) for pid in handle.read().split()]
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGUSR1)
                except ProcessLookupError:
                    pass

    threading.Thread(target=give_back_storm, daemon=True,
                     args=(float(os.environ["ERRAND_FAULTS_GIVE_BACK_STORM"]),)).start()


def record(tag=""):
    """Append `uuid attempt supervisor-pid pid` to starts.log: one line per real start."""
    job = errand.current_job()
    line = f"{job.uuid} {job.attempt} {os.getppid()} {os.getpid()} {tag}\\n".encode()
    fd = os.open(STARTS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


@app.task(retry_pattern={1: 0})
def work(i, seconds=0.0):
    record()
    if seconds:
        time.sleep(seconds)
    return i


@app.task(retry_pattern={1: 0})
def gate(name):
    """Runs until the file `name` appears; returns the pid of the supervisor that ran it."""
    job = errand.current_job()
    record(name)
    (DIR / f"{job.uuid}.{job.attempt}.started").write_text(f"{os.getpid()} {os.getppid()}")
    while not (DIR / name).exists():
        time.sleep(0.01)
    (DIR / f"{job.uuid}.{job.attempt}.ended").write_text(f"{os.getpid()} {os.getppid()}")
    return os.getppid()


def backtrack_length(seconds):
    """The `a` count making `(a+)+$` fail after about `seconds` here (it doubles per `a`)."""
    length = 16
    while True:
        began = time.perf_counter()
        re.match(r"(a+)+$", "a" * length + "b")
        took = time.perf_counter() - began
        if took >= 0.25:
            return length + round(math.log2(seconds / took))
        length += 1


@app.task(retry_pattern={1: 0})
def backtrack(seconds):
    """Holds the GIL in the regex engine (C code), in one call, for about `seconds`."""
    record()
    length = backtrack_length(seconds)  # measured in this process, just before the call
    started = time.monotonic()
    re.match(r"(a+)+$", "a" * length + "b")
    return time.monotonic() - started


@app.task
def terminate_a_helper():
    """Start a program and stop it the polite way, as a job cleaning up after itself does."""
    record()
    helper = subprocess.Popen(["sleep", "30"])
    helper.terminate()
    try:
        return helper.wait(timeout=2)
    except subprocess.TimeoutExpired:
        helper.kill()
        helper.wait()
        return "SIGTERM ignored"


@app.task(max_retries=2, retry_pattern={1: 0})
def poison(how):
    record(how)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core files from the crashes
    if how == "abort":
        os.abort()
    if how == "segv":
        ctypes.string_at(0)
    if how == "exit":
        os._exit(3)
    if how == "kill":  # as the kernel's OOM killer would
        os.kill(os.getpid(), signal.SIGKILL)
    return how
'''


# -- processes -------------------------------------------------------------------------


def alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def children_of(pid: int) -> list[int]:
    """Live processes whose parent is `pid` (read from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry))
    return found


def process_state(pid: int) -> str:
    """The one-letter state of `/proc/pid/stat` (R, S, T for stopped, Z, ...)."""
    with open(f"/proc/{pid}/stat") as handle:
        return handle.read().rsplit(")", 1)[1].split()[0]


@dataclass
class Worker:
    process: subprocess.Popen[bytes]
    log_path: Path
    concurrency: int

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


class Fleet:
    """`errand worker` processes of one test; whatever is left is SIGKILLed at teardown."""

    def __init__(self, tasks: ModuleType, folder: Path) -> None:
        self.tasks = tasks
        self.folder = folder
        self.workers: list[Worker] = []

    def start(self, concurrency: int, *args: str, lease: float = 2.0,
              env: dict[str, str] | None = None, ready: bool = True) -> Worker:
        log_path = self.folder / f"worker-{len(self.workers)}.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [*ERRAND, "worker", "--app", f"{self.tasks.__name__}:app", "--database-url",
                 self.tasks.app.database_url, "--concurrency", str(concurrency), *args],
                cwd=self.folder, stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, "ERRAND_LEASE": str(lease), **(env or {})},
                start_new_session=True)
        worker = Worker(process, log_path, concurrency)
        self.workers.append(worker)
        if ready:
            self.wait_ready(worker)
        return worker

    def wait_ready(self, worker: Worker, timeout: float = 30.0) -> None:
        """Until the worker is registered and all its job processes are forked."""
        sql = Sql(self.tasks.app.database_url)

        def ready() -> bool:
            assert worker.process.poll() is None, worker.log()
            return len(children_of(worker.pid)) >= worker.concurrency \
                and bool(sql.worker_ids(worker.pid))
        wait_for(ready, timeout=timeout)

    def cleanup(self) -> None:
        for worker in self.workers:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(worker.pid, signal.SIGKILL)  # the worker and its job processes
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.process.wait(timeout=10)


# -- the database, read directly -----------------------------------------------------


class Sql:
    """Plain SQL on the test's database, outside errand (the ground truth of the checks)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.sqlite = url.startswith("sqlite:")

    def rows(self, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        if self.sqlite:
            conn = sqlite3.connect(self.url[len("sqlite:///"):], timeout=60)
            try:
                return conn.execute(query.replace("%s", "?"), tuple(params)).fetchall()
            finally:
                conn.close()
        with psycopg.connect(self.url, autocommit=True) as pg:
            return pg.execute(query, tuple(params)).fetchall()  # type: ignore[arg-type]

    def value(self, query: str, params: Sequence[Any] = ()) -> Any:
        return self.rows(query, params)[0][0]

    def states(self) -> Counter[str]:
        return Counter({state: count for state, count in
                        self.rows("SELECT state, count(*) FROM errand_jobs GROUP BY state")})

    def count(self, state: str) -> int:
        return int(self.value("SELECT count(*) FROM errand_jobs WHERE state = %s", [state]))

    def tries(self) -> dict[str, list[tuple[int, str | None, str | None]]]:
        """Per job uuid: its try rows (attempt, outcome, worker id), oldest first."""
        found: dict[str, list[tuple[int, str | None, str | None]]] = {
            str(uuid): [] for (uuid,) in self.rows("SELECT uuid FROM errand_jobs")}
        for uuid, attempt, outcome, worker in self.rows(
                "SELECT j.uuid, a.attempt, a.outcome, a.worker_id FROM errand_attempts a "
                "JOIN errand_jobs j ON j.id = a.job_id ORDER BY j.id, a.attempt"):
            found[str(uuid)].append((attempt, outcome, worker))
        return found

    def worker_ids(self, pid: int) -> list[str]:
        return [row[0] for row in
                self.rows("SELECT id FROM errand_workers WHERE pid = %s", [pid])]


def starts_in_jobs(folder: Path) -> Counter[str]:
    """Per job uuid: how many times the job's own code began (lines it appended)."""
    path = folder / "starts.log"
    if not path.exists():
        return Counter()
    return Counter(line.split()[0] for line in path.read_text().splitlines() if line)


def start_lines(folder: Path) -> list[list[str]]:
    path = folder / "starts.log"
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def wait_all_finished(sql: Sql, total: int, timeout: float) -> float:
    """Wait until `total` jobs are in a final state; return how long it took."""
    began = time.monotonic()
    wait_for(lambda: sql.value("SELECT count(*) FROM errand_jobs WHERE state IN "
                               "('done', 'failed', 'cancelled')") >= total,
             timeout=timeout, interval=0.1)
    return time.monotonic() - began


def gate_mark(folder: Path, uuid: object, attempt: int, what: str = "started") -> Path:
    """The file a `gate` job writes when try `attempt` starts (or ends)."""
    return folder / f"{uuid}.{attempt}.{what}"


def gate_pids(folder: Path, uuid: object, attempt: int) -> tuple[int, int]:
    """(job process, supervisor) pids of a `gate` try that started."""
    path = gate_mark(folder, uuid, attempt)
    wait_for(lambda: path.exists() and len(path.read_text().split()) == 2)
    job_pid, supervisor_pid = path.read_text().split()
    return int(job_pid), int(supervisor_pid)
