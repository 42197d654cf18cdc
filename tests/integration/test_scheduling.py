"""Scheduling with real workers on both backends: channel capacities across workers,
sequential channels, priority/eta/creation order, etas, run-time channel control, and
identity keys under concurrent enqueuers.

Every job writes `<label>#<attempt> start|end <time.time()>` to one append-only file, so the
tests judge what really ran at once from the jobs' own clocks. The recorded run of a job lies
inside the time the database counts it as running (claimed before it starts, finished after
it ends), so an overlap seen here is an overlap the capacities had to prevent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType

import pytest

from helpers import ERRAND, import_tasks, run_errand, stop_all, wait_for

TASKS = '''
import os
import time
from pathlib import Path

import errand

app = errand.App()
FOLDER = Path(os.environ["ERRAND_TEST_DIR"])
EVENTS = FOLDER / "events.log"


def record(label, what):
    line = f"{label}#{errand.current_job().attempt} {what} {time.time():.6f}\\n"
    fd = os.open(EVENTS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


@app.task
def work(label, seconds=0.3):
    record(label, "start")
    time.sleep(seconds)
    record(label, "end")
    return label


@app.task(max_retries=1)
def fragile(label, seconds=0.1):
    """Fails for good until the test creates `<label>.fixed`."""
    record(label, "start")
    time.sleep(seconds)
    record(label, "end")
    if not (FOLDER / f"{label}.fixed").exists():
        raise errand.FailedJobError(f"{label} is broken")
    return label


@app.task(retry_pattern={1: 0.5})
def flaky(label):
    """Asks to be retried (in 0.5 s) on its first try."""
    record(label, "start")
    record(label, "end")
    if errand.current_job().attempt == 1:
        raise errand.RetryableJobError("not yet")
    return label
'''

RACER = '''
import importlib
import os
import sys
import time
from pathlib import Path

module = importlib.import_module(sys.argv[1])
folder = Path(sys.argv[2])
module.app.jobs(limit=1)  # connect before the start line
(folder / f"ready-{os.getpid()}").write_text("")
go = folder / "go"
while not go.exists():
    time.sleep(0.0005)
began = time.time()
job = module.work.with_delay(identity_key="same")("raced", seconds=0.01)
print(job.uuid, began, time.time())
'''


# -- fixtures and helpers -------------------------------------------------------------------

@pytest.fixture
def tasks(tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
          ) -> Iterator[ModuleType]:
    """The tasks above, importable here and by worker subprocesses (cwd=tmp_path)."""
    module = import_tasks(TASKS, tmp_path, database_url, monkeypatch, "scheduling_tasks")
    yield module
    module.app.close()


@pytest.fixture
def workers(tasks: ModuleType) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Started workers, killed at the end (their output is in worker-N.log in tmp_path)."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    stop_all(started)


def worker(tasks: ModuleType, workers: list[subprocess.Popen[bytes]], *args: str,
           env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start `errand worker` for the tasks module, its output going to a file."""
    folder = Path(tasks.FOLDER)
    log = (folder / f"worker-{len(workers)}.log").open("wb")
    process = subprocess.Popen(
        [*ERRAND, "worker", "--app", f"{tasks.__name__}:app", "--database-url",
         tasks.app.database_url, *args],
        cwd=folder, env={**os.environ, **(env or {})},
        stdout=log, stderr=subprocess.STDOUT)
    log.close()
    workers.append(process)
    return process


def wait_for_workers(tasks: ModuleType, count: int) -> None:
    wait_for(lambda: sum(w.state == "running" for w in tasks.app.backend.list_workers())
             >= count, timeout=20)


@dataclass(frozen=True)
class Run:
    """One try of one job, as the job itself recorded it."""

    label: str
    attempt: int
    start: float
    end: float | None

    @property
    def finished(self) -> bool:
        return self.end is not None


