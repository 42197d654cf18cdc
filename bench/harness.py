"""Plumbing shared by errand's side and the peers' side of the speed benchmarks.

It imports neither errand nor a peer (only the standard library and, lazily, psycopg,
which both virtualenvs have), so the same file serves `bench/*.py` in errand's venv and
`bench/peer_*.py` in the peers' venv. It provides: throw-away databases, the job
recorder (each job appends "token start-time" to a file of its process), the checks
made on those records, percentiles, RSS readings and JSON output.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO
from urllib.parse import urlsplit, urlunsplit

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
DEFAULT_POSTGRES_URL = os.environ.get(
    "BENCH_POSTGRES_URL",
    os.environ.get("ERRAND_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"))
RECORD_DIR_ENV = "BENCH_RECORD_DIR"

# One database per system, dropped and created again for every measurement. errand's is
# not called errand_bench: bench/channel_claims.py (another benchmark) owns that name.
DATABASES = {"errand": "errand_speed_bench", "pgqueuer": "pgqueuer_bench",
             "procrastinate": "procrastinate_bench"}


# -- output ----------------------------------------------------------------------------


def emit(record: dict[str, Any], stream: TextIO | None = None) -> None:
    """Print one result as one JSON line (the contract of every bench script)."""
    print(json.dumps(record), file=stream or sys.stdout, flush=True)


def note(message: str) -> None:
    """Progress for humans, on stderr, so stdout stays one JSON line per result."""
    print(f"# {message}", file=sys.stderr, flush=True)


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (p50 of 200 values is the 100th smallest)."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * pct // 100))
    return ordered[int(rank) - 1]


def load_average() -> float:
    return os.getloadavg()[0]


def python_version() -> str:
    return f"{platform.python_implementation()} {platform.python_version()}"


# -- databases ---------------------------------------------------------------------------


def postgres_url(server_url: str, database: str) -> str:
    """`server_url` pointed at another database on the same server."""
    parts = urlsplit(server_url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, ""))


def fresh_postgres(server_url: str, database: str) -> str:
    """Drop (with its sessions) and create `database`; return its URL."""
    import psycopg

    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{database}"')
    return postgres_url(server_url, database)


def drop_postgres(server_url: str, database: str) -> None:
    import psycopg

    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def postgres_version(server_url: str) -> str:
    import psycopg

    with psycopg.connect(server_url, autocommit=True) as conn:
        row = conn.execute("SHOW server_version").fetchone()
        return str(row[0]) if row else "?"


def postgres_settings(server_url: str) -> dict[str, str]:
    """The server settings that decide what a commit costs (reported, never changed)."""
    import psycopg

    names = ("fsync", "synchronous_commit", "wal_sync_method", "full_page_writes",
             "shared_buffers")
    with psycopg.connect(server_url, autocommit=True) as conn:
        return {name: str(conn.execute(f"SHOW {name}").fetchone()[0])  # type: ignore[index]
                for name in names}


def vacuum_analyze(url: str, tables: Iterable[str]) -> None:
    """What autovacuum does after a bulk load; done for every system alike."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        for table in tables:
            conn.execute(f"VACUUM ANALYZE {table}")


def scratch_folder() -> str:
    """A fresh folder for SQLite files and job records (on the disk, not in memory)."""
    return tempfile.mkdtemp(prefix="errand-speed-")


# -- the job recorder (runs inside jobs) --------------------------------------------------

_record_fd: int | None = None
_record_pid = 0


