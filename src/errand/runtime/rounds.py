"""The supervisor's database rounds: starts, progress and ends written and the next jobs
claimed in one batch, run on a thread beside the event loop while job processes are busy.

A round waits mostly for the server (a commit is a disk flush), and the GIL is free
meanwhile, so the loop keeps handing claimed jobs to processes that finish. One round at a
time: what ends meanwhile goes into the next one, which makes batches grow with the load.

Where the database has two writers at once (PostgreSQL), a round's claim runs on a second
connection while its ends are written, so two server processes share the round's work:
end to end, the server's work on a round had bounded the worker's pace.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from errand.channels import ChannelConfig
from errand.errors import DatabaseError
from errand.jobs import ClaimedJob, Finish
from errand.runtime import wire
from errand.storage import Backend
from errand.storage.base import Progress

Started = dict[tuple[int, int], int]
"""(job id, attempt) -> pid of the job process, for starts not yet written."""


@dataclass
class Round:
    """What one round writes and how many jobs it claims."""

    started: Started
    progress: list[Progress]
    finishes: list[Finish]
    claim: int
    channels: Mapping[str, ChannelConfig]
    future: Future[tuple[list[int], list[ClaimedJob]]] | None = field(default=None)
    # The claim failed on its own connection after the ends were written: they stand.
    claim_error: DatabaseError | None = field(default=None)

    def run(self, backend: Backend, worker_id: str,
            lane: ClaimLane | None = None) -> tuple[list[int], list[ClaimedJob]]:
        started = [(job_id, attempt, pid) for (job_id, attempt), pid in self.started.items()]
        if lane is None or not self._claim_apart():
            return backend.exchange(worker_id, started, self.progress, self.finishes,
                                    self.claim, self.channels)
        claim = lane.claim(worker_id, self.claim, self.channels)
        try:
            applied, _ = backend.exchange(worker_id, started, self.progress, self.finishes, 0,
                                          self.channels)
        except BaseException:
            # Its connection must be free before the next round. Jobs it claimed are held
            # for this worker unknown to it, as after a lost answer: the heartbeat puts
            # them back (release_unknown).
            wait([claim])
            raise
        try:
            return applied, claim.result()
        except DatabaseError as exc:
            self.claim_error = exc
            return applied, []

    def _claim_apart(self) -> bool:
        """Can the claim run beside the writes? Only when it does not depend on them: no
        end releases waiting jobs (claimed in the same round), and no channel counts running
        jobs (capacity, sequence, pause)."""
        return bool(self.claim) and bool(self.started or self.progress or self.finishes) \
            and not any(f.has_children for f in self.finishes) \
            and not any(c.counts_running for c in self.channels.values())


class ClaimLane:
    """A second connection, and a thread, for the claims of rounds (see the module doc)."""

    def __init__(self, open_backend: Callable[[], Backend]) -> None:
        self._open = open_backend
        self._backend: Backend | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="errand-claim")

    def claim(self, worker_id: str, limit: int,
              channels: Mapping[str, ChannelConfig]) -> Future[list[ClaimedJob]]:
        return self._executor.submit(self._claim, worker_id, limit, channels)

    def _claim(self, worker_id: str, limit: int,
               channels: Mapping[str, ChannelConfig]) -> list[ClaimedJob]:
        if self._backend is None:
            self._backend = self._open()
        return self._backend.exchange(worker_id, [], [], [], limit, channels)[1]

    def reset(self) -> None:
        """Drop the connection (after a database error); the next claim opens a new one.
        Only between rounds: a claim in flight holds it."""
        backend, self._backend = self._backend, None
        if backend is not None:
            with contextlib.suppress(Exception):
                backend.close()

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self.reset()


class RoundThread:
    """One thread for rounds; a byte on `fileno()` says a round has ended."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="errand-db")
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)

    def fileno(self) -> int:
        return self._wake_r.fileno()

    def submit(self, round_: Round,
               work: Callable[[], tuple[list[int], list[ClaimedJob]]]) -> None:
        round_.future = self._executor.submit(work)
        round_.future.add_done_callback(self._wake)

    def _wake(self, future: Future[tuple[list[int], list[ClaimedJob]]]) -> None:
        try:
            self._wake_w.send(b"r")
        except OSError:  # closed at shutdown, or a byte is already waiting
            pass

    def drain(self) -> None:
        wire.drain(self._wake_r)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self._wake_r.close()
        self._wake_w.close()