def runs(tasks: ModuleType) -> dict[str, Run]:
    """Every recorded try by `label#attempt`; a try recorded twice fails the test."""
    path = Path(tasks.FOLDER) / "events.log"
    starts: dict[str, float] = {}
    ends: dict[str, float] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            key, what, when = line.split()
            seen = starts if what == "start" else ends
            assert key not in seen, f"{key} recorded {what} twice: it ran twice"
            seen[key] = float(when)
    found = {}
    for key, start in starts.items():
        label, attempt = key.rsplit("#", 1)
        found[key] = Run(label, int(attempt), start, ends.get(key))
    return found


def of(found: dict[str, Run], labels: Iterable[str]) -> list[Run]:
    wanted = set(labels)
    return [run for run in found.values() if run.label in wanted]


def max_overlap(chosen: Iterable[Run]) -> int:
    """Most tries running at the same moment (an end at time t comes before a start at t)."""
    points = []
    for run in chosen:
        points.append((run.start, 1))
        points.append((run.end if run.end is not None else float("inf"), -1))
    running = peak = 0
    for _, step in sorted(points):
        running += step
        peak = max(peak, running)
    return peak


def running_at(chosen: Iterable[Run], moment: float) -> int:
    """Tries running at `moment` (started at or before it, not ended before it)."""
    return sum(run.start <= moment and (run.end is None or run.end > moment) for run in chosen)


def start_order(chosen: Iterable[Run]) -> list[str]:
    return [f"{run.label}#{run.attempt}" for run in sorted(chosen, key=lambda run: run.start)]


def states(jobs: Iterable) -> list[str]:
    return [str(job.refresh().state) for job in jobs]


def all_done(jobs: list) -> bool:
    return all(state == "done" for state in states(jobs))


def delay_labels(tasks: ModuleType, labels: list[str], *, seconds: float = 0.3,
                 **options: object) -> list:
    return tasks.work.delay_many([((label,), {"seconds": seconds}) for label in labels],
                                 **options)


# -- capacities across workers ------------------------------------------------------------

def test_capacities_hold_across_workers_and_are_reached(
        tasks: ModuleType, workers: list[subprocess.Popen[bytes]]) -> None:
    # Two workers with 3 job processes each could run 6 jobs, and 3 root.mail jobs each on
    # their own: only a cluster-wide count keeps root at 4 and root.mail (with its
    # unconfigured sub-channel root.mail.bulk) at 2.
    channels = "root:4,root.mail:2"
    for _ in range(2):
        worker(tasks, workers, "--channels", channels, "--concurrency", "3")
    wait_for_workers(tasks, 2)
    mail = [f"mail-{i}" for i in range(6)]
    bulk = [f"bulk-{i}" for i in range(6)]
    misc = [f"misc-{i}" for i in range(10)]
    # The mail subtree goes first (priority 1): if root.mail.bulk escaped root.mail's cap,
    # it would take every free slot.
    jobs = []
    for mail_label, bulk_label in zip(mail, bulk, strict=True):  # interleaved in creation
        jobs += delay_labels(tasks, [mail_label], channel="root.mail", priority=1)
        jobs += delay_labels(tasks, [bulk_label], channel="root.mail.bulk", priority=1)
    jobs += delay_labels(tasks, misc, channel="root.misc", priority=10)
    wait_for(lambda: all_done(jobs), timeout=60)

    found = runs(tasks)
    assert sorted(run.label for run in found.values()) == sorted(mail + bulk + misc)
    assert all(run.attempt == 1 and run.finished for run in found.values())
    assert max_overlap(found.values()) == 4                  # root:4 reached, never above
    assert max_overlap(of(found, mail + bulk)) == 2          # root.mail:2 over its subtree
    assert max_overlap(of(found, bulk)) <= 2
    # Both workers took part: the caps above held across them, not per worker.
    ran_on = {job.logs[0].worker for job in jobs}
    assert len(ran_on) == 2, ran_on
    # A root.mail.bulk job ran alongside a root.mail one: they share one count, the
    # sub-channel is not refused outright.
    assert any(running_at(of(found, mail), run.start) for run in of(found, bulk))


