"""The supervisor's database rounds: starts, progress and ends written and the next jobs
claimed in one batch, run on a thread beside the event loop while job processes are busy.

A round waits mostly for the server (a commit is a disk flush), and the GIL is free
meanwhile, so the loop keeps handing claimed jobs to processes that finish. One round at a
time: what ends meanwhile goes into the next one, which makes batches grow with the load.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from errand.channels import ChannelConfig
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

    def run(self, backend: Backend, worker_id: str) -> tuple[list[int], list[ClaimedJob]]:
        started = [(job_id, attempt, pid) for (job_id, attempt), pid in self.started.items()]
        return backend.exchange(worker_id, started, self.progress, self.finishes, self.claim,
                                self.channels)


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
