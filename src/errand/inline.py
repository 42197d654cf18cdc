"""Running jobs in the calling process instead of storing them: `ERRAND_NO_DELAY=1` and the
test kit's `perform_enqueued_jobs`. Parents run before children and pass their results."""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from errand import serialization
from errand.context import JobContext, running
from errand.handle import Attempt, Job
from errand.jobs import JobRow, NewJob, Outcome, State
from errand.tasks import Task


def unstored_row(new: NewJob, state: State, *, result: str | None = None,
                 status: str | None = None, started: datetime | None = None,
                 ended: datetime | None = None) -> JobRow:
    """The row a job would have, for handles of jobs that never reach the database."""
    now = datetime.now(UTC)
    return JobRow(
        id=0, uuid=new.uuid, task=new.task, description=new.description, state=state,
        channel=new.channel, priority=new.priority, eta=new.eta_at or now, args=new.args,
        kwargs=new.kwargs, context=new.context, max_retries=new.max_retries, retries=0,
        retry_pattern=new.retry_pattern, timeout=new.timeout,
        attempt=0 if started is None else 1, result=result, error_type=None,
        error_message=None, progress=100 if state is State.DONE else 0, status_message=status,
        worker_id=None, created_at=started or now, started_at=started, ended_at=ended,
        identity_key=new.identity_key)


def run_inline(calls: Sequence[tuple[Task[Any, Any], NewJob]],
               results: dict[str, str] | None = None) -> list[Job[Any]]:
    """Run each call now, in order; an exception propagates to the caller.

    `results` (uuid -> result JSON) holds results of jobs run before, and receives these.
    """
    results = {} if results is None else results
    handles = []
    for task, new in calls:
        parents = {str(p): serialization.loads(results[str(p)])
                   for p in new.depends_on if str(p) in results}
        handle = _run_one(task, new, parents)
        results[str(new.uuid)] = handle._row.result or "null"
        handles.append(handle)
    return handles


def _run_one(task: Task[Any, Any], new: NewJob, parent_results: dict[str, Any]) -> Job[Any]:
    args, kwargs = serialization.decode_call(new.args, new.kwargs)
    status: list[str | None] = [None]

    def report(percent: int, message: str | None) -> None:
        status[0] = message

    started = datetime.now(UTC)
    context = JobContext(new.uuid, 1, serialization.loads(new.context), parent_results,
                         report, lambda: False)
    with running(context):
        result = task.fn(*args, **kwargs)
    ended = datetime.now(UTC)
    row = unstored_row(new, State.DONE, result=serialization.dumps(result, "the result"),
                       status=status[0], started=started, ended=ended)
    log = Attempt(attempt=1, started_at=started, ended_at=ended,
                  duration=(ended - started).total_seconds(), outcome=Outcome.SUCCESS,
                  result=result, error=None, error_type=None, error_message=None,
                  traceback=None, worker=None, pid=os.getpid(), memory_mb=None)
    return Job(None, row, inline_logs=[log])
