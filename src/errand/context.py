"""`errand.current_job()`: what a running job knows about itself and how it reports back."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any
from uuid import UUID

from errand.errors import ConfigurationError


class JobContext:
    """The running job's side of errand: identity, context, parents' results, progress, stop."""

    def __init__(self, uuid: UUID, attempt: int, context: Mapping[str, Any],
                 parent_results: Mapping[str, Any],
                 report_progress: Callable[[int, str | None], None],
                 stop_requested: Callable[[], bool]) -> None:
        self.uuid = uuid
        self.attempt = attempt
        self.context = dict(context)
        self.parent_results = dict(parent_results)
        self._report_progress = report_progress
        self._stop_requested = stop_requested

    def set_progress(self, percent: float, message: str | None = None) -> None:
        """Report progress (0-100) and an optional status line, shown by `job.wait`."""
        if isinstance(percent, bool) or not isinstance(percent, int | float) \
                or not 0 <= percent <= 100:
            raise ConfigurationError(f"progress must be a number from 0 to 100, got {percent!r}")
        if message is not None and not isinstance(message, str):
            raise ConfigurationError(f"progress message must be a string, got {message!r}")
        self._report_progress(int(percent), message)

    def should_stop(self) -> bool:
        """True once a cancel or a worker shutdown asks this job to stop early."""
        return self._stop_requested()

    def __repr__(self) -> str:
        return f"<JobContext {self.uuid} attempt {self.attempt}>"


_current: ContextVar[JobContext | None] = ContextVar("errand_current_job", default=None)
# A worker's child process runs one job at a time; threads the job starts see it too.
_process_job: JobContext | None = None


def current_job() -> JobContext | None:
    """The job running in this context, or None outside a job."""
    return _current.get() or _process_job


@contextmanager
def running(job: JobContext, whole_process: bool = False) -> Iterator[JobContext]:
    """Make `job` the current job while the block runs."""
    global _process_job
    token = _current.set(job)
    if whole_process:
        _process_job = job
    try:
        yield job
    finally:
        _current.reset(token)
        if whole_process:
            _process_job = None
