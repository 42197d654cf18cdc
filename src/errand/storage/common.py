"""What both SQL backends share: each operation is a named query plus the same row handling.

A dialect supplies its queries file, how it runs a read and a write, and how times, uuids
and lists travel; everything else about an operation is written once here.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar
from uuid import UUID

from errand.channels import ChannelConfig, ChannelPlan
from errand.errors import ConfigurationError, JobNotFound
from errand.jobs import (
    CANCEL_FROM,
    REQUEUE_FROM,
    SET_DONE_FROM,
    AttemptRow,
    ClaimedJob,
    Finish,
    JobRow,
    NewJob,
    State,
    WorkerRow,
)
from errand.storage import rows
from errand.storage.base import Progress, StatRow, WorkerInfo

T = TypeVar("T")
Rows = list[tuple[Any, ...]]
Run = Callable[[str, dict[str, Any]], tuple[Rows, int]]
"""Runs a named block inside a transaction: (rows of its first statement, rowcount)."""


class SqlBackend(ABC):
    """Operations of `errand.storage.base.Backend` over a dialect's named queries."""

    dialect: str
    url: str
    where: str  # the database, for messages: "SQLite database /x.db"
    queries: dict[str, list[str]]
    nested_json: bool
    latest_version: int
    applied_on_open: list[int]
    gate_says_closed = False  # does claim_gated end with a row of NULLs when it declines?
    claims_apart = False

    # -- what a dialect provides -------------------------------------------------------

    @abstractmethod
    def _read(self, name: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        """Run a read-only query."""

    @abstractmethod
    def _transaction(self, work: Callable[[Run], T]) -> T:
        """Call `work` inside one write transaction (retried whole if the database is busy)."""

    @abstractmethod
    def _on_connection(self, connection: Any, work: Callable[[Run], T]) -> T:
        """Call `work` on the caller's connection, inside the caller's transaction."""

    def _write(self, name: str, params: dict[str, Any]) -> tuple[Rows, int]:
        """Run a named block in one transaction: (rows of its first statement, rowcount)."""
        return self._transaction(lambda run: run(name, params))

    @abstractmethod
    def _apply_migrations(self) -> list[int]:
        """Apply the missing migrations under the schema lock; return their versions."""

    @abstractmethod
    def _when(self, value: Any) -> datetime | None:
        """A stored time as an aware datetime."""

    @abstractmethod
    def _eta_param(self, value: datetime) -> Any:
        """An absolute eta as the batch document carries it."""

    @abstractmethod
    def _list_param(self, values: Sequence[Any]) -> Any:
        """A list of values (uuids, states) as a query parameter."""

    # -- schema ----------------------------------------------------------------------

    def _ensure_schema(self) -> None:
        """Create or upgrade the schema on first use, so the quick start needs no step."""
        exists = self._read("schema_table_exists", {})[0][0]
        version = self.schema_version() if exists else 0
        if version > self.latest_version:
            raise ConfigurationError(
                f"the errand schema in {self.where} is version {version}, newer than this "
                f"errand knows ({self.latest_version}); upgrade errand")
        self.applied_on_open = self._apply_migrations() if version < self.latest_version else []

    def migrate(self) -> list[int]:
        """The migrations this backend applied: when it opened, and now."""
        applied = self.applied_on_open + self._apply_migrations()
        self.applied_on_open = []
        return applied

    def schema_version(self) -> int:
        return int(self._read("schema_version", {})[0][0])

    # -- producer side ---------------------------------------------------------------

    def enqueue(self, jobs: Sequence[NewJob], connection: Any = None) -> list[JobRow]:
        if not jobs:
            return []
        params = {"jobs": rows.new_jobs_document(jobs, self._eta_param, self.nested_json)}
        edges = rows.dependencies_document(jobs)

        def work(run: Run) -> Rows:
            inserted, _ = run("enqueue_jobs", params)
            if edges is not None:
                run("add_dependencies", {"dependencies": edges})
            return inserted

        if connection is not None:
            inserted = self._on_connection(connection, work)
        elif edges is None:
            inserted, _ = self._write("enqueue_jobs", params)  # one statement: no BEGIN/COMMIT
        else:
            inserted = self._transaction(work)
        return self._match_identities(jobs, self._inserted(jobs, inserted))

    def enqueue_alike(self, count: int, jobs: Iterator[NewJob]) -> list[JobRow]:
        return self.enqueue(list(jobs))

    def _inserted(self, jobs: Sequence[NewJob], inserted: Rows) -> list[JobRow]:
        """The rows of the jobs enqueue_jobs inserted, from what it returned (whole rows)."""
        return self._job_rows(inserted)

    def _match_identities(self, jobs: Sequence[NewJob], found: list[JobRow]) -> list[JobRow]:
        """One row per job asked for: a job skipped for its identity key gets the job it
        matched (stored earlier, or earlier in this same batch); a job skipped because its
        uuid was stored already (a retried insert whose first run went through) is read."""
        by_uuid = {row.uuid: row for row in found}
        by_key: dict[str | None, JobRow] = {
            row.identity_key: row for row in found if row.identity_key is not None}
        skipped = [job for job in jobs if job.uuid not in by_uuid]
        missing = sorted({job.identity_key for job in skipped
                          if job.identity_key is not None and job.identity_key not in by_key})
        if missing:
            for row in self._job_rows(self._read("find_by_identity",
                                                 {"keys": self._list_param(missing)})):
                by_key[row.identity_key] = row
        for job in skipped:
            if job.identity_key is None:
                read = self.get_job(job.uuid)
                if read is None:  # stored, then purged before this read: nothing to return
                    raise JobNotFound(f"job {job.uuid} was stored, then deleted at once")
                by_uuid[job.uuid] = read
        return [by_uuid.get(job.uuid) or by_key[job.identity_key] for job in jobs]

    def _job_rows(self, found: list[tuple[Any, ...]]) -> list[JobRow]:
        return [rows.job_row(row, self._when, rows.as_uuid) for row in found]

    def get_job(self, uuid: UUID) -> JobRow | None:
        found = self._read("get_job", {"uuid": self._uuid_param(uuid)})
        return self._job_rows(found)[0] if found else None

    def list_jobs(self, state: State | None = None, channel: str | None = None,
                  task: str | None = None, limit: int = 100) -> list[JobRow]:
        params = {"state": None if state is None else State(state).value, "channel": channel,
                  "task": task, "limit": limit}
        return self._job_rows(self._read("list_jobs", params))

    def list_attempts(self, job_id: int) -> list[AttemptRow]:
        return [rows.attempt_row(row, self._when)
                for row in self._read("list_attempts", {"job_id": job_id})]

    def _uuid_param(self, uuid: UUID) -> Any:
        return uuid

    # -- admin -----------------------------------------------------------------------

    def uuids_in_state(self, state: State) -> list[UUID]:
        return [rows.as_uuid(row[0])
                for row in self._read("uuids_in_state", {"state": State(state).value})]

    def _change(self, name: str, uuids: Sequence[UUID], allowed: frozenset[State],
                **extra: Any) -> list[UUID]:
        if not uuids:
            return []
        params = {"uuids": self._list_param([str(u) for u in uuids]),
                  "from_states": self._list_param(sorted(s.value for s in allowed)), **extra}
        changed, _ = self._write(name, params)
        return [rows.as_uuid(row[0]) for row in changed]

    def cancel(self, uuids: Sequence[UUID]) -> list[UUID]:
        return self._change("cancel_jobs", uuids, CANCEL_FROM)

    def requeue(self, uuids: Sequence[UUID]) -> list[UUID]:
        return self._change("requeue_jobs", uuids, REQUEUE_FROM)

    def set_done(self, uuids: Sequence[UUID], result: str | None) -> list[UUID]:
        if not uuids:
            return []
        params = {"uuids": self._list_param([str(u) for u in uuids]), "result": result,
                  "from_states": self._list_param(sorted(s.value for s in SET_DONE_FROM))}

        def work(run: Run) -> Rows:
            done, _ = run("set_jobs_done", params)
            if done:
                run("release_children", {"ids": self._list_param([row[1] for row in done])})
            return done

        return [rows.as_uuid(row[0]) for row in self._transaction(work)]

    def purge(self, older_than: float, states: Sequence[State], limit: int) -> int:
        params = {"older_than": older_than, "limit": limit,
                  "states": self._list_param([State(s).value for s in states])}
        _, count = self._write("purge_jobs", params)
        return count

    def channel_counts(self) -> list[tuple[str, State, int]]:
        return [(row[0], State(row[1]), row[2]) for row in self._read("channel_counts", {})]

    def stats(self, days: float) -> list[StatRow]:
        return [StatRow(task=row[0], state=State(row[1]), count=row[2], avg_duration=row[3],
                        max_duration=row[4])
                for row in self._read("stats", {"seconds": days * 86400.0})]

    def list_workers(self) -> list[WorkerRow]:
        return [rows.worker_row(row, self._when) for row in self._read("list_workers", {})]

    # -- worker side -----------------------------------------------------------------

    def register_worker(self, worker: WorkerInfo) -> None:
        self._write("register_worker", {
            "id": worker.id, "host": worker.host, "pid": worker.pid,
            "concurrency": worker.concurrency, "channels": worker.channels,
            "version": worker.version})

    def heartbeat(self, worker_id: str,
                  running: Sequence[tuple[int, int]]) -> list[int] | None:
        touched, _ = self._write("touch_worker", {"worker": worker_id})
        if not touched:
            return None
        if not running:
            return []
        document = rows.records_document(("id", "attempt"), running)
        return [row[0] for row in self._read("lost_jobs",
                                             {"worker": worker_id, "running": document})]

    def release_unknown(self, worker_id: str, running: Sequence[tuple[int, int]]) -> list[int]:
        document = rows.records_document(("id", "attempt"), running)
        released, _ = self._write("release_unknown", {"worker": worker_id, "running": document})
        return [row[0] for row in released]

    def unclaim(self, worker_id: str, jobs: Sequence[tuple[int, int]]) -> None:
        if jobs:
            self._write("unclaim_jobs", {"worker": worker_id, "jobs": rows.records_document(
                ("id", "attempt"), jobs)})

    def stop_worker(self, worker_id: str) -> None:
        self._write("stop_worker", {"worker": worker_id})

    def claim(self, worker_id: str, limit: int,
              channels: Mapping[str, ChannelConfig] | None = None) -> list[ClaimedJob]:
        if channels:
            gated = self._claim_gated(worker_id, limit, channels)
            claimed = gated if gated is not None else self._transaction(
                lambda run: self._claim_within_capacity(run, worker_id, limit, channels))
        else:
            claimed, _ = self._write("claim_jobs", {"worker": worker_id, "limit": limit})
        return self._claimed(claimed)

    def _claimed(self, claimed: Rows) -> list[ClaimedJob]:
        """Claimed rows as jobs, with their parents' results when they have parents."""
        parents: dict[int, dict[str, str | None]] = {}
        waiting = [row[0] for row in claimed if row[12]]
        if waiting:
            for job_id, parent, result in self._read("parent_results",
                                                     {"ids": self._list_param(waiting)}):
                parents.setdefault(job_id, {})[str(rows.as_uuid(parent))] = result
        return [rows.claimed_job(row, rows.as_uuid, parents.get(row[0], {})) for row in claimed]

    def exchange(self, worker_id: str, started: Sequence[tuple[int, int, int]],
                 progress: Sequence[Progress], finishes: Sequence[Finish], limit: int,
                 channels: Mapping[str, ChannelConfig] | None = None,
                 ) -> tuple[list[int], list[ClaimedJob]]:
        """A worker's whole round in one batch: starts, progress and ends, then a claim of
        up to `limit` jobs. Returns the finished ids applied and the jobs claimed."""
        if any(f.has_children for f in finishes) or (
                channels and any(c.paused or c.sequential for c in channels.values())):
            self.mark_started(worker_id, started)  # rare cases: the careful way, in steps
            self.save_progress(progress)
            applied = self.finish(worker_id, finishes)
            return applied, self.claim(worker_id, limit, channels) if limit else []
        steps: list[tuple[str, dict[str, Any]]] = []
        if started:
            steps.append(("mark_started", {"worker": worker_id, "started": rows.records_document(
                ("id", "attempt", "pid"), started)}))
        if progress:
            steps.append(("save_progress", self._progress_params(progress)))
        if finishes:
            steps.append(("finish_jobs", {"worker": worker_id, "finishes":
                                          rows.finishes_document(finishes, self.nested_json)}))
        if limit:
            steps.append(("claim_gated", {"worker": worker_id, "limit": limit,
                                          "caps": self._capacities(channels)})
                         if channels else
                         ("claim_jobs", {"worker": worker_id, "limit": limit}))
        results = self._batch(steps) if steps else []
        applied = [row[0] for row in results[-2 if limit else -1]] if finishes else []
        claimed: Rows = results[-1] if limit else []
        gate_closed = bool(claimed) and claimed[-1][0] is None
        if channels and limit and (gate_closed or (not self.gate_says_closed
                                                   and len(claimed) < limit)):
            # The gate said no, or cannot tell: the careful path decides.
            more = limit - len([row for row in claimed if row[0] is not None])
            claimed = [row for row in claimed if row[0] is not None] + self._transaction(
                lambda run: self._claim_within_capacity(run, worker_id, more, channels))
        return applied, self._claimed(claimed)

    def _batch(self, steps: Sequence[tuple[str, dict[str, Any]]]) -> list[Rows]:
        """Run independent named blocks together, as cheaply as the dialect allows."""
        return self._transaction(lambda run: [run(name, params)[0] for name, params in steps])

    def _claim_gated(self, worker_id: str, limit: int,
                     channels: Mapping[str, ChannelConfig]) -> Rows | None:
        """The claim in one statement, when the database can check capacities itself;
        None when the careful path must decide (the default here)."""
        return None

    @staticmethod
    def _capacities(channels: Mapping[str, ChannelConfig]) -> str:
        return json.dumps({name: config.capacity for name, config in channels.items()
                           if config.capacity is not None})

    def _claim_within_capacity(self, run: Run, worker_id: str, limit: int,
                               channels: Mapping[str, ChannelConfig]) -> Rows:
        """Claim in priority order while every channel a job counts against has room.

        Claims take turns (a lock), so all workers count the same running jobs and a
        capacity holds across hosts. Full channels are left out of the candidate query, so
        a busy channel never hides another channel's ready jobs.
        """
        run("lock_claims", {})
        running = {channel: count for channel, count in run("running_by_channel", {})[0]}
        sequential = [name for name, config in channels.items() if config.sequential]
        stuck: set[str] = set()
        if sequential:
            found, _ = run("stuck_channels", {"sequential": self._list_param(sequential)})
            stuck = {row[0] for row in found}
        plan = ChannelPlan(dict(channels), running, stuck)
        if plan.has_room(limit):  # no limit can say no: claim in plain priority order
            found, _ = run("claim_gated", {"worker": worker_id, "limit": limit,
                                           "caps": self._capacities(channels)})
            return [row for row in found if row[0] is not None]
        # A sequential channel offers only its head; the general query leaves it out.
        open_sequential = [name for name in sequential if plan.free.get(name) != 0]
        heads: Rows = []
        if open_sequential:
            heads, _ = run("sequential_heads", {"names": self._list_param(open_sequential)})
        chosen: list[int] = []
        batch = max(limit * 4, 20)
        for _ in range(4):
            blocked = self._list_param(sorted(set(plan.blocked()) | set(sequential)))
            candidates, _ = run("ready_jobs", {"blocked": blocked, "limit": batch})
            offered = sorted([*heads, *candidates], key=lambda row: (row[2], row[3], row[0]))
            heads = []
            for job_id, channel, _priority, _eta in offered:
                if job_id not in chosen and plan.take(channel):
                    chosen.append(job_id)
                    if len(chosen) == limit:
                        break
            if len(chosen) == limit or len(candidates) < batch:
                break
        if not chosen:
            return []
        claimed, _ = run("claim_chosen", {"worker": worker_id, "ids": self._list_param(chosen)})
        return claimed

    def channel_settings(self) -> dict[str, ChannelConfig]:
        return {row[0]: ChannelConfig(name=row[0], capacity=row[1], sequential=bool(row[2]),
                                      paused=bool(row[3]))
                for row in self._read("channel_settings", {})}

    def save_channel(self, config: ChannelConfig) -> None:
        self._write("save_channel", {"name": config.name, "capacity": config.capacity,
                                     "sequential": config.sequential})

    def pause_channel(self, name: str, paused: bool) -> None:
        self._write("pause_channel", {"name": name, "paused": paused})

    def mark_started(self, worker_id: str, started: Sequence[tuple[int, int, int]]) -> None:
        if started:
            document = rows.records_document(("id", "attempt", "pid"), started)
            self._write("mark_started", {"worker": worker_id, "started": document})

    def finish(self, worker_id: str, finishes: Sequence[Finish]) -> list[int]:
        if not finishes:
            return []
        params = {"worker": worker_id,
                  "finishes": rows.finishes_document(finishes, self.nested_json)}
        if not any(f.has_children for f in finishes):
            applied, _ = self._write("finish_jobs", params)  # one statement, one round trip
            return [row[0] for row in applied]

        def work(run: Run) -> Rows:
            applied, _ = run("finish_jobs", params)
            parents = [row[0] for row in applied if row[1]]
            if parents:
                run("release_children", {"ids": self._list_param(parents)})
            return applied

        return [row[0] for row in self._transaction(work)]

    def save_progress(self, updates: Sequence[Progress]) -> None:
        if updates:
            self._write("save_progress", self._progress_params(updates))

    @staticmethod
    def _progress_params(updates: Sequence[Progress]) -> dict[str, Any]:
        return {"updates": rows.records_document(
            ("id", "attempt", "percent", "message"),
            [(u.id, u.attempt, u.percent, u.message) for u in updates])}

    def next_eta(self) -> float | None:
        value = self._read("next_eta", {})[0][0]
        return None if value is None else max(float(value), 0.0)

    def rescue(self, lease: float, alive: Sequence[str] = ()) -> list[int]:
        rescued, _ = self._write("rescue_jobs", {"lease": lease,
                                                 "alive": self._list_param(list(alive))})
        return [row[0] for row in rescued]