def test_a_busy_channel_does_not_hold_back_another(
        tasks: ModuleType, workers: list[subprocess.Popen[bytes]]) -> None:
    heavy = delay_labels(tasks, [f"heavy-{i}" for i in range(5)], seconds=1.0,
                         channel="root.heavy", priority=1)
    mail = delay_labels(tasks, [f"mail-{i}" for i in range(6)], seconds=0.2,
                        channel="root.mail", priority=10)
    for _ in range(2):
        worker(tasks, workers, "--channels", "root:4,root.heavy:1,root.mail:2",
               "--concurrency", "3")
    wait_for(lambda: all_done(mail), timeout=30)

    heavy_states = states(heavy)
    assert heavy_states.count("pending") >= 3, heavy_states  # mail did not wait for them
    found = runs(tasks)
    assert max_overlap(of(found, [f"heavy-{i}" for i in range(5)])) == 1
    assert max_overlap(of(found, [f"mail-{i}" for i in range(6)])) == 2


# -- order ---------------------------------------------------------------------------------

def ordered_jobs(tasks: ModuleType, channel: str = "root") -> tuple[list, list[str]]:
    """Jobs whose priority, eta and creation disagree; returns them and their expected
    start order (priority, then eta, then creation)."""
    now = datetime.now(UTC)
    past_10 = now - timedelta(seconds=10)
    specs = [  # label, priority, eta (None = now), in creation order
        ("p10-now-a", 10, None),
        ("p5-past20", 5, now - timedelta(seconds=20)),
        ("p5-past10-a", 5, past_10),
        ("p10-past30", 10, now - timedelta(seconds=30)),
        ("p1-now", 1, None),
        ("p5-past10-b", 5, past_10),  # same priority and eta as -a: creation decides
        ("p10-now-b", 10, None),
        ("p1-past5", 1, now - timedelta(seconds=5)),
    ]
    jobs = []
    for label, priority, eta in specs:
        options: dict[str, object] = {"priority": priority, "channel": channel}
        if eta is not None:
            options["eta"] = eta
        jobs.append(tasks.work.with_delay(**options)(label, seconds=0.05))
    expected = ["p1-past5", "p1-now", "p5-past20", "p5-past10-a", "p5-past10-b",
                "p10-past30", "p10-now-a", "p10-now-b"]
    return jobs, expected


@pytest.mark.parametrize("slot", [
    pytest.param((1, "1", None), id="one-worker-concurrency-1"),
    pytest.param((2, "2", "root:1"), id="two-workers-root-capacity-1"),
])
def test_one_slot_runs_by_priority_then_eta_then_creation(
        tasks: ModuleType, workers: list[subprocess.Popen[bytes]],
        slot: tuple[int, str, str | None]) -> None:
    count, concurrency, channels = slot
    jobs, expected = ordered_jobs(tasks)
    for _ in range(count):
        worker(tasks, workers, "--concurrency", concurrency,
               *(("--channels", channels) if channels else ()))
    wait_for(lambda: all_done(jobs), timeout=30)

    found = runs(tasks)
    assert start_order(found.values()) == [f"{label}#1" for label in expected]
    assert max_overlap(found.values()) == 1


def test_a_sequential_channel_never_overlaps_and_keeps_order(
        tasks: ModuleType, workers: list[subprocess.Popen[bytes]]) -> None:
    jobs, expected = ordered_jobs(tasks, channel="root.heavy")
    # A sub-channel runs under its nearest configured ancestor: in the same sequence.
    jobs.append(tasks.work.with_delay(channel="root.heavy.sub", priority=5)("sub", seconds=0.2))
    expected.insert(expected.index("p10-past30"), "sub")
    others = delay_labels(tasks, [f"other-{i}" for i in range(4)], seconds=0.2,
                          channel="root.other", priority=20)
    for _ in range(2):
        worker(tasks, workers, "--channels", "root:4,root.heavy:1:sequential",
               "--concurrency", "2")
    wait_for(lambda: all_done(jobs + others), timeout=30)

    found = runs(tasks)
    sequence = of(found, expected)
    assert start_order(sequence) == [f"{label}#1" for label in expected]
    assert max_overlap(sequence) == 1
    # The sequence did not hold back the rest of the tree: the other channel's jobs were
    # all over before the sequence was (it alone takes nine turns).
    assert max(run.end for run in of(found, [f"other-{i}" for i in range(4)])) \
        < max(run.end for run in sequence)


