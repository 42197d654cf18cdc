"""Every storage behaviour, run against a real SQLite file and a real PostgreSQL schema."""

from __future__ import annotations

import importlib
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from errand.jobs import ClaimedJob, Finish, NewJob, Outcome, State
from errand.storage import Backend, open_backend
from errand.storage.base import Progress, WorkerInfo


def new_job(task: str = "t", *, priority: int = 10, eta_in: float = 0.0,
            channel: str = "root", max_retries: int = 5) -> NewJob:
    return NewJob(uuid=uuid.uuid4(), task=task, args='[1, "two"]', kwargs='{"k": 3}',
                  context="{}", description=task, channel=channel, priority=priority,
                  max_retries=max_retries, retry_pattern=None, timeout=None, eta_in=eta_in)


@pytest.fixture
def backend(database_url: str) -> Iterator[Backend]:
    opened = open_backend(database_url, pooled=False)
    yield opened
    opened.close()


def register(backend: Backend, worker_id: str = "w1") -> str:
    backend.register_worker(WorkerInfo(id=worker_id, host="host", pid=1, concurrency=4,
                                       channels=None, version="test"))
    return worker_id


def finish(job: ClaimedJob, state: State, outcome: Outcome, **fields: object) -> Finish:
    return Finish(id=job.id, attempt=job.attempt, state=state, outcome=outcome,
                  retries=job.retries, **fields)  # type: ignore[arg-type]


def test_enqueue_stores_every_field(backend: Backend) -> None:
    job = new_job("mail.send", priority=3, channel="root.mail")
    [row] = backend.enqueue([job])
    stored = backend.get_job(job.uuid)
    assert stored == row
    assert (row.uuid, row.task, row.state, row.priority, row.channel) == \
        (job.uuid, "mail.send", State.PENDING, 3, "root.mail")
    assert row.attempt == 0 and row.retries == 0 and row.max_retries == 5
    assert row.eta.tzinfo is not None and row.created_at.tzinfo is not None
    assert backend.get_job(uuid.uuid4()) is None


def test_enqueue_many_in_one_call(backend: Backend) -> None:
    jobs = [new_job(f"t{i}") for i in range(500)]
    rows = backend.enqueue(jobs)
    assert {row.uuid for row in rows} == {job.uuid for job in jobs}
    assert len(backend.list_jobs(limit=1000)) == 500


def test_list_jobs_filters_and_orders_newest_first(backend: Backend) -> None:
    backend.enqueue([new_job("a", channel="root.mail")])
    backend.enqueue([new_job("b", channel="root.mail.bulk")])
    backend.enqueue([new_job("c", channel="root.mailer")])
    assert [r.task for r in backend.list_jobs()] == ["c", "b", "a"]
    assert [r.task for r in backend.list_jobs(channel="root.mail")] == ["b", "a"]
    assert [r.task for r in backend.list_jobs(task="b")] == ["b"]
    assert [r.task for r in backend.list_jobs(limit=1)] == ["c"]
    assert backend.list_jobs(state=State.DONE) == []


def test_claim_follows_priority_then_eta_then_creation(backend: Backend) -> None:
    worker = register(backend)
    late = new_job("late", priority=1, eta_in=3600)
    backend.enqueue([new_job("p10-first"), new_job("p5"), late])
    backend.enqueue([new_job("p10-second"), new_job("p5-second", priority=5)])
    backend.enqueue([new_job("p5", priority=5)])
    order = [backend.claim(worker, 1) for _ in range(5)]
    assert [c[0].task for c in order if c] == \
        ["p5-second", "p5", "p10-first", "p5", "p10-second"]
    assert backend.claim(worker, 10) == []  # only the future job is left
    eta = backend.next_eta()
    assert eta is not None and 3500 < eta <= 3600


