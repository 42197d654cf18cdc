#!/usr/bin/env python3
"""Chaos soak: errand workers under kill -9 and PostgreSQL crashes; prints one JSON verdict.

    .venv/bin/python scripts/chaos.py                       # 10,000 jobs, a minute of chaos
    .venv/bin/python scripts/chaos.py --jobs 500 --minutes 0.3

It starts a private PostgreSQL cluster (tests/faults/pg_cluster.py: initdb in a temporary
folder, a free port, removed at the end), several `errand worker` processes, and enqueues
short jobs that each append `uuid attempt pid` to a file (O_APPEND) when they start. Then, for
`--minutes`: every `--kill-every` seconds it SIGKILLs a random worker (its job processes die
with it) and starts a new one; at evenly spaced moments it restarts PostgreSQL
(`pg_ctl stop -m immediate`, `--down` seconds, `pg_ctl start`), `--restarts` times. A worker
that exits on its own is restarted too, and counted. Then it waits (up to `--deadline`
seconds) for every job to end and prints one JSON line.

Verdict "pass": every job is `done`, every job that started more than once has an
`interrupted` first try (a kill or a restart explains it), and no worker exited on its own
(a lost connection must never end a worker). Exit code 0 on pass, 1 on fail.
`duplicates_by_first_try` says why those first tries were interrupted (WorkerLost: rescued
after its worker was killed; ClaimLost: put back by a live worker), and `warnings` flags
ClaimLost duplicates: a try that really ran and was released instead of written.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "faults"))

from pg_cluster import PgCluster  # noqa: E402  (a test helper, found through sys.path)

TASKS = '''
import os
import time

import errand

app = errand.App()
STARTS = os.environ["CHAOS_STARTS"]


@app.task(max_retries=0, retry_pattern={1: 0})
def work(i, seconds):
    job = errand.current_job()
    line = f"{job.uuid} {job.attempt} {os.getpid()}\\n".encode()
    fd = os.open(STARTS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
    time.sleep(seconds)
    return i
'''


@dataclass
class Worker:
    number: int
    process: subprocess.Popen[bytes]
    log: Path
    ready: bool = False
    killed: bool = False

    def is_ready(self) -> bool:
        if not self.ready:
            with contextlib.suppress(OSError):
                self.ready = b" ready: " in self.log.read_bytes()
        return self.ready


class Soak:
    def __init__(self, args: argparse.Namespace, folder: Path, cluster: PgCluster) -> None:
        self.args = args
        self.folder = folder
        self.cluster = cluster
        self.url = ""
        self.workers: list[Worker] = []
        self.started = 0
        self.kills = 0
        self.restarts = 0
        self.unexpected_exits: list[dict[str, Any]] = []
        self.start_failures = 0
        self.env = {**os.environ, "CHAOS_STARTS": str(folder / "starts.log"),
                    "ERRAND_LEASE": str(args.lease), "PYTHONUNBUFFERED": "1"}

    # -- workers ---------------------------------------------------------------------

    def spawn(self) -> Worker:
        log = self.folder / f"worker-{self.started}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "errand", "worker", "--app", "chaos_tasks:app",
                 "--database-url", self.url, "--concurrency", str(self.args.concurrency)],
                cwd=self.folder, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)
        worker = Worker(self.started, process, log)
        self.started += 1
        self.workers.append(worker)
        return worker

    def live(self) -> list[Worker]:
        return [w for w in self.workers if w.process.poll() is None and not w.killed]

    def tend(self) -> None:
        """Replace workers that ended: killed ones (expected) and any that exited alone."""
        for worker in list(self.workers):
            code = worker.process.poll()
            if code is None or worker.killed:
                continue
            self.workers.remove(worker)
            if worker.is_ready():
                tail = worker.log.read_text(errors="replace").splitlines()[-3:]
                self.unexpected_exits.append({"worker": worker.number, "code": code,
                                              "log_tail": tail})
            else:
                self.start_failures += 1  # could not start (the database was down)
            self.spawn()
        for worker in [w for w in self.workers if w.killed]:
            if worker.process.poll() is not None:
                self.workers.remove(worker)

    def kill_one(self, rng: random.Random) -> None:
        candidates = [w for w in self.live() if w.is_ready()]
        if not candidates:
            return
        victim = rng.choice(candidates)
        victim.killed = True
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim.process.pid, signal.SIGKILL)  # job processes die with it
        self.kills += 1
        self.spawn()

    def stop_all(self) -> None:
        for worker in self.workers:
            if worker.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 40
        for worker in self.workers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.process.wait(timeout=max(0.1, deadline - time.monotonic()))

    def kill_all(self) -> None:
        for worker in self.workers:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(worker.process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.process.wait(timeout=10)

    # -- the database ----------------------------------------------------------------

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.url, autocommit=True, connect_timeout=5,
                             application_name="chaos") as conn:
            return conn.execute(sql).fetchall()  # type: ignore[arg-type]

    def unfinished(self) -> int | None:
        try:
            rows = self.query("SELECT count(*) FROM errand_jobs "
                              "WHERE state NOT IN ('done', 'failed', 'cancelled')")
        except psycopg.OperationalError:
            return None  # restarting
        return int(rows[0][0])


def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    folder = Path(tempfile.mkdtemp(prefix="errand-chaos-"))
    cluster = PgCluster()
    soak = Soak(args, folder, cluster)
    began = time.monotonic()
    try:
        cluster.start()
        soak.url = cluster.create_database("chaos")
        (folder / "chaos_tasks.py").write_text(TASKS)
        sys.path.insert(0, str(folder))
        os.environ["CHAOS_STARTS"] = soak.env["CHAOS_STARTS"]
        import chaos_tasks  # type: ignore[import-not-found]

        app = chaos_tasks.app
        app.use_database(soak.url)
        app.migrate()
        slots = args.workers * args.concurrency
        seconds = args.job_seconds if args.job_seconds is not None else \
            max(0.0, args.minutes * 60 * slots / args.jobs)
        for first in range(0, args.jobs, 1000):
            count = min(1000, args.jobs - first)
            chaos_tasks.work.delay_many([((first + i, seconds), {}) for i in range(count)])
        app.close()

        for _ in range(args.workers):
            soak.spawn()
        deadline = time.monotonic() + 60
        while not all(w.is_ready() for w in soak.workers):
            if time.monotonic() > deadline:
                raise RuntimeError("workers did not start")
            soak.tend()
            time.sleep(0.05)

        chaos_began = time.monotonic()
        window = args.minutes * 60
        kill_times = [chaos_began + args.kill_every * (k + 1)
                      for k in range(int(window // args.kill_every))]
        restart_times = [chaos_began + window * (k + 1) / (args.restarts + 1)
                         for k in range(args.restarts)]
        while kill_times or restart_times:
            now = time.monotonic()
            if restart_times and now >= restart_times[0]:
                restart_times.pop(0)
                cluster.restart(down_for=args.down, mode="immediate")
                soak.restarts += 1
            elif kill_times and now >= kill_times[0]:
                kill_times.pop(0)
                soak.kill_one(rng)
            soak.tend()
            time.sleep(0.05)
        left_after_chaos = soak.unfinished()

        deadline = time.monotonic() + args.deadline
        while True:
            soak.tend()
            left = soak.unfinished()
            if left == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.25)
        drained = time.monotonic() - began
        return verdict(soak, args, seconds, left_after_chaos, drained)
    finally:
        soak.kill_all()
        cluster.destroy()
        if args.keep:
            print(f"kept {folder}", file=sys.stderr)
        else:
            shutil.rmtree(folder, ignore_errors=True)


def verdict(soak: Soak, args: argparse.Namespace, seconds: float,
            left_after_chaos: int | None, duration: float) -> dict[str, Any]:
    states = Counter({state: count for state, count in
                      soak.query("SELECT state, count(*) FROM errand_jobs GROUP BY state")})
    tries: dict[str, list[tuple[int, str | None, str | None]]] = {}
    for uuid, attempt, outcome, error_type in soak.query(
            "SELECT j.uuid, a.attempt, a.outcome, a.error_type FROM errand_attempts a "
            "JOIN errand_jobs j ON j.id = a.job_id ORDER BY j.id, a.attempt"):
        tries.setdefault(str(uuid), []).append((attempt, outcome, error_type))
    starts_file = soak.folder / "starts.log"
    starts = Counter(line.split()[0] for line in
                     starts_file.read_text().splitlines() if line) if starts_file.exists() \
        else Counter()
    duplicates = [uuid for uuid, count in starts.items() if count > 1]
    unexplained = [uuid for uuid in duplicates
                   if not tries.get(uuid) or tries[uuid][0][1] != "interrupted"]
    # Why the first try of each duplicate was interrupted: WorkerLost = rescued after a kill;
    # ClaimLost = put back by its own worker as a claim it never heard of, although it ran.
    first_try_errors = Counter(str(tries[uuid][0][2]) for uuid in duplicates if tries.get(uuid))
    warnings = []
    if first_try_errors.get("ClaimLost"):
        warnings.append(f"{first_try_errors['ClaimLost']} job(s) ran twice after their "
                        "worker released a try that had run (ClaimLost) instead of writing "
                        "its end")
    soak.stop_all()
    reasons = []
    if states.get("done", 0) != args.jobs:
        reasons.append(f"not every job is done: {dict(states)}")
    if unexplained:
        reasons.append(f"{len(unexplained)} duplicate(s) without an interrupted first try")
    if soak.unexpected_exits:
        reasons.append(f"{len(soak.unexpected_exits)} worker(s) exited on their own")
    return {
        "jobs": args.jobs,
        "done": states.get("done", 0),
        "failed": states.get("failed", 0),
        "other_states": {k: v for k, v in states.items() if k not in ("done", "failed")},
        "jobs_with_1_start": sum(1 for count in starts.values() if count == 1),
        "jobs_with_2plus_starts": len(duplicates),
        "jobs_never_started": args.jobs - len(starts),
        "max_starts": max(starts.values(), default=0),
        "duplicates_unexplained": len(unexplained),
        "duplicates_by_first_try": dict(first_try_errors),
        "tries_interrupted": sum(1 for rows in tries.values() for row in rows
                                 if row[1] == "interrupted"),
        "kills": soak.kills,
        "restarts": soak.restarts,
        "worker_exits_unexpected": len(soak.unexpected_exits),
        "worker_start_failures": soak.start_failures,
        "workers_started": soak.started,
        "jobs_left_after_chaos": left_after_chaos,
        "job_seconds": round(seconds, 4),
        "duration": round(duration, 1),
        "settings": {"workers": args.workers, "concurrency": args.concurrency,
                     "minutes": args.minutes, "kill_every": args.kill_every,
                     "down": args.down, "lease": args.lease, "seed": args.seed},
        "verdict": "pass" if not reasons else "fail",
        "reasons": reasons,
        "warnings": warnings,
        "first_unexpected_exit": soak.unexpected_exits[0] if soak.unexpected_exits else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--minutes", type=float, default=1.0, help="length of the chaos")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--kill-every", type=float, default=3.0, help="seconds between kills")
    parser.add_argument("--restarts", type=int, default=2, help="PostgreSQL crash-restarts")
    parser.add_argument("--down", type=float, default=2.0,
                        help="seconds PostgreSQL stays down at each restart")
    parser.add_argument("--lease", type=float, default=10.0, help="ERRAND_LEASE of workers")
    parser.add_argument("--job-seconds", type=float, default=None,
                        help="sleep of each job (default: enough to keep every job "
                             "process busy through the chaos)")
    parser.add_argument("--deadline", type=float, default=600.0,
                        help="seconds to wait for every job after the chaos")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()
    if args.seed is None:
        args.seed = random.randrange(1 << 30)
    result = run(args)
    print(json.dumps(result))
    return 0 if result["verdict"] == "pass" else 1


if __name__ == "__main__":
    sys.exit(main())
