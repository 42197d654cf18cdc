"""Build the rows of `errand.jobs` from database tuples, and the JSON batches sent down.

Both dialects select the same columns in the same order; only the way a time or a uuid
arrives differs, so each backend passes its converters.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from errand.jobs import (
    AttemptRow,
    ClaimedJob,
    Finish,
    JobRow,
    NewJob,
    Outcome,
    State,
    WorkerRow,
)

Convert = Callable[[Any], Any]
_JSON = json.JSONEncoder(ensure_ascii=False)  # json.dumps with an option builds one per call


def job_row(row: Sequence[Any], when: Convert, uuid: Convert) -> JobRow:
    return JobRow(
        id=row[0], uuid=uuid(row[1]), task=row[2], description=row[3], state=State(row[4]),
        channel=row[5], priority=row[6], eta=when(row[7]), args=row[8], kwargs=row[9],
        context=row[10], max_retries=row[11], retries=row[12], retry_pattern=row[13],
        timeout=row[14], attempt=row[15], result=row[16], error_type=row[17],
        error_message=row[18], progress=row[19], status_message=row[20], worker_id=row[21],
        created_at=when(row[22]), started_at=when(row[23]), ended_at=when(row[24]),
        identity_key=row[25])


def attempt_row(row: Sequence[Any], when: Convert) -> AttemptRow:
    return AttemptRow(
        job_id=row[0], attempt=row[1], worker_id=row[2], pid=row[3], started_at=when(row[4]),
        ended_at=when(row[5]), duration=row[6], outcome=Outcome(row[7]) if row[7] else None,
        result=row[8], error_type=row[9], error_message=row[10], traceback=row[11],
        memory_mb=row[12])


def claimed_job(row: Sequence[Any], uuid: Convert,
                parents: dict[str, str | None]) -> ClaimedJob:
    return ClaimedJob(
        id=row[0], uuid=uuid(row[1]), task=row[2], args=row[3], kwargs=row[4], context=row[5],
        attempt=row[6], retries=row[7], max_retries=row[8], retry_pattern=row[9],
        timeout=row[10], channel=row[11], parent_results=parents, has_children=row[13])


def worker_row(row: Sequence[Any], when: Convert) -> WorkerRow:
    return WorkerRow(
        id=row[0], host=row[1], pid=row[2], started_at=when(row[3]), heartbeat_at=when(row[4]),
        heartbeat_age=row[5], concurrency=row[6], state=row[7], jobs_done=row[8],
        running=row[9])


def _embed(text: str | None, nested: bool) -> str:
    """Place stored JSON text in a batch document: as JSON itself, or as a JSON string.

    PostgreSQL unpacks nested JSON into jsonb columns; SQLite's json_extract would unquote
    a nested string, so SQLite gets the text as a string and stores it verbatim.
    """
    if text is None:
        return "null"
    return text if nested else _JSON.encode(text)


def new_jobs_document(jobs: Sequence[NewJob], eta_at: Callable[[datetime], Any],
                      nested: bool) -> str:
    """One JSON array of the jobs to insert; arguments (already JSON) are spliced in."""
    parts = []
    for job in jobs:
        scalars = _JSON.encode({
            "uuid": str(job.uuid), "task": job.task, "description": job.description,
            "channel": job.channel, "priority": job.priority,
            "eta_at": None if job.eta_at is None else eta_at(job.eta_at),
            "eta_in": job.eta_in, "max_retries": job.max_retries,
            "timeout": job.timeout, "identity_key": job.identity_key,
            "waits": bool(job.depends_on),
        })
        parts.append(
            f'{scalars[:-1]},"args":{_embed(job.args, nested)},'
            f'"kwargs":{_embed(job.kwargs, nested)},"context":{_embed(job.context, nested)},'
            f'"retry_pattern":{_embed(job.retry_pattern, nested)}}}')
    return "[" + ",".join(parts) + "]"


def new_job_row(job: NewJob, job_id: int, eta: datetime, created_at: datetime) -> JobRow:
    """The row a job was just stored as: what was sent, plus what the database chose (id,
    eta, created_at), instead of reading all 26 columns back. JSON fields keep the text
    sent (PostgreSQL would return it reformatted, with the same values). Positional
    arguments, in JobRow's field order: a quarter cheaper than keywords, once per job."""
    return JobRow(job_id, job.uuid, job.task, job.description,
                  State.WAIT_DEPENDENCIES if job.depends_on else State.PENDING, job.channel,
                  job.priority, eta, job.args, job.kwargs, job.context, job.max_retries, 0,
                  job.retry_pattern, job.timeout, 0, None, None, None, 0, None, None,
                  created_at, None, None, job.identity_key)


