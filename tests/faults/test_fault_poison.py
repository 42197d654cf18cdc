"""Scenario 9: poison pills crash their job process on every try; good jobs go on.

Size: `scaled(500)` good jobs, the issue's 500 by default (ERRAND_FAULTS_SCALE, see
faultkit). Crashes are retried at once (retry_pattern {1: 0}) so the test does not wait
the default 10 minutes between tries.
"""

from __future__ import annotations

import signal
from collections import Counter
from pathlib import Path
from types import ModuleType

from faultkit import Fleet, Sql, scaled, starts_in_jobs, wait_all_finished

NAMED = {"abort": "was killed by SIGABRT", "segv": "was killed by SIGSEGV",
         "exit": "exited with code 3", "kill": "was killed by SIGKILL"}


def test_poison_pills_fail_after_their_retries_and_good_jobs_run_once(
        tasks: ModuleType, fleet: Fleet, sql: Sql, tmp_path: Path) -> None:
    good_count = scaled(500)
    half = good_count // 2
    good = tasks.work.delay_many([((i,), {}) for i in range(half)])
    pills = [tasks.poison.delay(how) for how in NAMED for _ in range(2)]
    good += tasks.work.delay_many([((i,), {}) for i in range(half, good_count)])
    pair = [fleet.start(2), fleet.start(2)]
    took = wait_all_finished(sql, good_count + len(pills), timeout=120)

    tries = sql.tries()
    inside = starts_in_jobs(tmp_path)
    max_retries = pills[0].max_retries
    assert max_retries == 2
    for job in pills:
        job.refresh()
        how = job.args[0]
        assert (job.state, job.attempt) == ("failed", max_retries + 1), (how, job.state)
        assert [row[1] for row in tries[str(job.uuid)]] == ["crash"] * (max_retries + 1)
        assert inside[str(job.uuid)] == max_retries + 1, how
        assert job.error_type == "ProcessCrashed" and NAMED[how] in (job.error or ""), \
            job.error
    for job in good:
        assert [row[1] for row in tries[str(job.uuid)]] == ["success"], job
        assert inside[str(job.uuid)] == 1
    assert sql.states() == Counter(done=good_count, failed=len(pills))
    for worker in pair:  # the crashes never took a worker down
        assert worker.process.poll() is None, worker.log()
        worker.process.send_signal(signal.SIGTERM)
    for worker in pair:
        assert worker.process.wait(timeout=30) == 0, worker.log()
    print(f"\nFAULTS scenario 9: {len(pills)} poison pills ({', '.join(NAMED)}) failed after "
          f"exactly {max_retries + 1} starts each, signal named; {good_count} good jobs done "
          f"once; {took:.1f} s")


def test_jobs_held_ahead_are_charged_right_among_crashes_and_slow_jobs(
        tasks: ModuleType, fleet: Fleet, sql: Sql, tmp_path: Path) -> None:
    """Short jobs make each job process hold its next jobs; slow ones (past the 50 ms
    after which held jobs are asked back) and crashing ones land among them. Every start
    must belong to the try the database records, on both sides of every handover."""
    count = scaled(2000)
    calls = [((i, 0.08 if i % 25 == 0 else 0.0), {}) for i in range(count)]
    good = tasks.work.delay_many(calls[:count // 2])
    pills = [tasks.poison.delay(how) for how in NAMED for _ in range(2)]
    good += tasks.work.delay_many(calls[count // 2:])
    pair = [fleet.start(2), fleet.start(2)]
    wait_all_finished(sql, count + len(pills), timeout=180)

    tries, inside = sql.tries(), starts_in_jobs(tmp_path)
    for job in pills:
        assert [row[1] for row in tries[str(job.uuid)]] == ["crash"] * 3, job.args
        assert inside[str(job.uuid)] == 3, job.args
    wrong = [(job.args, tries[str(job.uuid)], inside[str(job.uuid)]) for job in good
             if [row[1] for row in tries[str(job.uuid)]] != ["success"]
             or inside[str(job.uuid)] != 1]
    assert not wrong, wrong[:5]
    for worker in pair:
        assert worker.process.poll() is None, worker.log()
    print(f"\nFAULTS pipeline: {count} jobs (1 in 25 slow) and {len(pills)} crashing jobs "
          "among jobs held ahead: every start is its recorded try")
