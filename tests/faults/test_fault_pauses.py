"""Scenarios 7 and 8: a worker frozen by SIGSTOP, and a job that holds the GIL in C code.

A frozen supervisor stops heartbeating, so its jobs must be rescued and finished elsewhere,
and when it thaws, fencing must keep it from writing anything over them. A job busy in C
code for many leases must not be rescued: the supervisor heartbeats, not the job.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path
from types import ModuleType

import pytest
from faultkit import Fleet, Sql, gate_mark, gate_pids, process_state, starts_in_jobs

from helpers import wait_for

LEASE = 2.0
GIL_SECONDS = float(os.environ.get("ERRAND_FAULTS_GIL_SECONDS", "10"))
"""How long scenario 8's job stays in the regex engine (the issue says about 10 s)."""


@pytest.mark.parametrize("target", ["supervisor", "group"])
def test_a_stopped_worker_is_rescued_and_writes_nothing_when_it_wakes(
        tasks: ModuleType, fleet: Fleet, sql: Sql, tmp_path: Path, target: str) -> None:
    """Scenario 7: kill -STOP a worker for more than 2 leases, then kill -CONT.

    `supervisor` stops the supervisor alone: its job processes end their tries while it
    sleeps, and it finds their ends in its pipes when it wakes. `group` stops the job
    processes too: they go on where they were, after their jobs were taken over.
    """
    sleeper = fleet.start(2, lease=LEASE)
    held = tasks.gate.delay_many([(("release",), {})] * 2)
    sleeper_pids = {gate_pids(tmp_path, job.uuid, 1)[1] for job in held}
    assert sleeper_pids == {sleeper.pid}
    sleeper_id = sql.worker_ids(sleeper.pid)[0]

    if target == "group":
        os.killpg(sleeper.pid, signal.SIGSTOP)
    else:
        os.kill(sleeper.pid, signal.SIGSTOP)
    stopped_at = time.monotonic()
    wait_for(lambda: process_state(sleeper.pid) == "T")
    rescuer = fleet.start(2, lease=LEASE)
    rescuer_id = sql.worker_ids(rescuer.pid)[0]
    for job in held:  # rescued, and started again by the rescuer
        assert gate_pids(tmp_path, job.uuid, 2)[1] == rescuer.pid
    rescued_after = time.monotonic() - stopped_at
    (tmp_path / "release").write_text("")  # both tries of each job may now end
    wait_for(lambda: all(job.refresh().state == "done" for job in held))
    if target == "supervisor":  # the ends of the first tries wait in the sleeper's pipes
        wait_for(lambda: all(gate_mark(tmp_path, job.uuid, 1, "ended").exists()
                             for job in held))
    time.sleep(max(0.0, stopped_at + 2 * LEASE + 0.5 - time.monotonic()))  # hold the STOP
    assert process_state(sleeper.pid) == "T"
    stopped_for = time.monotonic() - stopped_at

    if target == "group":
        os.killpg(sleeper.pid, signal.SIGCONT)
    else:
        os.kill(sleeper.pid, signal.SIGCONT)
    wait_for(lambda: all(gate_mark(tmp_path, job.uuid, 1, "ended").exists() for job in held))

    def overwritten() -> bool:
        return any(job.refresh().result != rescuer.pid or job.logs[0].outcome != "interrupted"
                   for job in held)

    # It wakes, reads both ends, tries to write them, and is refused (fencing by try number).
    wait_for(lambda: sleeper.log().count("was no longer ours") >= 2 or overwritten(),
             timeout=20)

    for job in held:
        job.refresh()
        assert (job.state, job.attempt, job.result) == ("done", 2, rescuer.pid), job
        logs = job.logs
        assert [(log.attempt, log.outcome, log.worker) for log in logs] == \
            [(1, "interrupted", sleeper_id), (2, "success", rescuer_id)]
        assert logs[0].error_type == "WorkerLost" and logs[0].result is None
        assert logs[1].result == rescuer.pid
    inside = starts_in_jobs(tmp_path)
    assert [inside[str(job.uuid)] for job in held] == [2, 2]
    # The thawed worker is alive and back at work.
    assert sleeper.process.poll() is None
    wait_for(lambda: sql.value("SELECT state FROM errand_workers WHERE id = %s",
                               [sleeper_id]) == "running")
    rescuer.process.send_signal(signal.SIGTERM)
    assert rescuer.process.wait(timeout=30) == 0
    after = tasks.work.delay(7)
    wait_for(lambda: after.refresh().state == "done")
    assert after.logs[0].worker == sleeper_id
    print(f"\nFAULTS scenario 7 ({target}): STOP held {stopped_for:.1f} s (lease {LEASE:g} s); "
          f"both jobs rescued and restarted {rescued_after:.1f} s after STOP, done by the "
          f"rescuer; after CONT 0 results written by the stopped worker, try 1 stays interrupted")