def test_claim_counts_the_try_and_opens_its_log(backend: Backend) -> None:
    worker = register(backend)
    backend.enqueue([new_job() for _ in range(3)])
    claimed = backend.claim(worker, 2)
    assert len(claimed) == 2 and all(c.attempt == 1 for c in claimed)
    row = backend.get_job(claimed[0].uuid)
    assert row is not None and row.state == State.ENQUEUED and row.worker_id == worker
    [log] = backend.list_attempts(claimed[0].id)
    assert log.attempt == 1 and log.outcome is None and log.worker_id == worker
    backend.mark_started(worker, [(claimed[0].id, 1, 4242)])
    row = backend.get_job(claimed[0].uuid)
    assert row is not None and row.state == State.STARTED and row.started_at is not None
    assert backend.list_attempts(claimed[0].id)[0].pid == 4242


def test_concurrent_claims_never_share_a_job(database_url: str) -> None:
    backends = [open_backend(database_url, pooled=False) for _ in range(4)]
    backends[0].enqueue([new_job() for _ in range(400)])
    for index, b in enumerate(backends):
        register(b, f"w{index}")
    taken: list[list[int]] = [[] for _ in backends]
    start = threading.Barrier(len(backends))

    def drain(index: int) -> None:
        start.wait()
        while batch := backends[index].claim(f"w{index}", 7):
            taken[index].extend(job.id for job in batch)

    threads = [threading.Thread(target=drain, args=(i,)) for i in range(len(backends))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [job_id for ids in taken for job_id in ids]
    assert len(every) == 400 and len(set(every)) == 400
    for b in backends:
        b.close()


def test_finish_writes_done_retry_and_failure(backend: Backend) -> None:
    worker = register(backend)
    backend.enqueue([new_job() for _ in range(3)])
    ok, again, bad = backend.claim(worker, 3)
    applied = backend.finish(worker, [
        finish(ok, State.DONE, Outcome.SUCCESS, result='{"n": 1}', duration=0.5,
               memory_mb=12.5),
        Finish(id=again.id, attempt=again.attempt, state=State.PENDING, outcome=Outcome.ERROR,
               retries=1, delay=120, error_type="ValueError", error_message="bad",
               traceback="Traceback..."),
        finish(bad, State.FAILED, Outcome.ERROR, error_type="KeyError", error_message="k"),
    ])
    assert sorted(applied) == sorted([ok.id, again.id, bad.id])
    done = backend.get_job(ok.uuid)
    assert done is not None and done.state == State.DONE and done.result == '{"n": 1}'
    assert done.progress == 100 and done.ended_at is not None
    retried = backend.get_job(again.uuid)
    assert retried is not None and retried.state == State.PENDING and retried.retries == 1
    assert (retried.eta - retried.created_at).total_seconds() > 100
    assert retried.error_type == "ValueError" and retried.ended_at is None
    failed = backend.get_job(bad.uuid)
    assert failed is not None and failed.state == State.FAILED and failed.error_message == "k"
    [log] = backend.list_attempts(ok.id)
    assert (log.outcome, log.duration, log.memory_mb) == (Outcome.SUCCESS, 0.5, 12.5)
    assert log.ended_at is not None
    assert backend.list_attempts(again.id)[0].traceback == "Traceback..."
    assert [w.jobs_done for w in backend.list_workers()] == [3]


def test_a_finish_without_the_lease_changes_nothing(backend: Backend) -> None:
    worker = register(backend, "w1")
    register(backend, "w2")
    backend.enqueue([new_job()])
    [job] = backend.claim(worker, 1)
    stale = Finish(id=job.id, attempt=job.attempt + 1, state=State.DONE,
                   outcome=Outcome.SUCCESS, retries=0, result="1")
    assert backend.finish(worker, [stale]) == []
    assert backend.finish("w2", [finish(job, State.DONE, Outcome.SUCCESS, result="1")]) == []
    row = backend.get_job(job.uuid)
    assert row is not None and row.state == State.ENQUEUED
    assert backend.finish(worker, [finish(job, State.DONE, Outcome.SUCCESS, result="1")]) \
        == [job.id]
    # Applying the same end twice (an acknowledgement lost in a reconnect) is harmless.
    assert backend.finish(worker, [finish(job, State.DONE, Outcome.SUCCESS, result="2")]) == []
    row = backend.get_job(job.uuid)
    assert row is not None and row.result == "1"


def test_progress_is_fenced_by_the_try(backend: Backend) -> None:
    worker = register(backend)
    backend.enqueue([new_job()])
    [job] = backend.claim(worker, 1)
    backend.save_progress([Progress(job.id, job.attempt, 40, "reading")])
    backend.save_progress([Progress(job.id, job.attempt + 1, 90, "stale try")])
    row = backend.get_job(job.uuid)
    assert row is not None and (row.progress, row.status_message) == (40, "reading")


def test_heartbeat_reports_jobs_no_longer_owned(backend: Backend) -> None:
    worker = register(backend)
    backend.enqueue([new_job(), new_job()])
    kept, cancelled = backend.claim(worker, 2)
    assert backend.cancel([cancelled.uuid]) == [cancelled.uuid]
    running = [(kept.id, kept.attempt), (cancelled.id, cancelled.attempt)]
    assert backend.heartbeat(worker, running) == [cancelled.id]
    assert backend.heartbeat("never-registered", []) is None


def test_rescue_returns_a_silent_workers_jobs(backend: Backend) -> None:
    dead, alive = register(backend, "dead"), register(backend, "alive")
    backend.enqueue([new_job(), new_job(max_retries=1)])
    first, last_try = backend.claim(dead, 2)
    # The job with max_retries=1 uses its one retry, and is claimed again.
    backend.finish(dead, [Finish(id=last_try.id, attempt=last_try.attempt,
                                 state=State.PENDING, outcome=Outcome.ERROR, retries=1)])
    [last_try] = backend.claim(dead, 1)
    assert last_try.attempt == 2
    backend.mark_started(dead, [(first.id, first.attempt, 7), (last_try.id, 2, 7)])
    backend.enqueue([new_job(max_retries=1)])
    [ahead] = backend.claim(dead, 1)  # claimed ahead, never seen starting
    backend.enqueue([new_job()])
    [theirs] = backend.claim(alive, 1)
    assert backend.rescue(lease=3600.0) == []  # everyone heartbeated within the lease
    time.sleep(0.05)
    backend.heartbeat(alive, [(theirs.id, theirs.attempt)])
    rescued = backend.rescue(lease=0.02)
    assert sorted(rescued) == sorted([first.id, last_try.id, ahead.id])
    again = backend.get_job(first.uuid)
    assert again is not None and again.state == State.PENDING and again.retries == 1
    assert again.error_type == "WorkerLost"
    gave_up = backend.get_job(last_try.uuid)
    assert gave_up is not None and gave_up.state == State.FAILED
    not_counted = backend.get_job(ahead.uuid)
    assert not_counted is not None and (not_counted.state, not_counted.retries) == (
        State.PENDING, 0)
    untouched = backend.get_job(theirs.uuid)
    assert untouched is not None and untouched.state == State.ENQUEUED
    assert backend.list_attempts(first.id)[-1].outcome == Outcome.INTERRUPTED
    assert {w.id: w.state for w in backend.list_workers()}["dead"] == "dead"


def test_a_short_try_writes_its_start_with_its_end(backend: Backend) -> None:
    worker = register(backend)
    backend.enqueue([new_job(), new_job()])
    short, long = backend.claim(worker, 2)
    backend.mark_started(worker, [(long.id, long.attempt, 41)])
    backend.finish(worker, [finish(short, State.DONE, Outcome.SUCCESS, duration=2.0, pid=42,
                                   start_unwritten=True),
                            finish(long, State.DONE, Outcome.SUCCESS, duration=2.0, pid=41)])
    [log] = backend.list_attempts(short.id)
    assert log.pid == 42 and log.started_at is not None and log.ended_at is not None
    assert abs((log.ended_at - log.started_at).total_seconds() - 2.0) < 0.01
    done = backend.get_job(short.uuid)
    assert done is not None and done.started_at is not None
    assert abs((done.started_at - log.started_at).total_seconds()) < 0.01
    [written_before] = backend.list_attempts(long.id)
    assert written_before.pid == 41  # its own start stands
    assert written_before.started_at is not None and written_before.ended_at is not None
    assert (written_before.ended_at - written_before.started_at).total_seconds() < 1.0


def test_unclaim_gives_back_jobs_never_started(backend: Backend) -> None:
    worker = register(backend)
    backend.enqueue([new_job(), new_job()])
    ahead, begun = backend.claim(worker, 2)
    backend.mark_started(worker, [(begun.id, begun.attempt, 7)])
    backend.unclaim(worker, [(ahead.id, ahead.attempt), (begun.id, begun.attempt)])
    back = backend.get_job(ahead.uuid)
    assert back is not None and (back.state, back.attempt, back.retries, back.worker_id) == (
        State.PENDING, 0, 0, None)
    assert backend.list_attempts(ahead.id) == []
    kept = backend.get_job(begun.uuid)
    assert kept is not None and (kept.state, kept.attempt) == (State.STARTED, 1)
    [again] = backend.claim(worker, 1)
    assert (again.id, again.attempt) == (ahead.id, 1)


def test_user_operations_respect_states(backend: Backend) -> None:
    worker = register(backend)
    rows = backend.enqueue([new_job() for _ in range(3)])
    pending, done, cancelled = (row.uuid for row in rows)
    [claimed, *_] = backend.claim(worker, 1)
    assert claimed.uuid == pending
    backend.finish(worker, [finish(claimed, State.DONE, Outcome.SUCCESS, result="7")])
    assert backend.requeue([pending]) == [pending]          # done -> pending
    assert backend.requeue([done]) == []                    # pending cannot be requeued
    assert backend.cancel([cancelled]) == [cancelled]
    assert backend.cancel([cancelled]) == []                # already cancelled
    assert backend.set_done([done], '"by hand"') == [done]
    row = backend.get_job(done)
    assert row is not None and row.state == State.DONE and row.result == '"by hand"'
    assert backend.set_done([cancelled], None) == []        # cancelled is not settable done
    assert backend.uuids_in_state(State.CANCELLED) == [cancelled]


def test_purge_deletes_old_finished_jobs_and_their_tries(backend: Backend) -> None:
    worker = register(backend)
    rows = backend.enqueue([new_job() for _ in range(4)])
    for claimed in backend.claim(worker, 2):
        backend.finish(worker, [finish(claimed, State.DONE, Outcome.SUCCESS, result="1")])
    backend.cancel([rows[2].uuid])
    assert backend.purge(3600.0, [State.DONE], 100) == 0    # not old enough
    time.sleep(0.01)
    assert backend.purge(0.0, [State.DONE], 1) == 1         # batches are bounded
    assert backend.purge(0.0, [State.DONE, State.CANCELLED], 100) == 2
    assert [row.state for row in backend.list_jobs()] == [State.PENDING]
    assert backend.list_attempts(rows[0].id) == []


def test_counts_for_stats_channels_and_workers(backend: Backend) -> None:
    worker = register(backend)
    backend.enqueue([new_job("a", channel="root.mail"), new_job("a"), new_job("b")])
    [claimed] = backend.claim(worker, 1)
    backend.mark_started(worker, [(claimed.id, claimed.attempt, 99)])
    backend.finish(worker, [finish(claimed, State.DONE, Outcome.SUCCESS, result="1")])
    stats = {(row.task, row.state): row.count for row in backend.stats(days=1)}
    assert stats == {("a", State.DONE): 1, ("a", State.PENDING): 1, ("b", State.PENDING): 1}
    assert {(c, s): n for c, s, n in backend.channel_counts()} == {("root", State.PENDING): 2}
    [info] = backend.list_workers()
    assert (info.id, info.state, info.jobs_done, info.running) == (worker, "running", 1, 0)
    backend.stop_worker(worker)
    assert backend.list_workers()[0].state == "stopped"


def test_waker_hears_new_work(backend: Backend) -> None:
    waker = backend.waker()
    try:
        assert waker.check() == (False, False)
        other = open_backend(backend.url, pooled=False)
        other.enqueue([new_job()])
        other.close()
        deadline = time.monotonic() + 5
        while not waker.check()[0]:
            assert time.monotonic() < deadline, "no news of the new job"
            time.sleep(0.01)
    finally:
        waker.close()


def test_migrate_reports_what_it_applied_once(backend: Backend, database_url: str) -> None:
    version = backend.schema_version()
    assert version >= 2
    assert backend.migrate() == list(range(1, version + 1))  # applied when first opened
    assert backend.migrate() == []
    again = open_backend(database_url, pooled=False)
    assert again.migrate() == [] and again.schema_version() == version
    again.close()


def run_sql(url: str, statements: list[str]) -> None:
    """Plain SQL on the test database, past errand (to build an older schema's rows)."""
    if url.startswith("sqlite:///"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            for statement in statements:
                conn.execute(statement)
        return
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def test_the_upgrade_to_tries_written_at_their_end_keeps_running_tries(
        database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The schema before this change opened a try's row at the claim; the upgrade moves a
    running try's open row onto its job and closes the open row of any other job."""
    dialect = "sqlite" if database_url.startswith("sqlite") else "postgres"
    module = importlib.import_module(f"errand.storage.{dialect}.backend")
    backend_class = getattr(module, {"sqlite": "SqliteBackend",
                                     "postgres": "PostgresBackend"}[dialect])
    ours = {"sqlite": 3, "postgres": 4}[dialect]  # the version that made this change
    before = [migration for migration in module._MIGRATIONS if migration[0] < ours]
    with monkeypatch.context() as patched:
        patched.setattr(module, "_MIGRATIONS", before)
        patched.setattr(backend_class, "latest_version", ours - 1)
        old = open_backend(database_url, pooled=False)
        running, stale = new_job("running"), new_job("stale")
        old.enqueue([running, stale])
        old.close()
    run_sql(database_url, [
        "INSERT INTO errand_workers (id, host, pid, concurrency, version, state, started_at, "
        "heartbeat_at) SELECT 'w1', 'host', 1, 2, 'old', 'running', created_at, created_at "
        f"FROM errand_jobs WHERE uuid = '{running.uuid}'",
        "UPDATE errand_jobs SET state = 'started', attempt = 1, worker_id = 'w1' "
        f"WHERE uuid = '{running.uuid}'",
        "INSERT INTO errand_attempts (job_id, attempt, worker_id, pid) SELECT id, 1, 'w1', 4242 "
        f"FROM errand_jobs WHERE uuid = '{running.uuid}'",
        "INSERT INTO errand_attempts (job_id, attempt, worker_id, pid) SELECT id, 1, 'w1', 4343 "
        f"FROM errand_jobs WHERE uuid = '{stale.uuid}'",
    ])
    backend = open_backend(database_url, pooled=False)
    try:
        assert backend.schema_version() == backend_class.latest_version >= ours
        row = backend.get_job(running.uuid)
        assert row is not None and row.state == State.STARTED
        [open_try] = backend.list_attempts(row.id)
        assert (open_try.attempt, open_try.pid, open_try.outcome) == (1, 4242, None)
        stale_row = backend.get_job(stale.uuid)
        assert stale_row is not None
        assert [a.outcome for a in backend.list_attempts(stale_row.id)] == [Outcome.INTERRUPTED]
        backend.finish("w1", [Finish(id=row.id, attempt=1, state=State.DONE,
                                     outcome=Outcome.SUCCESS, retries=0, duration=0.5,
                                     pid=4242)])
        [ended] = backend.list_attempts(row.id)
        assert (ended.attempt, ended.pid, ended.outcome) == (1, 4242, Outcome.SUCCESS)
    finally:
        backend.close()


def test_jobs_claimed_for_a_worker_that_does_not_run_them_are_put_back(
        backend: Backend) -> None:
    worker = register(backend)
    backend.enqueue([new_job(), new_job()])
    running, lost = backend.claim(worker, 2)
    assert backend.release_unknown(worker, [(running.id, running.attempt)]) == [lost.id]
    row = backend.get_job(lost.uuid)
    assert row is not None and (row.state, row.attempt, row.retries) == (State.PENDING, 1, 0)
    assert backend.list_attempts(lost.id)[0].outcome == Outcome.INTERRUPTED
    kept = backend.get_job(running.uuid)
    assert kept is not None and kept.state == State.ENQUEUED
    assert backend.release_unknown(worker, [(running.id, running.attempt)]) == []