def test_a_sequential_channel_stops_at_a_failed_job_until_it_is_set_done(
        tasks: ModuleType, workers: list[subprocess.Popen[bytes]]) -> None:
    options = {"channel": "root.heavy"}
    first = tasks.work.with_delay(**options)("s1", seconds=0.1)
    broken = tasks.fragile.with_delay(**options)("s2")
    rest = [tasks.work.with_delay(**options)("s3", seconds=0.1),
            tasks.work.with_delay(channel="root.heavy.sub")("s4", seconds=0.1),
            tasks.work.with_delay(**options)("s5", seconds=0.1)]
    for _ in range(2):
        worker(tasks, workers, "--channels", "root.heavy:1:sequential", "--concurrency", "2")

    wait_for(lambda: broken.refresh().state == "failed")
    failed_at = time.time()
    assert first.refresh().state == "done"
    # Other channels go on while the sequence waits.
    other = tasks.work.with_delay(channel="root.other")("other", seconds=0.05)
    wait_for(lambda: other.refresh().state == "done")
    time.sleep(max(0.0, failed_at + 1.5 - time.time()))  # hold: nothing more may start
    assert states(rest) == ["pending"] * 3
    assert not of(runs(tasks), ["s3", "s4", "s5"])

    resolved_at = time.time()
    broken.set_done()
    wait_for(lambda: all_done(rest))

    found = runs(tasks)
    sequence = of(found, ["s1", "s2", "s3", "s4", "s5"])
    assert start_order(sequence) == ["s1#1", "s2#1", "s3#1", "s4#1", "s5#1"]
    assert max_overlap(sequence) == 1
    assert found["s3#1"].start > resolved_at


def test_a_requeued_failed_job_runs_before_the_rest_of_its_sequence(
        tasks: ModuleType, workers: list[subprocess.Popen[bytes]]) -> None:
    options = {"channel": "root.heavy"}
    broken = tasks.fragile.with_delay(**options)("s1")
    rest = [tasks.work.with_delay(**options)(f"s{i}", seconds=0.1) for i in (2, 3)]
    for _ in range(2):
        worker(tasks, workers, "--channels", "root.heavy:1:sequential", "--concurrency", "2")
    wait_for(lambda: broken.refresh().state == "failed")
    time.sleep(1.0)  # hold: the sequence waits for its failed job
    assert states(rest) == ["pending"] * 2

    (Path(tasks.FOLDER) / "s1.fixed").write_text("")
    broken.requeue()
    wait_for(lambda: all_done([broken, *rest]))
    sequence = list(runs(tasks).values())
    assert max_overlap(sequence) == 1
    assert start_order(sequence) == ["s1#1", "s1#2", "s2#1", "s3#1"]


def test_a_retried_job_runs_before_the_rest_of_its_sequence(
        tasks: ModuleType, workers: list[subprocess.Popen[bytes]]) -> None:
    options = {"channel": "root.heavy"}
    retried = tasks.flaky.with_delay(**options)("s1")
    rest = [tasks.work.with_delay(**options)(f"s{i}", seconds=0.1) for i in (2, 3)]
    for _ in range(2):
        worker(tasks, workers, "--channels", "root.heavy:1:sequential", "--concurrency", "2")
    wait_for(lambda: all_done([retried, *rest]))
    sequence = list(runs(tasks).values())
    assert max_overlap(sequence) == 1
    assert start_order(sequence) == ["s1#1", "s1#2", "s2#1", "s3#1"]


# -- eta ------------------------------------------------------------------------------------

