"""Operations on stored jobs that the Job handle, the CLI and the dashboard share."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from uuid import UUID

from errand.channels import ChannelConfig, parse_channels
from errand.errors import ConfigurationError, InvalidStateError, JobNotFound
from errand.jobs import CANCEL_FROM, FINISHED, REQUEUE_FROM, SET_DONE_FROM, State, WorkerRow
from errand.storage.base import Backend, StatRow

_ALLOWED = {
    "cancel": CANCEL_FROM,
    "requeue": REQUEUE_FROM,
    "set-done": SET_DONE_FROM,
}


@dataclass
class ChangeReport:
    """Which jobs an operation changed, and why each of the others was left alone."""

    changed: list[UUID] = field(default_factory=list)
    refused: dict[UUID, str] = field(default_factory=dict)


def parse_uuid(text: str) -> UUID:
    try:
        return UUID(text.strip())
    except ValueError:
        raise ConfigurationError(f"{text!r} is not a job uuid") from None


def change_jobs(backend: Backend, action: str, uuids: Sequence[UUID],
                result: str | None = None) -> ChangeReport:
    """Cancel, requeue or set-done jobs; a job in a state the action skips is reported."""
    if action not in _ALLOWED:
        raise ConfigurationError(f"unknown action {action!r}; use one of {', '.join(_ALLOWED)}")
    apply: Callable[[Sequence[UUID]], list[UUID]]
    if action == "cancel":
        apply = backend.cancel
    elif action == "requeue":
        apply = backend.requeue
    else:
        def apply(chosen: Sequence[UUID]) -> list[UUID]:
            return backend.set_done(chosen, result)
    report = ChangeReport(changed=apply(list(dict.fromkeys(uuids))))
    done = set(report.changed)
    allowed = ", ".join(sorted(_ALLOWED[action]))
    for uuid in uuids:
        if uuid in done or uuid in report.refused:
            continue
        row = backend.get_job(uuid)
        if row is None:
            report.refused[uuid] = "no such job"
        else:
            report.refused[uuid] = f"is {row.state}; {action} applies to jobs that are {allowed}"
    return report


def change_one(backend: Backend, action: str, uuid: UUID, result: str | None = None) -> None:
    """Like `change_jobs` for one job, raising when it was left alone."""
    report = change_jobs(backend, action, [uuid], result)
    if uuid in report.refused:
        reason = report.refused[uuid]
        if reason == "no such job":
            raise JobNotFound(f"no job {uuid}")
        raise InvalidStateError(f"job {uuid} {reason}")


PURGE_BATCH = 5000


def purge(backend: Backend, older_than: float, states: Sequence[State],
          on_batch: Callable[[int], None] | None = None) -> int:
    """Delete old finished jobs in batches, so no transaction grows huge; returns the count."""
    if not states or not set(states) <= FINISHED:
        raise ConfigurationError("purge deletes finished jobs only: done, failed or cancelled")
    total = 0
    while True:
        deleted = backend.purge(older_than, states, PURGE_BATCH)
        total += deleted
        if on_batch is not None:
            on_batch(total)
        if deleted < PURGE_BATCH:
            return total


@dataclass(frozen=True)
class ChannelStatus:
    name: str
    capacity: int | None
    sequential: bool
    paused: bool
    running: int
    pending: int
    waiting: int


class Channels:
    """`app.channels`: the app's configured channels, and their control at run time.

    Settings live in the database, so a change reaches every worker within a second.
    """

    def __init__(self, backend: Callable[[], Backend],
                 configured: dict[str, ChannelConfig]) -> None:
        self._backend = backend
        self.configured = configured

    def set(self, name: str, capacity: int, sequential: bool = False) -> None:
        """Set how many jobs of `name` (and its sub-channels) may run at once."""
        spec = f"{name}:{capacity}" + (":sequential" if sequential else "")
        [config] = parse_channels(spec).values()
        self._backend().save_channel(config)

    def pause(self, name: str) -> None:
        """Start no more jobs of `name` and its sub-channels (running ones go on)."""
        parse_channels(name)
        self._backend().pause_channel(name, True)

    def resume(self, name: str) -> None:
        parse_channels(name)
        self._backend().pause_channel(name, False)

    def status(self) -> list[ChannelStatus]:
        """Every channel configured or holding jobs, with its counts."""
        backend = self._backend()
        settings = {**self.configured, **backend.channel_settings()}
        counts: dict[str, dict[State, int]] = {}
        for channel, state, count in backend.channel_counts():
            counts.setdefault(channel, {})[state] = count
        statuses = []
        for name in sorted(set(settings) | set(counts) | {"root"}):
            config = settings.get(name)
            by_state = counts.get(name, {})
            statuses.append(ChannelStatus(
                name=name, capacity=None if config is None else config.capacity,
                sequential=bool(config and config.sequential),
                paused=bool(config and config.paused),
                running=by_state.get(State.ENQUEUED, 0) + by_state.get(State.STARTED, 0),
                pending=by_state.get(State.PENDING, 0),
                waiting=by_state.get(State.WAIT_DEPENDENCIES, 0)))
        return statuses

    def __repr__(self) -> str:
        return f"<Channels {', '.join(self.configured) or 'root (no cap)'}>"


@dataclass(frozen=True)
class TaskStats:
    """Jobs of one task created in the period: counts by state and run times."""

    task: str
    counts: dict[State, int]
    avg_duration: float | None
    max_duration: float | None

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def failure_rate(self) -> float | None:
        finished = sum(n for state, n in self.counts.items() if state in FINISHED)
        return None if not finished else self.counts.get(State.FAILED, 0) / finished


def task_stats(rows: Sequence[StatRow]) -> list[TaskStats]:
    """Fold per-(task, state) rows into one line per task; durations are of done jobs."""
    by_task: dict[str, dict[State, StatRow]] = {}
    for row in rows:
        by_task.setdefault(row.task, {})[row.state] = row
    stats = []
    for task, states in sorted(by_task.items()):
        done = states.get(State.DONE)
        stats.append(TaskStats(
            task=task, counts={state: row.count for state, row in states.items()},
            avg_duration=done.avg_duration if done else None,
            max_duration=done.max_duration if done else None))
    return stats


def worker_status(worker: WorkerRow, lease: float) -> str:
    """running, stopped, or dead (declared so, or silent for longer than a lease)."""
    if worker.state == "running" and worker.heartbeat_age > lease:
        return "dead"
    return worker.state
