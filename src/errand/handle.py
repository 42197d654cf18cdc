"""`Job`: the handle of a stored job, and `Attempt`, one row of its history."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar
from uuid import UUID

from errand import ops, serialization
from errand.errors import InvalidStateError, JobNotFound, WaitTimeout
from errand.jobs import FINISHED, AttemptRow, JobRow, Outcome, State
from errand.storage.base import Backend

R = TypeVar("R")


class JobSource(Protocol):
    """Where a handle reads and changes its job: the application's backend."""

    @property
    def backend(self) -> Backend: ...


def error_text(error_type: str | None, error_message: str | None) -> str | None:
    if error_type is None:
        return None
    return f"{error_type}: {error_message}" if error_message else error_type


@dataclass(frozen=True)
class Attempt:
    """One try of a job (an entry of `job.logs`); readable as attributes or by key."""

    attempt: int
    started_at: datetime | None
    ended_at: datetime | None
    duration: float | None
    outcome: Outcome | None
    result: Any
    error: str | None
    error_type: str | None
    error_message: str | None
    traceback: str | None
    worker: str | None
    pid: int | None
    memory_mb: float | None

    @classmethod
    def from_row(cls, row: AttemptRow) -> Attempt:
        return cls(
            attempt=row.attempt, started_at=row.started_at, ended_at=row.ended_at,
            duration=row.duration, outcome=row.outcome,
            result=None if row.result is None else serialization.loads(row.result),
            error=error_text(row.error_type, row.error_message), error_type=row.error_type,
            error_message=row.error_message, traceback=row.traceback, worker=row.worker_id,
            pid=row.pid, memory_mb=row.memory_mb)

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)


class Job(Generic[R]):
    """A stored job. Attributes show the job as of the last `refresh()` (or creation)."""

    def __init__(self, source: JobSource | None, row: JobRow,
                 inline_logs: list[Attempt] | None = None) -> None:
        self._source = source
        self._row = row
        self._inline_logs = inline_logs

    # -- what the job is ---------------------------------------------------------------

    @property
    def uuid(self) -> UUID:
        return self._row.uuid

    @property
    def task(self) -> str:
        return self._row.task

    @property
    def description(self) -> str:
        return self._row.description

    @property
    def state(self) -> State:
        return self._row.state

    @property
    def channel(self) -> str:
        return self._row.channel

    @property
    def priority(self) -> int:
        return self._row.priority

    @property
    def eta(self) -> datetime:
        return self._row.eta

    @property
    def args(self) -> list[Any]:
        return serialization.loads(self._row.args)  # type: ignore[no-any-return]

    @property
    def kwargs(self) -> dict[str, Any]:
        return serialization.loads(self._row.kwargs)  # type: ignore[no-any-return]

    @property
    def context(self) -> dict[str, Any]:
        return serialization.loads(self._row.context)  # type: ignore[no-any-return]

    @property
    def identity_key(self) -> str | None:
        return self._row.identity_key

    @property
    def max_retries(self) -> int:
        return self._row.max_retries

    @property
    def retries(self) -> int:
        return self._row.retries

    @property
    def timeout(self) -> float | None:
        return self._row.timeout

    @property
    def attempt(self) -> int:
        """Tries so far (a try is counted when a worker claims the job)."""
        return self._row.attempt

    @property
    def result(self) -> R | None:
        text = self._row.result
        return None if text is None else serialization.loads(text)

    @property
    def error(self) -> str | None:
        """The last error, as `Type: message`."""
        return error_text(self._row.error_type, self._row.error_message)

    @property
    def error_type(self) -> str | None:
        return self._row.error_type

    @property
    def error_message(self) -> str | None:
        return self._row.error_message

    @property
    def progress(self) -> int:
        return self._row.progress

    @property
    def status_message(self) -> str | None:
        return self._row.status_message

    @property
    def worker(self) -> str | None:
        return self._row.worker_id

    @property
    def created_at(self) -> datetime:
        return self._row.created_at

    @property
    def started_at(self) -> datetime | None:
        return self._row.started_at

    @property
    def ended_at(self) -> datetime | None:
        return self._row.ended_at

    @property
    def finished(self) -> bool:
        return self._row.state in FINISHED

    # -- reading and changing it ---------------------------------------------------------

    def _backend(self) -> Backend:
        if self._source is None:
            raise InvalidStateError(
                f"job {self.uuid} ran inline (ERRAND_NO_DELAY) and was never stored")
        return self._source.backend

    def refresh(self) -> Job[R]:
        """Read the job's current row from the database."""
        if self._source is None:
            return self
        row = self._backend().get_job(self.uuid)
        if row is None:
            raise JobNotFound(f"job {self.uuid} no longer exists (purged?)")
        self._row = row
        return self

    def wait(self, timeout: float | None = None, progress: bool = False) -> Job[R]:
        """Block until the job is done, failed or cancelled; return the refreshed handle.

        `progress=True` draws a progress bar on the terminal while waiting.
        """
        if progress:
            # Imported here: the terminal library costs ~40 ms to import, paid only by
            # those who ask for a bar.
            from errand.progress_bar import ProgressBar
            with ProgressBar(f"{self.task} {str(self.uuid)[:8]}") as bar:
                return self._wait(timeout, bar.show)
        return self._wait(timeout, None)

    def _wait(self, timeout: float | None, show: Any) -> Job[R]:
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.005
        while True:
            self.refresh()
            if show is not None:
                show(self.progress, self.status_message, self.state)
            if self.finished:
                return self
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise WaitTimeout(
                    f"job {self.uuid} ({self.task}) is still {self.state} after {timeout} s")
            time.sleep(pause if deadline is None else min(pause, deadline - now))
            pause = min(pause * 1.5, 0.25)

    def cancel(self) -> Job[R]:
        """Cancel the job if it has not finished; a running one is asked to stop, then killed."""
        ops.change_one(self._backend(), "cancel", self.uuid)
        return self.refresh()

    def requeue(self) -> Job[R]:
        """Run a failed, cancelled or done job again (back to pending, retries reset)."""
        ops.change_one(self._backend(), "requeue", self.uuid)
        return self.refresh()

    def set_done(self, result: Any = None) -> Job[R]:
        """Mark a failed, pending or waiting job done by hand, with `result`."""
        encoded = serialization.dumps(result, "result")
        ops.change_one(self._backend(), "set-done", self.uuid, encoded)
        return self.refresh()

    @property
    def logs(self) -> list[Attempt]:
        """Every try, oldest first (read from the database on each access)."""
        if self._inline_logs is not None:
            return list(self._inline_logs)
        return [Attempt.from_row(row) for row in self._backend().list_attempts(self._row.id)]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Job) and other.uuid == self.uuid

    def __hash__(self) -> int:
        return hash(self.uuid)

    def __repr__(self) -> str:
        return f"<Job {self.uuid} {self.task} {self.state}>"
