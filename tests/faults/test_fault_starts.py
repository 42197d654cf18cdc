"""Scenario 1: two workers of four job processes share a queue; every job starts once.

Size: `scaled(2000)` jobs, the issue's 2,000 by default (about 2-5 s here);
ERRAND_FAULTS_SCALE (see faultkit) shrinks or grows it.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from types import ModuleType

from faultkit import Fleet, Sql, scaled, starts_in_jobs


def test_two_workers_start_every_job_exactly_once(
        tasks: ModuleType, fleet: Fleet, sql: Sql, tmp_path: Path) -> None:
    total = scaled(2000)
    tasks.work.delay_many([((i,), {}) for i in range(total)])
    began = time.monotonic()
    pair = [fleet.start(4, "--burst", ready=False) for _ in range(2)]
    for worker in pair:
        assert worker.process.wait(timeout=240) == 0, worker.log()
    elapsed = time.monotonic() - began

    assert sql.states() == Counter(done=total)
    tries = sql.tries()
    assert len(tries) == total
    repeated = {uuid: rows for uuid, rows in tries.items() if len(rows) != 1}
    assert not repeated, f"jobs with other than one try row: {list(repeated.items())[:5]}"
    assert {rows[0][1] for rows in tries.values()} == {"success"}
    inside = starts_in_jobs(tmp_path)
    assert inside == Counter(dict.fromkeys(tries, 1)), \
        f"started other than once: {[(u, n) for u, n in inside.items() if n != 1][:5]}"
    assert sql.value("SELECT count(*) FROM errand_jobs WHERE attempt <> 1") == 0
    shares = Counter(rows[0][2] for rows in tries.values())
    assert len(shares) == 2, f"one worker ran everything: {shares}"  # both really competed
    print(f"\nFAULTS scenario 1: {total} jobs, 2x4 processes, {elapsed:.1f} s, "
          f"shares {sorted(shares.values())}, duplicates 0")