def test_workers_of_a_frozen_host_rescue_nothing_when_they_thaw(
        tasks: ModuleType, fleet: Fleet, sql: Sql, tmp_path: Path) -> None:
    """Scenario 7 for a whole host: two workers and their job processes are stopped for
    more than 2 leases, then continued a quarter lease apart. Both are alive: no job of
    either may be rescued, so every job runs once."""
    first, second = fleet.start(2, lease=LEASE), fleet.start(2, lease=LEASE)
    held = tasks.gate.delay_many([(("release",), {})] * 4)
    holders = Counter(gate_pids(tmp_path, job.uuid, 1)[1] for job in held)
    assert holders == {first.pid: 2, second.pid: 2}
    for worker in (first, second):
        os.killpg(worker.pid, signal.SIGSTOP)
    wait_for(lambda: {process_state(w.pid) for w in (first, second)} == {"T"})
    time.sleep(2 * LEASE + 0.5)  # hold the freeze
    os.killpg(first.pid, signal.SIGCONT)
    time.sleep(LEASE / 4)  # the second one thaws a heartbeat interval later
    os.killpg(second.pid, signal.SIGCONT)
    time.sleep(LEASE)  # a lease of both alive: each heartbeats, rescue rounds run
    tries = sql.tries()
    (tmp_path / "release").write_text("")
    wait_for(lambda: all(job.refresh().state == "done" for job in held), timeout=30)
    rescued = {uuid: rows for uuid, rows in tries.items() if len(rows) > 1 or any(
        outcome == "interrupted" for _, outcome, _ in rows)}
    assert not rescued, f"jobs of a live worker rescued after the thaw: {rescued}"
    assert starts_in_jobs(tmp_path) == Counter({str(job.uuid): 1 for job in held})


def test_a_job_holding_the_gil_for_many_leases_is_not_rescued(
        tasks: ModuleType, fleet: Fleet, sql: Sql, tmp_path: Path) -> None:
    """Scenario 8: the job sits in the regex engine (C code, GIL held) for ~5 leases."""
    fleet.start(1, lease=LEASE)
    fleet.start(1, lease=LEASE)  # would rescue the job if its worker stopped heartbeating
    job = tasks.backtrack.delay(GIL_SECONDS)
    wait_for(lambda: job.refresh().finished, timeout=GIL_SECONDS * 6 + 30, interval=0.1)
    assert (job.state, job.attempt, job.retries) == ("done", 1, 0)
    assert [log.outcome for log in job.logs] == ["success"]
    assert starts_in_jobs(tmp_path)[str(job.uuid)] == 1
    assert job.result >= 2.5 * LEASE, f"the job ran only {job.result:.1f} s"
    print(f"\nFAULTS scenario 8: a job in one regex call (C code, GIL held) for "
          f"{job.result:.1f} s, lease {LEASE:g} s: 1 try, done, not rescued")