def _copy_text(value: str) -> str:
    """A text field of COPY's text format: backslash, tab, newline and CR escaped."""
    if "\\" in value or "\t" in value or "\n" in value or "\r" in value:
        return (value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
                .replace("\r", "\\r"))
    return value


def copy_lines(jobs: Sequence[NewJob], ids: Sequence[int], etas: Sequence[datetime],
               created_at: datetime) -> str:
    """Jobs (no identity key, no dependencies) as COPY text, in the column order of
    `copy_jobs`; `ids` and `etas` are the jobs' own, in order. The jobs of a batch share
    all but their uuid and arguments, as a rule: the text around those is formatted once
    for each set of shared fields."""
    created = created_at.isoformat()
    around: dict[tuple[Any, ...], tuple[str, str]] = {}
    lines = []
    for job, job_id, eta in zip(jobs, ids, etas, strict=True):
        key = (job.task, job.description, job.channel, job.priority, eta, job.context,
               job.max_retries, job.retry_pattern, job.timeout)
        parts = around.get(key)
        if parts is None:
            parts = around[key] = _copy_around(job, eta, created)
        lines.append(  # the uuid as 32 hex digits, which PostgreSQL reads too: 4x cheaper
            f"{job_id}\t{job.uuid.hex}\t{parts[0]}\t{_copy_text(job.args)}\t"
            f"{_copy_text(job.kwargs)}\t{parts[1]}\n")
    return "".join(lines)


def _copy_around(job: NewJob, eta: datetime, created: str) -> tuple[str, str]:
    """The COPY text of a job's fields before its arguments, and after them."""
    pattern = r"\N" if job.retry_pattern is None else _copy_text(job.retry_pattern)
    timeout = r"\N" if job.timeout is None else repr(job.timeout)
    return (f"{_copy_text(job.task)}\t{_copy_text(job.description)}\tpending\t"
            f"{_copy_text(job.channel)}\t{job.priority}\t{eta.isoformat()}",
            f"{_copy_text(job.context)}\t{job.max_retries}\t{pattern}\t{timeout}\t{created}")


def dependencies_document(jobs: Sequence[NewJob]) -> str | None:
    """Edges of a graph of new jobs (`job` waits for `parent`), or None if there are none."""
    edges = [{"job": str(job.uuid), "parent": str(parent)}
             for job in jobs for parent in job.depends_on]
    return json.dumps(edges) if edges else None


def finishes_document(finishes: Sequence[Finish], nested: bool) -> str:
    parts = []
    for f in finishes:
        scalars = _JSON.encode({
            "id": f.id, "attempt": f.attempt, "state": f.state.value,
            "outcome": f.outcome.value, "retries": f.retries, "delay": f.delay,
            "error_type": f.error_type, "error_message": f.error_message,
            "traceback": f.traceback, "duration": f.duration, "memory_mb": f.memory_mb,
            "pid": f.pid, "start_unwritten": f.start_unwritten,
        })
        parts.append(f'{scalars[:-1]},"result":{_embed(f.result, nested)}}}')
    return "[" + ",".join(parts) + "]"


def records_document(names: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    return _JSON.encode([dict(zip(names, row, strict=True)) for row in rows])


def as_uuid(value: Any) -> UUID:
    return value if isinstance(value, UUID) else UUID(value)
