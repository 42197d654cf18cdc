"""Job states, try outcomes, the transitions between states, and the rows storage returns.

Pure data: storage, the worker and the admin operations all read the same tables here,
so what a user may do to a job in each state is written down once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from uuid import UUID


class State(StrEnum):
    WAIT_DEPENDENCIES = "wait_dependencies"
    PENDING = "pending"
    ENQUEUED = "enqueued"
    STARTED = "started"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Outcome(StrEnum):
    """How one try ended (a row of `job.logs`)."""

    SUCCESS = "success"
    ERROR = "error"
    TIMEOUT = "timeout"
    CRASH = "crash"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"


FINISHED = frozenset({State.DONE, State.FAILED, State.CANCELLED})
RUNNING = frozenset({State.ENQUEUED, State.STARTED})

# What a user may do, by the state the job is in (SPEC section 3).
REQUEUE_FROM = frozenset({State.FAILED, State.CANCELLED, State.DONE})
CANCEL_FROM = frozenset({State.WAIT_DEPENDENCIES, State.PENDING, State.ENQUEUED, State.STARTED})
SET_DONE_FROM = frozenset({State.FAILED, State.PENDING, State.WAIT_DEPENDENCIES})

# Every transition a job can make, and what causes it. docs/states.md draws this table
# (a unit test keeps the two equal).
TRANSITIONS: dict[tuple[State, State], str] = {
    (State.WAIT_DEPENDENCIES, State.PENDING): "every parent done",
    (State.WAIT_DEPENDENCIES, State.CANCELLED): "cancel",
    (State.WAIT_DEPENDENCIES, State.DONE): "set done",
    (State.PENDING, State.ENQUEUED): "claimed by a worker",
    (State.PENDING, State.CANCELLED): "cancel",
    (State.PENDING, State.DONE): "set done",
    (State.ENQUEUED, State.STARTED): "handed to a child process",
    (State.ENQUEUED, State.PENDING): "worker lost or shut down",
    (State.ENQUEUED, State.FAILED): "worker lost, out of retries",
    (State.ENQUEUED, State.CANCELLED): "cancel",
    (State.STARTED, State.DONE): "success",
    (State.STARTED, State.PENDING): "retry, worker lost or shut down",
    (State.STARTED, State.FAILED): "error, or out of retries",
    (State.STARTED, State.CANCELLED): "cancel, or CancelJob",
    (State.FAILED, State.PENDING): "requeue",
    (State.FAILED, State.DONE): "set done",
    (State.CANCELLED, State.PENDING): "requeue",
    (State.DONE, State.PENDING): "requeue",
}


# Hot-path rows. NewJob, JobRow, ClaimedJob and Finish are built once per job on the
# enqueue, claim and finish paths, so they are plain slotted dataclasses, never changed
# after they are built. A frozen dataclass's __init__ sets each field through
# object.__setattr__: about 2.5 µs more per row, a tenth of a bulk enqueue's Python time.


@dataclass(slots=True)  # read-only: see 'Hot-path rows'
class NewJob:
    """A job about to be stored; arguments already encoded as JSON text.

    `eta_at` (an absolute time) wins over `eta_in` (seconds from the database's now), so
    relative delays are measured on the database clock, not the caller's.
    """

    uuid: UUID
    task: str
    args: str
    kwargs: str
    context: str
    description: str
    channel: str
    priority: int
    max_retries: int
    retry_pattern: str | None
    timeout: float | None
    eta_at: datetime | None = None
    eta_in: float = 0.0
    identity_key: str | None = None
    depends_on: tuple[UUID, ...] = ()


@dataclass(slots=True)  # read-only: see 'Hot-path rows'
class JobRow:
    """A stored job as storage reads it; JSON fields still encoded."""

    id: int
    uuid: UUID
    task: str
    description: str
    state: State
    channel: str
    priority: int
    eta: datetime
    args: str
    kwargs: str
    context: str
    max_retries: int
    retries: int
    retry_pattern: str | None
    timeout: float | None
    attempt: int
    result: str | None
    error_type: str | None
    error_message: str | None
    progress: int
    status_message: str | None
    worker_id: str | None
    created_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    identity_key: str | None = None


@dataclass(frozen=True, slots=True)
class AttemptRow:
    """One try of a job, as storage reads it."""

    job_id: int
    attempt: int
    worker_id: str | None
    pid: int | None
    started_at: datetime | None
    ended_at: datetime | None
    duration: float | None
    outcome: Outcome | None
    result: str | None
    error_type: str | None
    error_message: str | None
    traceback: str | None
    memory_mb: float | None


@dataclass(slots=True)  # read-only: see 'Hot-path rows'
class ClaimedJob:
    """What a worker needs to run one try of a job it has just claimed."""

    id: int
    uuid: UUID
    task: str
    args: str
    kwargs: str
    context: str
    attempt: int
    retries: int
    max_retries: int
    retry_pattern: str | None
    timeout: float | None
    channel: str
    parent_results: dict[str, str | None] = field(default_factory=dict)
    has_children: bool = False  # jobs wait for it: its end may release them


@dataclass(slots=True)  # read-only: see 'Hot-path rows'
class Finish:
    """The settled end of one try, written by the worker in a batch.

    `attempt` is the fencing token: the write applies only if the job is still this
    worker's try `attempt`; otherwise (rescued, cancelled) the job row is left alone.
    """

    id: int
    attempt: int
    state: State
    outcome: Outcome
    retries: int
    delay: float = 0.0
    result: str | None = None
    error_type: str | None = None
    error_message: str | None = None
    traceback: str | None = None
    duration: float | None = None
    memory_mb: float | None = None
    has_children: bool = False
    pid: int | None = None  # the job process that ran the try
    start_unwritten: bool = False  # the start is not written yet: write it too, `duration` ago


@dataclass(frozen=True, slots=True)
class WorkerRow:
    id: str
    host: str
    pid: int
    started_at: datetime
    heartbeat_at: datetime
    heartbeat_age: float
    concurrency: int
    state: str
    jobs_done: int
    running: int
