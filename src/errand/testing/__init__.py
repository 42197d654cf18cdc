"""Test kit: `trap_jobs()` catches jobs before they reach the database.

```python
with trap_jobs() as trap:
    code_under_test()
    trap.assert_jobs_count(1, only=send_email)
    trap.assert_enqueued_job(send_email, args=("a@x",), kwargs={"subject": "Hi"},
                             properties={"priority": 15})
    trap.perform_enqueued_jobs()      # runs them here, parents before children
```
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from errand import serialization
from errand.app import SUBMIT_HOOKS
from errand.handle import Job
from errand.inline import run_inline, unstored_row
from errand.jobs import NewJob, State
from errand.options import split_eta
from errand.retry import decode_pattern
from errand.tasks import Task

__all__ = ["JobsTrap", "TrappedJob", "trap_jobs"]


@dataclass
class TrappedJob:
    """A job caught by the trap: what was asked, and the handle the caller received."""

    task: Task[Any, Any]
    new: NewJob
    job: Job[Any]

    @property
    def args(self) -> tuple[Any, ...]:
        return tuple(serialization.loads(self.new.args))

    @property
    def kwargs(self) -> dict[str, Any]:
        return serialization.loads(self.new.kwargs)  # type: ignore[no-any-return]

    @property
    def properties(self) -> dict[str, Any]:
        new = self.new
        return {
            "priority": new.priority, "channel": new.channel, "max_retries": new.max_retries,
            "retry_pattern": decode_pattern(new.retry_pattern), "timeout": new.timeout,
            "description": new.description, "identity_key": new.identity_key,
            "eta": new.eta_at if new.eta_at is not None else new.eta_in,
            "context": serialization.loads(new.context),
        }

    def __repr__(self) -> str:
        arguments = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"{self.task.name}({', '.join(arguments)})"


class JobsTrap:
    """The jobs enqueued inside `trap_jobs()`, in order, with assertions about them."""

    def __init__(self) -> None:
        self.enqueued_jobs: list[TrappedJob] = []

    def _catch(self, entries: list[tuple[Task[Any, Any], NewJob]]) -> list[Job[Any]]:
        handles = []
        for task, new in entries:
            state = State.WAIT_DEPENDENCIES if new.depends_on else State.PENDING
            handle: Job[Any] = Job(None, unstored_row(new, state))
            self.enqueued_jobs.append(TrappedJob(task, new, handle))
            handles.append(handle)
        return handles

    def _matching(self, only: Task[Any, Any] | None) -> list[TrappedJob]:
        return [t for t in self.enqueued_jobs if only is None or t.task.name == only.name]

    def assert_jobs_count(self, expected: int, only: Task[Any, Any] | None = None) -> None:
        found = self._matching(only)
        if len(found) != expected:
            what = f" of {only.name}" if only is not None else ""
            raise AssertionError(f"expected {expected} job(s){what}, {len(found)} enqueued: "
                                 f"{found!r}")

    def assert_enqueued_job(self, task: Task[Any, Any], args: Sequence[Any] = (),
                            kwargs: Mapping[str, Any] | None = None,
                            properties: Mapping[str, Any] | None = None) -> TrappedJob:
        """The enqueued job of `task` with exactly these arguments and these properties."""
        wanted_kwargs = dict(kwargs or {})
        for trapped in self._matching(task):
            if trapped.args != tuple(args) or trapped.kwargs != wanted_kwargs:
                continue
            actual = trapped.properties
            unknown = sorted(set(properties or {}) - set(actual))
            if unknown:
                raise AssertionError(f"unknown properties {unknown}; known: {sorted(actual)}")
            if all(actual[key] == _normal(key, value)
                   for key, value in (properties or {}).items()):
                return trapped
        wanted = ", ".join([repr(a) for a in args]
                           + [f"{k}={v!r}" for k, v in wanted_kwargs.items()])
        enqueued = "\n".join(f"  {t!r} {_shown(t.properties, properties)}"
                             for t in self.enqueued_jobs) or "  (nothing)"
        raise AssertionError(
            f"no job {task.name}({wanted}) with properties {dict(properties or {})} was "
            f"enqueued; enqueued instead:\n{enqueued}")

    def perform_enqueued_jobs(self) -> list[Job[Any]]:
        """Run the trapped jobs here, parents before children; their handles become done."""
        order = _parents_first([t for t in self.enqueued_jobs if not t.job.finished])
        results = {str(t.new.uuid): t.job._row.result or "null"
                   for t in self.enqueued_jobs if t.job.finished}
        for trapped in order:  # one at a time: a failure leaves the jobs before it done
            [result] = run_inline([(trapped.task, trapped.new)], results)
            trapped.job._row = result._row
            trapped.job._inline_logs = result._inline_logs
        return [t.job for t in order]


def _normal(key: str, value: Any) -> Any:
    """An expected property as the trap reports it (an eta as a timedelta is seconds)."""
    if key == "eta" and not isinstance(value, datetime):
        return split_eta(value)[1]
    return value


def _shown(actual: dict[str, Any], asked: Mapping[str, Any] | None) -> dict[str, Any]:
    """The properties worth showing next to a job: those the assertion asked about."""
    return {key: actual[key] for key in (asked or {}) if key in actual}


def _parents_first(trapped: list[TrappedJob]) -> list[TrappedJob]:
    by_uuid = {t.new.uuid: t for t in trapped}
    order: list[TrappedJob] = []
    placed: set[Any] = set()

    def place(item: TrappedJob) -> None:
        if item.new.uuid in placed:
            return
        placed.add(item.new.uuid)
        for parent in item.new.depends_on:
            if parent in by_uuid:
                place(by_uuid[parent])
        order.append(item)

    for item in trapped:
        place(item)
    return order


@contextmanager
def trap_jobs() -> Iterator[JobsTrap]:
    """Catch every job enqueued in this block, by any App and any thread of the process;
    nothing reaches the database."""
    trap = JobsTrap()
    SUBMIT_HOOKS.append(trap._catch)
    try:
        yield trap
    finally:
        SUBMIT_HOOKS.remove(trap._catch)
