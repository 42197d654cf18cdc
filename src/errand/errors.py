"""Exceptions: the three a job raises to steer itself, and errand's own errors.

errand's own errors all derive from `ErrandError`, so the CLI can print them as one line
without a traceback while anything else still surfaces as a bug.
"""

from __future__ import annotations


class RetryableJobError(Exception):
    """Raised inside a job: try again later.

    `seconds` overrides the retry pattern for this retry; `ignore_retry=True` retries
    without counting the try against `max_retries`.
    """

    def __init__(self, message: str = "", seconds: float | None = None,
                 ignore_retry: bool = False) -> None:
        super().__init__(message)
        self.seconds = seconds
        self.ignore_retry = ignore_retry


class FailedJobError(Exception):
    """Raised inside a job: fail now, without retrying."""


class CancelJob(Exception):
    """Raised inside a job: the work is no longer relevant; the job ends `cancelled`."""


class ErrandError(Exception):
    """Base of errand's own errors: a clear one-line message, no traceback needed."""


class ConfigurationError(ErrandError, ValueError):
    """A setting, option or argument given to errand is not valid."""


class ArgumentsError(ErrandError, TypeError):
    """A task was called with arguments its function cannot accept."""


class SerializationError(ErrandError, TypeError):
    """A value cannot be stored as JSON (the message names where it sits)."""


class PayloadTooLarge(ErrandError, ValueError):
    """A job's arguments are over the size limit (`ERRAND_MAX_PAYLOAD`)."""


class UnknownTaskError(ErrandError, LookupError):
    """No task of that name is registered in the application."""


class JobNotFound(ErrandError, LookupError):
    """No job has that uuid."""


class InvalidStateError(ErrandError):
    """The operation does not apply to a job in its current state."""


class DatabaseError(ErrandError):
    """The database cannot be reached or refused an operation errand needed."""


class WaitTimeout(ErrandError, TimeoutError):
    """`Job.wait(timeout=...)` ran out before the job finished."""
