"""A worker's round on PostgreSQL: its claim runs on a second connection while its ends are
written, and only when it does not depend on them."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import psycopg
import pytest

from errand.channels import ChannelConfig
from errand.jobs import ClaimedJob, Finish, NewJob, Outcome, State
from errand.runtime.rounds import ClaimLane, Round
from errand.storage import Backend, open_backend
from errand.storage.base import WorkerInfo
from helpers import wait_for

WORKER = "w1"
NOWHERE = "postgresql://postgres@127.0.0.1:1/none"  # nothing listens: connecting fails at once


@pytest.fixture
def backend(postgres_url: str) -> Iterator[Backend]:
    opened = open_backend(postgres_url, pooled=False)
    opened.register_worker(WorkerInfo(id=WORKER, host="host", pid=1, concurrency=2,
                                      channels=None, version="test"))
    yield opened
    opened.close()


@contextmanager
def lane_to(url: str) -> Iterator[ClaimLane]:
    lane = ClaimLane(lambda: open_backend(url, pooled=False))
    try:
        yield lane
    finally:
        lane.close()


def ending(finishes: list[Finish], channels: dict[str, ChannelConfig] | None = None) -> Round:
    """A round that writes `finishes` and claims two jobs."""
    return Round(started={}, progress=[], finishes=finishes, claim=2, channels=channels or {})


def store(backend: Backend, count: int) -> None:
    backend.enqueue([NewJob(uuid=uuid.uuid4(), task="t", args="[]", kwargs="{}", context="{}",
                            description="t", channel="root", priority=10, max_retries=5,
                            retry_pattern=None, timeout=None, eta_in=0.0)
                     for _ in range(count)])


def done(job: ClaimedJob) -> Finish:
    return Finish(id=job.id, attempt=job.attempt, state=State.DONE, outcome=Outcome.SUCCESS,
                  retries=0, result="null", duration=0.001, pid=1, start_unwritten=True)


def states(url: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        return dict(conn.execute("SELECT state, count(*) FROM errand_jobs GROUP BY state")
                    .fetchall())


def test_the_claim_goes_through_while_the_ends_wait(backend: Backend, postgres_url: str) -> None:
    store(backend, 4)
    running = backend.claim(WORKER, 2)
    round_ = ending([done(job) for job in running])
    with lane_to(postgres_url) as lane, psycopg.connect(postgres_url) as blocker, \
            ThreadPoolExecutor(1) as thread:
        # Writing the ends counts them on the worker's row: hold that row.
        blocker.execute("SELECT 1 FROM errand_workers WHERE id = %s FOR UPDATE", [WORKER])
        answer = thread.submit(round_.run, backend, WORKER, lane)
        wait_for(lambda: states(postgres_url).get("enqueued") == 4, timeout=10)
        assert not answer.done()  # claimed beside the ends, which still wait
        blocker.rollback()
        applied, claimed = answer.result(timeout=10)
    assert sorted(applied) == sorted(job.id for job in running)
    assert len(claimed) == 2 and not {job.id for job in claimed} & set(applied)
    assert round_.claim_error is None
    assert states(postgres_url) == {"done": 2, "enqueued": 2}


def test_a_failed_claim_leaves_the_ends_written(backend: Backend, postgres_url: str) -> None:
    store(backend, 3)
    running = backend.claim(WORKER, 2)
    round_ = ending([done(job) for job in running])
    with lane_to(NOWHERE) as lane:
        applied, claimed = round_.run(backend, WORKER, lane)
    assert sorted(applied) == sorted(job.id for job in running) and claimed == []
    assert round_.claim_error is not None and "cannot connect" in str(round_.claim_error)
    assert states(postgres_url) == {"done": 2, "pending": 1}


@pytest.mark.parametrize("why", ["an end releases waiting jobs", "a channel has a capacity"])
def test_a_claim_that_depends_on_the_ends_runs_after_them_on_one_connection(
        backend: Backend, postgres_url: str, why: str) -> None:
    store(backend, 3)
    running = backend.claim(WORKER, 1)
    finishes = [done(job) for job in running]
    channels: dict[str, ChannelConfig] = {}
    if why == "an end releases waiting jobs":
        finishes[0].has_children = True
    else:
        channels = {"root": ChannelConfig(name="root", capacity=5)}
    round_ = ending(finishes, channels)
    with lane_to(NOWHERE) as lane:  # it would fail the claim, were it used
        applied, claimed = round_.run(backend, WORKER, lane)
    assert round_.claim_error is None
    assert applied == [running[0].id] and len(claimed) == 2