def test_no_job_starts_before_its_eta(
        tasks: ModuleType, workers: list[subprocess.Popen[bytes]]) -> None:
    for _ in range(2):
        worker(tasks, workers, "--channels", "root:4", "--concurrency", "2")
    wait_for_workers(tasks, 2)
    later = [tasks.work.with_delay(eta=0.3 + 0.25 * i, priority=1)(f"later-{i}", seconds=0.1)
             for i in range(6)]
    at = datetime.now(UTC) + timedelta(seconds=1)
    exact = tasks.work.with_delay(eta=at, priority=1)("at-datetime", seconds=0.1)
    now = delay_labels(tasks, [f"now-{i}" for i in range(6)], seconds=0.2)
    wait_for(lambda: all_done([*later, exact, *now]), timeout=30)

    found = runs(tasks)
    slack = 0.01  # clock resolution only
    for job in [*later, exact]:
        run = found[f"{job.args[0]}#1"]
        eta = job.eta.timestamp()
        assert run.start >= eta - slack, (job.args[0], run.start - eta)
        assert run.start <= eta + 2.0, (job.args[0], run.start - eta)  # and not much later
        assert job.logs[0].started_at.timestamp() >= eta - slack
    assert abs(exact.eta.timestamp() - at.timestamp()) < 0.001
    # The jobs due at once did not wait for the later ones.
    assert max(found[f"now-{i}#1"].start for i in range(6)) < found["later-5#1"].start


# -- control at run time ------------------------------------------------------------------

def channels_cli(tasks: ModuleType, *args: str) -> subprocess.CompletedProcess[str]:
    """`errand channels [ACTION ...]` on the tasks' database, from the command line."""
    return run_errand("channels", "--app", f"{tasks.__name__}:app", "--database-url",
                      tasks.app.database_url, *args, cwd=Path(tasks.FOLDER))


