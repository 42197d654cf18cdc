"""Scenarios 2, 3 and 4: a worker killed with SIGKILL, its supervisor alone killed, SIGTERM.

Real `errand worker` processes and real signals, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path
from types import ModuleType

import pytest
from faultkit import (
    Fleet,
    Sql,
    alive,
    children_of,
    gate_pids,
    start_lines,
    starts_in_jobs,
    wait_all_finished,
)

from helpers import wait_for

LEASE = 2.0


def test_a_killed_workers_job_is_done_elsewhere_within_two_leases(
        tasks: ModuleType, fleet: Fleet, sql: Sql, tmp_path: Path) -> None:
    """Scenario 2: kill -9 a worker mid-job."""
    victim = fleet.start(2, lease=LEASE)
    survivor = fleet.start(2, lease=LEASE)
    held = tasks.gate.delay_many([(("release",), {})] * 4)
    supervisors = {job.uuid: gate_pids(tmp_path, job.uuid, 1)[1] for job in held}
    assert Counter(supervisors.values()) == {victim.pid: 2, survivor.pid: 2}
    doomed = [job for job in held if supervisors[job.uuid] == victim.pid]
    others = tasks.work.delay_many([((i,), {}) for i in range(20)])  # queued behind the gates
    victim_id, survivor_id = sql.worker_ids(victim.pid)[0], sql.worker_ids(survivor.pid)[0]
    job_processes = children_of(victim.pid)

    victim.process.kill()
    killed_at = time.monotonic()
    victim.process.wait(timeout=10)
    wait_for(lambda: not any(alive(pid) for pid in job_processes), timeout=2)
    (tmp_path / "release").write_text("")  # the survivor's gates, and the retries, may end

    wait_for(lambda: all(job.refresh().state == "done" for job in doomed), timeout=30)
    took = time.monotonic() - killed_at
    wait_all_finished(sql, len(held) + len(others), timeout=30)
    assert took <= 2 * LEASE, f"rescued and done {took:.2f} s after the kill"

    tries = sql.tries()
    inside = starts_in_jobs(tmp_path)
    for job in doomed:
        assert tries[str(job.uuid)] == [(1, "interrupted", victim_id),
                                        (2, "success", survivor_id)]
        assert inside[str(job.uuid)] == 2
        assert job.result == survivor.pid and job.attempt == 2
        assert job.logs[0].error_type == "WorkerLost"
    for job in [*held, *others]:
        if job not in doomed:
            assert tries[str(job.uuid)] == [(1, "success", survivor_id)], job
            assert inside[str(job.uuid)] == 1
    assert sql.states() == Counter(done=len(held) + len(others))
    assert survivor.process.poll() is None
    print(f"\nFAULTS scenario 2: done on the survivor {took:.2f} s after kill -9 "
          f"(lease {LEASE:g} s); starts of its jobs {[inside[str(j.uuid)] for j in doomed]}, "
          f"of the other {len(held) + len(others) - len(doomed)} jobs: 1 each")


def test_job_processes_die_with_their_killed_supervisor(
        tasks: ModuleType, fleet: Fleet, sql: Sql, tmp_path: Path) -> None:
    """Scenario 3: kill -9 the supervisor only (not its process group)."""
    worker = fleet.start(4, lease=LEASE)
    held = tasks.gate.delay_many([(("never",), {})] * 2)
    busy = [gate_pids(tmp_path, job.uuid, 1)[0] for job in held]
    spinning = tasks.backtrack.delay(3600)  # in the regex engine, longer than the test
    wait_for(lambda: len(start_lines(tmp_path)) == 3)
    job_processes = children_of(worker.pid)
    assert len(job_processes) == 4 and set(busy) < set(job_processes)

    os.kill(worker.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    wait_for(lambda: not any(alive(pid) for pid in job_processes), timeout=10, interval=0.005)
    took = time.monotonic() - killed_at
    assert took < 2.0, f"job processes outlived their supervisor by {took:.2f} s"
    assert spinning.refresh().state in ("enqueued", "started")  # no other worker rescues
    print(f"\nFAULTS scenario 3: 4 job processes (2 waiting, 1 in C code, 1 idle) gone "
          f"{took * 1000:.0f} ms after kill -9 of the supervisor")


@pytest.mark.parametrize("target", ["supervisor", "group"])
def test_sigterm_lets_short_jobs_finish_and_leaves_queued_jobs_alone(
        tasks: ModuleType, fleet: Fleet, sql: Sql, tmp_path: Path, target: str) -> None:
    """Scenario 4, first half: running jobs shorter than the grace finish; exit code 0.

    `group` signals the job processes too, as systemd (KillMode=control-group) and Ctrl-C
    in a terminal do: they must leave the decision to their supervisor.
    """
    worker = fleet.start(4, lease=LEASE)
    running = tasks.work.delay_many([((i, 1.5), {}) for i in range(4)])
    wait_for(lambda: len(start_lines(tmp_path)) == 4)
    queued = tasks.work.delay_many([((i,), {}) for i in range(10)])
    assert [job.refresh().state for job in running] == ["started"] * 4

    if target == "group":
        os.killpg(worker.pid, signal.SIGTERM)
    else:
        worker.process.send_signal(signal.SIGTERM)
    signalled_at = time.monotonic()
    code = worker.process.wait(timeout=30)
    took = time.monotonic() - signalled_at
    assert code == 0, worker.log()

    tries = sql.tries()
    for job in running:
        job.refresh()
        assert (job.state, job.attempt, job.result) == ("done", 1, job.args[0])
        assert [row[1] for row in tries[str(job.uuid)]] == ["success"]
    for job in queued:
        job.refresh()
        assert (job.state, job.attempt, job.retries) == ("pending", 0, 0)
        assert tries[str(job.uuid)] == []
    assert sql.value("SELECT state FROM errand_workers WHERE pid = %s", [worker.pid]) \
        == "stopped"
    print(f"\nFAULTS scenario 4a ({target}): 4 jobs of 1.5 s finished, worker exited 0 "
          f"{took:.2f} s after SIGTERM; 10 queued jobs untouched (attempt 0)")


# Job processes asked for their held jobs back every millisecond or so, at random moments.
STORM = {"ERRAND_FAULTS_GIVE_BACK_STORM": "0.002"}


@pytest.mark.parametrize("env", [{}, STORM], ids=["", "give-back-storm"])
def test_sigterm_gives_back_jobs_claimed_ahead_untouched(
        tasks: ModuleType, fleet: Fleet, sql: Sql, tmp_path: Path, env: dict[str, str]) -> None:
    """Scenario 4 under load: a worker draining short jobs holds some claimed ahead; on
    SIGTERM they go back to pending as if never claimed, and nothing is left half-done."""
    jobs = tasks.work.delay_many([((i,), {}) for i in range(3000)])
    worker = fleet.start(2, lease=LEASE, env=env)
    wait_for(lambda: sql.count("done") >= 300, timeout=30, interval=0.01)
    worker.process.send_signal(signal.SIGTERM)
    assert worker.process.wait(timeout=30) == 0, worker.log()

    assert "gave back" in worker.log(), "no job was claimed ahead: the test proves nothing"
    tries, inside = sql.tries(), starts_in_jobs(tmp_path)
    states = Counter()
    for job in jobs:
        job.refresh()
        states[job.state] += 1
        if job.state == "done":
            assert job.attempt == 1 and [row[1] for row in tries[str(job.uuid)]] == ["success"]
            assert inside[str(job.uuid)] == 1
        else:
            assert (job.state, job.attempt, job.retries) == ("pending", 0, 0), job
            assert tries[str(job.uuid)] == [] and inside[str(job.uuid)] == 0
    assert states["done"] >= 300 and states["pending"] > 0
    print(f"\nFAULTS scenario 4c: SIGTERM while draining: {states['done']} done once, "
          f"{states['pending']} pending untouched (claimed-ahead jobs given back)")


def test_jobs_given_back_at_random_moments_each_run_once(
        tasks: ModuleType, fleet: Fleet, sql: Sql, tmp_path: Path) -> None:
    """Short jobs held by job processes that are asked for them back at random moments,
    mid-job, mid-write, between two jobs: every job is done after exactly one try."""
    jobs = tasks.work.delay_many([((i,), {}) for i in range(2000)])
    fleet.start(2, lease=LEASE, env=STORM)
    wait_all_finished(sql, len(jobs), timeout=60)
    tries, inside = sql.tries(), starts_in_jobs(tmp_path)
    for job in jobs:
        assert [row[:2] for row in tries[str(job.uuid)]] == [(1, "success")], job
        assert inside[str(job.uuid)] == 1, job
    assert sql.states() == {"done": len(jobs)}


def test_sigterm_puts_jobs_longer_than_the_grace_back_to_pending(
        tasks: ModuleType, fleet: Fleet, sql: Sql, tmp_path: Path) -> None:
    """Scenario 4, second half: jobs outliving the grace are pending within grace + 1 s."""
    grace = 1.0
    worker = fleet.start(2, lease=LEASE, env={"ERRAND_SHUTDOWN_GRACE": str(grace)})
    held = tasks.gate.delay_many([(("never",), {})] * 2)
    job_processes = [gate_pids(tmp_path, job.uuid, 1)[0] for job in held]

    worker.process.send_signal(signal.SIGTERM)
    signalled_at = time.monotonic()
    wait_for(lambda: all(job.refresh().state == "pending" for job in held), timeout=15,
             interval=0.01)
    took = time.monotonic() - signalled_at
    assert took <= grace + 1, f"back to pending {took:.2f} s after SIGTERM"
    assert worker.process.wait(timeout=15) == 0, worker.log()
    assert not any(alive(pid) for pid in job_processes)
    for job in held:
        assert (job.attempt, job.retries) == (1, 0)
        assert [log.outcome for log in job.logs] == ["interrupted"]
        assert job.logs[0].error_type == "WorkerShutdown"
    print(f"\nFAULTS scenario 4b: jobs longer than the grace ({grace:g} s) pending "
          f"{took:.2f} s after SIGTERM; exit code 0")



def test_a_second_sigterm_stops_at_once(
        tasks: ModuleType, fleet: Fleet, sql: Sql, tmp_path: Path) -> None:
    """Scenario 4, impatient operator: SIGTERM, then SIGTERM again during a long grace."""
    worker = fleet.start(2, lease=LEASE, env={"ERRAND_SHUTDOWN_GRACE": "60"})
    held = tasks.gate.delay_many([(("never",), {})] * 2)
    job_processes = [gate_pids(tmp_path, job.uuid, 1)[0] for job in held]
    worker.process.send_signal(signal.SIGTERM)
    time.sleep(0.3)  # draining: the jobs keep running
    assert worker.process.poll() is None and all(alive(pid) for pid in job_processes)
    worker.process.send_signal(signal.SIGTERM)
    signalled_at = time.monotonic()
    worker.process.wait(timeout=15)
    took = time.monotonic() - signalled_at
    assert took < 2.0, f"exited {took:.2f} s after the second SIGTERM"
    assert not any(alive(pid) for pid in job_processes)
    for job in held:
        job.refresh()
        assert (job.state, job.attempt, job.retries) == ("pending", 1, 0)
        assert [log.outcome for log in job.logs] == ["interrupted"]
    print(f"\nFAULTS scenario 4c: second SIGTERM: exit code {worker.process.returncode} "
          f"{took:.2f} s later, running jobs pending again (try 1 interrupted)")

def test_a_job_process_forked_just_before_its_supervisor_dies_runs_nothing(
        tasks: ModuleType, fleet: Fleet, sql: Sql, tmp_path: Path) -> None:
    """Scenario 3, at the worst moment: the supervisor forked a job process, claimed a job
    and sent it, and is killed before the (descheduled) job process ran its first line."""
    job = tasks.gate.delay("never")  # ready before the worker starts: claimed at once
    worker = fleet.start(1, lease=LEASE, env={"ERRAND_FAULTS_SLOW_FORK": "1.5"}, ready=False)
    wait_for(lambda: job.refresh().state == "enqueued")  # claimed: sent on at once
    time.sleep(0.2)  # the try is in the child's pipe (no start: the child never said so)
    assert job.refresh().state == "enqueued"
    job_processes = children_of(worker.pid)
    assert len(job_processes) == 1 and not start_lines(tmp_path)
    os.kill(worker.pid, signal.SIGKILL)
    worker.process.wait(timeout=10)
    time.sleep(3.0)  # the job process wakes up 1.5 s after its fork; give it time to act
    orphans = [pid for pid in job_processes if alive(pid)]
    assert not orphans and not start_lines(tmp_path), \
        f"job process {orphans} outlived its supervisor and started {start_lines(tmp_path)}"


def test_programs_started_by_a_job_still_obey_sigterm(
        tasks: ModuleType, fleet: Fleet, sql: Sql, tmp_path: Path) -> None:
    """The job processes shield themselves from SIGTERM (their supervisor decides); the
    programs a job runs must not inherit that shield."""
    job = tasks.terminate_a_helper.delay()
    fleet.start(1, lease=LEASE)
    wait_for(lambda: job.refresh().finished)
    assert job.state == "done"
    assert job.result == -signal.SIGTERM, f"the helper: {job.result}"
