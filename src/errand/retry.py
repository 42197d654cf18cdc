"""How the end of one try settles a job: done, retried later, failed or cancelled.

Kept pure so the rules of SPEC section 4 (retry pattern, max_retries, ignore_retry) are
tested without a worker, and the worker only writes down what this module decided.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from errand.errors import ConfigurationError
from errand.jobs import ClaimedJob, Finish, Outcome, State

DEFAULT_RETRY_DELAY = 600.0
"""Seconds before a retry when no pattern entry applies (10 minutes, as queue_job)."""


class Verdict(StrEnum):
    """What the try asks for, before retries are counted."""

    SUCCESS = "success"
    RETRY = "retry"
    FAIL = "fail"
    CANCEL = "cancel"
    REQUEUE = "requeue"  # interrupted by a shutdown: run again at once, not counted


@dataclass(slots=True)
class TryEnd:
    """How one try ended, as the worker observed it. Once per job, so not frozen (see
    'Hot-path rows' in jobs.py): only the job process completes one, with its duration and
    peak memory, before sending it."""

    verdict: Verdict
    outcome: Outcome
    result: str | None = None
    error_type: str | None = None
    error_message: str | None = None
    traceback: str | None = None
    seconds: float | None = None
    ignore_retry: bool = False
    duration: float | None = None
    memory_mb: float | None = None


def validate_pattern(pattern: Mapping[int, float] | None) -> dict[int, float] | None:
    """Check a retry pattern given by a user: `{from_try: seconds}`, tries from 1."""
    if pattern is None:
        return None
    if not isinstance(pattern, Mapping) or not pattern:
        raise ConfigurationError(
            f"retry_pattern must be a non-empty dict {{from_try: seconds}}, got {pattern!r}")
    checked: dict[int, float] = {}
    for key, value in pattern.items():
        if isinstance(key, bool) or not isinstance(key, int) or key < 1:
            raise ConfigurationError(
                f"retry_pattern keys are try numbers (int >= 1), got {key!r}")
        if isinstance(value, bool) or not isinstance(value, int | float) \
                or not math.isfinite(value) or value < 0:
            raise ConfigurationError(
                f"retry_pattern values are seconds (>= 0), got {value!r} for try {key}")
        checked[key] = float(value)
    return dict(sorted(checked.items()))


def encode_pattern(pattern: Mapping[int, float] | None) -> str | None:
    return None if pattern is None else json.dumps({str(k): v for k, v in pattern.items()})


def decode_pattern(text: str | None) -> dict[int, float] | None:
    if text is None:
        return None
    return {int(k): float(v) for k, v in json.loads(text).items()}


def retry_delay(pattern: Mapping[int, float] | None, retry_number: int) -> float:
    """Seconds to wait before retry number `retry_number` (1 = the first retry).

    `{1: 10, 5: 60}` waits 10 s before retries 1-4 and 60 s from the fifth on.
    """
    delay = DEFAULT_RETRY_DELAY
    for from_try, seconds in sorted((pattern or {}).items()):
        if retry_number >= from_try:
            delay = seconds
        else:
            break
    return delay


def settle(job: ClaimedJob, end: TryEnd, pid: int | None = None,
           start_unwritten: bool = False) -> Finish:
    """Decide the job's next state from how its try ended; carry the pid of the process
    that ran it, and whether its start is still to be written."""
    state, retries, delay = _next_state(job, end)
    return Finish(
        id=job.id, attempt=job.attempt, state=state, outcome=end.outcome, retries=retries,
        delay=delay, result=end.result, error_type=end.error_type,
        error_message=end.error_message,
        traceback=end.traceback, duration=end.duration, memory_mb=end.memory_mb,
        has_children=job.has_children, pid=pid, start_unwritten=start_unwritten)


def _next_state(job: ClaimedJob, end: TryEnd) -> tuple[State, int, float]:
    if end.verdict is Verdict.SUCCESS:
        return State.DONE, job.retries, 0.0
    if end.verdict is Verdict.CANCEL:
        return State.CANCELLED, job.retries, 0.0
    if end.verdict is Verdict.FAIL:
        return State.FAILED, job.retries, 0.0
    if end.verdict is Verdict.REQUEUE:
        return State.PENDING, job.retries, 0.0
    pattern = decode_pattern(job.retry_pattern)
    if end.ignore_retry:
        delay = end.seconds if end.seconds is not None else retry_delay(pattern, job.retries + 1)
        return State.PENDING, job.retries, delay
    if job.max_retries and job.retries >= job.max_retries:
        return State.FAILED, job.retries, 0.0
    retries = job.retries + 1
    delay = end.seconds if end.seconds is not None else retry_delay(pattern, retries)
    return State.PENDING, retries, delay