def channel_status(tasks: ModuleType) -> dict[str, dict]:
    result = channels_cli(tasks, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    return {row["name"]: row for row in json.loads(result.stdout)}


def test_pause_resume_and_capacity_changes_reach_every_worker(
        tasks: ModuleType, workers: list[subprocess.Popen[bytes]]) -> None:
    for _ in range(2):
        worker(tasks, workers, "--channels", "root.mail:2", "--concurrency", "3")
    wait_for_workers(tasks, 2)
    labels = [f"mail-{i}" for i in range(16)]
    mail = delay_labels(tasks, labels, seconds=0.25, channel="root.mail")
    wait_for(lambda: len(runs(tasks)) >= 2)

    # Pause: what is running goes on, nothing more starts.
    paused_at = time.time()
    tasks.app.channels.pause("root.mail")
    time.sleep(1.0)  # a change reaches every worker within a second
    pending = sum(state == "pending" for state in states(mail))
    started_by_then = len(runs(tasks))
    others = delay_labels(tasks, ["other-0", "other-1"], seconds=0.1, channel="root.other")
    wait_for(lambda: all_done(others))  # other channels run meanwhile
    time.sleep(max(0.0, paused_at + 2.2 - time.time()))
    assert pending > 0
    assert sum(state == "pending" for state in states(mail)) == pending
    assert len(of(runs(tasks), labels)) == started_by_then
    status = channel_status(tasks)["root.mail"]
    assert status["paused"] is True and status["capacity"] == 2
    assert status["pending"] == pending

    # Resume through the command line: the channel runs again.
    resume_asked_at = time.time()
    result = channels_cli(tasks, "resume", "root.mail")
    resumed_at = time.time()
    assert result.returncode == 0, result.stdout + result.stderr
    wait_for(lambda: sum(run.start > resume_asked_at for run in of(runs(tasks), labels)) >= 2,
             timeout=5)
    assert channel_status(tasks)["root.mail"]["paused"] is False

    # Lower the capacity while root.mail runs at 2: within a second no worker starts a
    # root.mail job beside another one.
    lowered_at = time.time()
    tasks.app.channels.set("root.mail", 1)
    wait_for(lambda: all_done(mail), timeout=30)

    found = of(runs(tasks), labels)
    assert sorted(run.label for run in found) == sorted(labels)
    assert max_overlap(found) == 2
    assert not [run for run in found if paused_at + 1.0 < run.start < resume_asked_at]
    assert min(run.start for run in found if run.start > resume_asked_at) < resumed_at + 1.0
    late = [run for run in found if run.start > lowered_at + 1.0]
    assert len(late) >= 3, "too few jobs left to see the lowered capacity"
    assert all(running_at(found, run.start) == 1 for run in late), \
        [(run.label, running_at(found, run.start)) for run in late]


def test_a_capacity_raised_from_the_command_line_is_used(
        tasks: ModuleType, workers: list[subprocess.Popen[bytes]]) -> None:
    for _ in range(2):
        worker(tasks, workers, "--channels", "root.mail:1", "--concurrency", "2")
    wait_for_workers(tasks, 2)
    labels = [f"mail-{i}" for i in range(10)]
    mail = delay_labels(tasks, labels, seconds=0.3, channel="root.mail")
    wait_for(lambda: len(runs(tasks)) >= 3)
    raising_at = time.time()
    result = channels_cli(tasks, "set", "root.mail", "3")
    assert result.returncode == 0, result.stdout + result.stderr
    wait_for(lambda: all_done(mail), timeout=30)

    found = of(runs(tasks), labels)
    before = [run for run in found if run.start < raising_at]
    assert len(before) >= 3 and max_overlap(before) == 1
    assert max_overlap(found) == 3  # 4 slots exist; the new cap of 3 is reached, not passed
    assert channel_status(tasks)["root.mail"]["capacity"] == 3


def test_channel_actions_take_the_common_options_after_the_action(tasks: ModuleType) -> None:
    result = run_errand("channels", "pause", "root.mail", "--app", f"{tasks.__name__}:app",
                        "--database-url", tasks.app.database_url, cwd=Path(tasks.FOLDER))
    assert result.returncode == 0, result.stderr
    assert tasks.app.backend.channel_settings()["root.mail"].paused


# -- identity keys ------------------------------------------------------------------------

def test_twenty_concurrent_enqueuers_of_one_identity_key_make_one_job(
        tasks: ModuleType, tmp_path: Path) -> None:
    racers = 20
    env = {**os.environ, "ERRAND_DATABASE_URL": tasks.app.database_url}
    processes = [subprocess.Popen([sys.executable, "-c", RACER, tasks.__name__, str(tmp_path)],
                                  cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
                 for _ in range(racers)]
    try:
        wait_for(lambda: len(list(tmp_path.glob("ready-*"))) == racers, timeout=60)
        (tmp_path / "go").write_text("")
        outputs = [process.communicate(timeout=60) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    assert [process.returncode for process in processes] == [0] * racers, outputs
    lines = [out.split() for out, _ in outputs]
    uuids = {line[0] for line in lines}
    began = [float(line[1]) for line in lines]
    ended = [float(line[2]) for line in lines]
    in_flight = max(sum(b <= moment < e for b, e in zip(began, ended, strict=True))
                    for moment in began)
    assert in_flight >= 10, f"only {in_flight} enqueuers overlapped: hardly a race"

    stored = tasks.app.jobs(task=tasks.work.name)
    assert len(stored) == 1
    assert uuids == {str(stored[0].uuid)}
    assert stored[0].state == "pending" and stored[0].identity_key == "same"


def test_identity_key_in_one_batch_and_after_the_job_ran(tasks: ModuleType) -> None:
    twins = tasks.work.delay_many([(("first",), {"seconds": 0.01}),
                                   (("second",), {"seconds": 0.01})], identity_key="k")
    assert len(twins) == 2 and twins[0].uuid == twins[1].uuid
    assert twins[0].args == ["first"]
    again = tasks.work.with_delay(identity_key="k")("third", seconds=0.01)
    assert again.uuid == twins[0].uuid
    assert len(tasks.app.jobs(task=tasks.work.name)) == 1

    result = run_errand("worker", "--app", f"{tasks.__name__}:app", "--database-url",
                        tasks.app.database_url, "--burst", cwd=Path(tasks.FOLDER))
    assert result.returncode == 0, result.stdout + result.stderr
    assert twins[0].refresh().state == "done" and twins[0].result == "first"

    fresh = tasks.work.with_delay(identity_key="k")("fourth", seconds=0.01)
    assert fresh.uuid != twins[0].uuid
    assert (fresh.state, fresh.args) == ("pending", ["fourth"])
    assert tasks.work.with_delay(identity_key="k")("fifth").uuid == fresh.uuid
    assert len(tasks.app.jobs(task=tasks.work.name)) == 2
