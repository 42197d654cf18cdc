"""The one interface every storage backend implements: one method per operation.

The public API, the worker and the admin operations speak only to this `Backend`; a
concrete backend is reached through `errand.storage.open_backend(url)`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from uuid import UUID

from errand.channels import ChannelConfig
from errand.jobs import AttemptRow, ClaimedJob, Finish, JobRow, NewJob, State, WorkerRow


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """What a worker says about itself when it registers."""

    id: str
    host: str
    pid: int
    concurrency: int
    channels: str | None
    version: str


@dataclass(frozen=True, slots=True)
class StatRow:
    """Jobs of one task in one state, created within the period asked."""

    task: str
    state: State
    count: int
    avg_duration: float | None
    max_duration: float | None


@dataclass(frozen=True, slots=True)
class Progress:
    """A progress report of a running try, fenced by its attempt like a finish."""

    id: int
    attempt: int
    percent: int
    message: str | None


class Waker(Protocol):
    """Tells an idle worker that work may be ready, as cheaply as the database allows."""

    poll_interval: float

    def fileno(self) -> int | None:
        """A descriptor that becomes readable on news, or None if the worker must poll."""

    def check(self) -> tuple[bool, bool]:
        """Consume news: (jobs may be ready, a running job may have been cancelled)."""

    def close(self) -> None: ...


class Backend(Protocol):
    dialect: str
    url: str
    # May a worker's claim run on a second connection while its ends are written? Only
    # where two writers work at once (PostgreSQL); SQLite's would wait for the first.
    claims_apart: bool

    # schema
    def migrate(self) -> list[int]:
        """Apply missing migrations (under a lock); return the versions applied."""

    def schema_version(self) -> int: ...

    # producer side
    def enqueue(self, jobs: Sequence[NewJob], connection: Any = None) -> list[JobRow]:
        """Store jobs in one round trip, in the caller's transaction if `connection` is given."""

    def enqueue_alike(self, count: int, jobs: Iterator[NewJob]) -> list[JobRow]:
        """Store `count` jobs that differ only in their uuid and arguments (no identity key,
        no dependencies), all or none. The backend may take each job from `jobs` only when
        it stores it, so the server stores a part while the next is built; an error from
        `jobs` then stores none of them."""

    def get_job(self, uuid: UUID) -> JobRow | None: ...

    def list_jobs(self, state: State | None = None, channel: str | None = None,
                  task: str | None = None, limit: int = 100) -> list[JobRow]:
        """Jobs, newest first."""

    def list_attempts(self, job_id: int) -> list[AttemptRow]:
        """Tries of a job, oldest first."""

    # admin
    def uuids_in_state(self, state: State) -> list[UUID]: ...

    def cancel(self, uuids: Sequence[UUID]) -> list[UUID]:
        """Cancel the jobs not yet finished; return those cancelled."""

    def requeue(self, uuids: Sequence[UUID]) -> list[UUID]:
        """Put finished jobs back to pending now; return those requeued."""

    def set_done(self, uuids: Sequence[UUID], result: str | None) -> list[UUID]:
        """Mark failed/pending/waiting jobs done by hand; return those changed."""

    def purge(self, older_than: float, states: Sequence[State], limit: int) -> int:
        """Delete up to `limit` jobs in `states` (and their tries) ended `older_than` s ago."""

    def channel_counts(self) -> list[tuple[str, State, int]]:
        """(channel, state, count) of the jobs not yet finished."""

    def stats(self, days: float) -> list[StatRow]: ...

    def list_workers(self) -> list[WorkerRow]: ...

    # worker side
    def register_worker(self, worker: WorkerInfo) -> None: ...

    def heartbeat(self, worker_id: str,
                  running: Sequence[tuple[int, int]]) -> list[int] | None:
        """Prove this worker alive; return ids of `running` (id, attempt) it no longer owns.

        None means the worker's row is gone (cleaned up while it slept): register again.
        """

    def release_unknown(self, worker_id: str, running: Sequence[tuple[int, int]]) -> list[int]:
        """Put back the jobs held for this worker that are not in `running` (claimed, but
        the answer was lost); return their ids."""

    def unclaim(self, worker_id: str, jobs: Sequence[tuple[int, int]]) -> None:
        """Give back jobs (id, attempt) claimed ahead but never started, as if never
        claimed."""

    def stop_worker(self, worker_id: str) -> None: ...

    def claim(self, worker_id: str, limit: int,
              channels: Mapping[str, ChannelConfig] | None = None) -> list[ClaimedJob]:
        """Take up to `limit` ready jobs: state enqueued, attempt + 1, a try row opened.

        With `channels`, only as many as their capacities allow, counted cluster-wide.
        """

    def exchange(self, worker_id: str, started: Sequence[tuple[int, int, int]],
                 progress: Sequence[Progress], finishes: Sequence[Finish], limit: int,
                 channels: Mapping[str, ChannelConfig] | None = None,
                 ) -> tuple[list[int], list[ClaimedJob]]:
        """A worker's round in one batch: mark_started, save_progress, finish, then claim."""

    def channel_settings(self) -> dict[str, ChannelConfig]:
        """Channel capacities and pauses as stored (shared by every worker)."""

    def save_channel(self, config: ChannelConfig) -> None:
        """Store a channel's capacity (its paused flag is left as it is)."""

    def pause_channel(self, name: str, paused: bool) -> None: ...

    def mark_started(self, worker_id: str, started: Sequence[tuple[int, int, int]]) -> None:
        """(id, attempt, pid) handed to a child: state started."""

    def finish(self, worker_id: str, finishes: Sequence[Finish]) -> list[int]:
        """Write settled tries; return the ids whose job row this worker still owned."""

    def save_progress(self, updates: Sequence[Progress]) -> None: ...

    def next_eta(self) -> float | None:
        """Seconds until the earliest pending job is due (0 if one is due now), None if none.

        Read-only, so an idle worker polls it without taking a write lock.
        """

    def rescue(self, lease: float, alive: Sequence[str] = ()) -> list[int]:
        """Return the tries of workers silent for `lease` s to pending (or failed);
        workers in `alive` are known to be running (seen on this host) and are spared."""

    def waker(self) -> Waker: ...

    def close(self) -> None: ...