def record(token: int) -> None:
    """Append "token start-time" to this process's record file, if recording is on.

    One small O_APPEND write per job (about a microsecond, the same for every system);
    the file is opened on the first job of each process, after any fork.
    """
    global _record_fd, _record_pid
    started = time.time()
    pid = os.getpid()
    if _record_pid != pid:
        folder = os.environ.get(RECORD_DIR_ENV)
        _record_fd = None if not folder else os.open(
            os.path.join(folder, f"jobs-{pid}.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND,
            0o644)
        _record_pid = pid
    if _record_fd is not None:
        os.write(_record_fd, f"{token} {started:.6f}\n".encode())


def read_records(folder: str) -> list[tuple[int, float]]:
    """Every (token, start time) the jobs recorded in `folder`."""
    found = []
    for name in sorted(os.listdir(folder)):
        if name.startswith("jobs-") and name.endswith(".log"):
            with open(os.path.join(folder, name)) as handle:
                for line in handle:
                    token, started = line.split()
                    found.append((int(token), float(started)))
    return found


class RecordCounter:
    """Counts the jobs recorded in a folder, reading only what was appended since the last
    call (cheap enough to poll every few milliseconds during a long run)."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.offsets: dict[str, int] = {}
        self.total = 0

    def __call__(self) -> int:
        for name in os.listdir(self.folder):
            if name.startswith("jobs-") and name.endswith(".log"):
                with open(os.path.join(self.folder, name), "rb") as handle:
                    handle.seek(self.offsets.get(name, 0))
                    data = handle.read()
                complete = data.rfind(b"\n") + 1  # a line being written is counted later
                self.total += data.count(b"\n", 0, complete)
                self.offsets[name] = self.offsets.get(name, 0) + complete
        return self.total


def count_records(folder: str) -> int:
    """Jobs recorded so far (reads every file: for a one-off count)."""
    return RecordCounter(folder)()


@dataclass(frozen=True)
class Once:
    """How the recorded executions compare with the jobs enqueued (tokens 0..n-1)."""

    executions: int
    missing: int
    duplicated: int

    @property
    def ok(self) -> bool:
        return self.missing == 0 and self.duplicated == 0


def exactly_once(records: Sequence[tuple[int, float]], jobs: int) -> Once:
    counts = Counter(token for token, _ in records)
    return Once(executions=len(records),
                missing=sum(1 for token in range(jobs) if counts[token] == 0),
                duplicated=sum(1 for count in counts.values() if count > 1))


# -- processes ---------------------------------------------------------------------------


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a worker process: ours, plus `extra`, plus bench/ importable."""
    env = dict(os.environ)
    env.update(extra)
    env["PYTHONPATH"] = BENCH_DIR + (os.pathsep + env["PYTHONPATH"]
                                     if env.get("PYTHONPATH") else "")
    return env


def start(command: Sequence[str], env: dict[str, str], log: str) -> subprocess.Popen[bytes]:
    """Start a worker in its own session, its output going to `log`."""
    with open(log, "ab") as out:
        return subprocess.Popen(list(command), env=env, cwd=BENCH_DIR, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM,
         timeout: float = 30.0) -> int:
    """Signal one process we started (and its group), wait, SIGKILL it if it lingers."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return process.returncode


def wait_all(processes: Sequence[subprocess.Popen[bytes]], timeout: float,
             log: str) -> float:
    """Wait for every process to exit; return the time the last one did (time.time())."""
    deadline = time.monotonic() + timeout
    for process in processes:
        left = deadline - time.monotonic()
        try:
            process.wait(max(left, 0.001))
        except subprocess.TimeoutExpired:
            for other in processes:
                stop(other, signal.SIGKILL)
            raise SystemExit(f"workers did not finish within {timeout:.0f} s; see {log}"
                             ) from None
    ended = time.time()
    failed = [p.returncode for p in processes if p.returncode != 0]
    if failed:
        with open(log, errors="replace") as handle:
            tail = handle.read()[-3000:]
        raise SystemExit(f"a worker exited with status {failed[0]}; {log} ends:\n{tail}")
    return ended


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.005) -> float:
    """Poll `predicate()` until true; return time.time() when it was seen true."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
    return time.time()


def rss_mb(pid: int) -> float:
    """Resident set size of a process, from /proc (Linux)."""
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no VmRSS for pid {pid}")


def drain_result(jobs: int, started: float, first_start: float, ended: float,
                 once: Once) -> dict[str, Any]:
    """The figures of an end-to-end drain, the same for every system.

    `jobs_per_s` counts from the first job's start to the last worker's exit (or, for a
    worker with no exit-when-empty mode, the moment every job was seen done), so the
    interpreter start-up and imports of each system are left out; `wall_jobs_per_s`
    counts from the spawn of the workers.
    """
    return {
        "jobs_per_s": round(jobs / (ended - first_start), 1),
        "wall_jobs_per_s": round(jobs / (ended - started), 1),
        "seconds": round(ended - first_start, 3),
        "startup_s": round(first_start - started, 3),
        "executions": once.executions,
        "missing": once.missing,
        "duplicated": once.duplicated,
        "exactly_once": once.ok,
    }


def latency_result(enqueued_at: dict[int, float],
                   records: Sequence[tuple[int, float]]) -> dict[str, Any]:
    """Enqueue-to-start percentiles (ms) from the enqueuer's and the jobs' clocks."""
    delays = [(started - enqueued_at[token]) * 1000.0 for token, started in records]
    return {
        "p50_ms": round(percentile(delays, 50), 2),
        "p95_ms": round(percentile(delays, 95), 2),
        "p99_ms": round(percentile(delays, 99), 2),
        "max_ms": round(max(delays), 2),
        "jobs": len(delays),
    }


# -- the peers' command line -------------------------------------------------------------


def peer_arguments(description: str, workloads: Sequence[str]) -> Any:
    """The arguments every `peer_*.py` takes (errand's scripts pass them through)."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("workload", choices=workloads)
    parser.add_argument("--backend", choices=("postgres", "sqlite"), required=True)
    parser.add_argument("--jobs", type=int, required=True)
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL)
    parser.add_argument("--interval", type=float, default=0.02,
                        help="latency: seconds between two enqueues")
    parser.add_argument("--processes", type=int, default=2,
                        help="worker processes (end_to_end, latency)")
    return parser.parse_args()


def pace(count: int, interval: float, enqueue: Any) -> dict[int, float]:
    """Call `enqueue(token)` for tokens 0..count-1, `interval` apart (on an absolute
    schedule, so a slow call does not push the rest back); return when each was called."""
    enqueued_at: dict[int, float] = {}
    begin = time.monotonic()
    for token in range(count):
        delay = begin + token * interval - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        enqueued_at[token] = time.time()
        enqueue(token)
    return enqueued_at


def warm_up(folder: str, first_token: int, processes: int, enqueue: Any,
            interval: float = 0.02, limit: int = 200) -> None:
    """Enqueue jobs one by one (tokens from `first_token`) until `processes` distinct
    processes have each run one, so every worker is up before the clock starts."""
    token = first_token
    while True:
        enqueue(token)
        wait_for(lambda t=token: any(r[0] == t for r in read_records(folder)), 60.0,
                 f"warm-up job {token}")
        pids = {name for name in os.listdir(folder) if name.startswith("jobs-")}
        if len(pids) >= processes:
            return
        token += 1
        if token - first_token >= limit:
            raise SystemExit(f"only {len(pids)} of {processes} worker processes ran a "
                             f"warm-up job out of {limit}")
        time.sleep(interval)


def wait_recorded(folder: str, jobs: int, timeout: float = 120.0) -> float:
    """Wait until tokens 0..jobs-1 have all been recorded (warm-up tokens are >= jobs)."""
    return wait_for(lambda: len({t for t, _ in read_records(folder) if t < jobs}) >= jobs,
                    timeout, f"{jobs} jobs to run", interval=0.02)
