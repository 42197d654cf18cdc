"""The supervisor's job processes: fork them, hand them tries, read their reports, reap them."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from errand.app import App
from errand.jobs import ClaimedJob, Outcome
from errand.retry import TryEnd, Verdict
from errand.runtime import wire
from errand.runtime.child import RunMessage, child_main


@dataclass
class Running:
    """A try in a child's hands, and what the supervisor has decided about it."""

    job: ClaimedJob
    started: float
    deadline: float | None
    stop_asked_at: float | None = None
    lost: bool = False  # cancelled, or rescued by another worker: no longer ours to finish
    kill_reason: TryEnd | None = None


@dataclass
class Child:
    pid: int
    sock: socket.socket
    reader: wire.Reader
    running: Running | None = None  # the try the process said it began
    # Sent and not yet begun (as far as the process has told): it begins them in order,
    # saying so, or gives them back when asked.
    queued: deque[ClaimedJob] = field(default_factory=deque)
    retracting: bool = False  # asked back (SIGUSR1) and the answer has not come yet
    killed: bool = False  # we sent SIGKILL (for the try running then)
    messages: list[tuple[Any, ...]] = field(default_factory=list)
    closed: bool = False


def describe_exit(status: int) -> str:
    """`was killed by SIGSEGV` or `exited with code 3`, from a waitpid status."""
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        return f"was killed by {name}"
    return f"exited with code {os.waitstatus_to_exitcode(status)}"


class Pool:
    """Job processes forked from the supervisor; each runs one try at a time and may hold
    the next ones."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.children: dict[int, Child] = {}

    def spawn(self) -> Child:
        parent_end, child_end = socket.socketpair()
        inherited = [child.sock for child in self.children.values()] + [parent_end]
        supervisor = os.getpid()  # read before the fork: a child that checks later might
        pid = os.fork()           # already see init as its parent if we died meanwhile
        if pid == 0:  # pragma: no cover - runs in the child, which never returns
            child_main(self.app, child_end, supervisor, inherited)
        child_end.close()
        child = Child(pid=pid, sock=parent_end, reader=wire.Reader(parent_end))
        self.children[pid] = child
        return child

    def idle(self) -> list[Child]:
        """Children with nothing to run."""
        return [c for c in self.children.values()
                if c.running is None and not c.queued and not c.closed]

    def pipelined(self, depth: int, younger_than: float) -> list[Child]:
        """Children with room for more next jobs: busy with a job begun less than
        `younger_than` s ago, or about to begin one they were just sent.

        The second kind matters: a short job may begin and end before the supervisor hears
        of its beginning, so a child fed only once its begin is known would get one job at
        a time, waiting for the supervisor between each two."""
        since = time.monotonic() - younger_than
        return [c for c in self.children.values()
                if (c.queued if c.running is None else c.running.started > since)
                and len(c.queued) < depth and not c.retracting and not c.closed]

    def busy(self) -> list[Child]:
        """Children running a try."""
        return [c for c in self.children.values() if c.running is not None]

    def holding(self) -> list[Child]:
        """Children running a try or holding jobs they may begin."""
        return [c for c in self.children.values() if c.running is not None or c.queued]

    def start(self, child: Child, jobs: list[ClaimedJob]) -> None:
        """Send `jobs` to `child`, in one write: it begins the first now if idle, else
        after what it holds."""
        child.queued += jobs
        try:
            child.sock.sendall(b"".join(wire.encode(RunMessage(
                job_id=job.id, attempt=job.attempt, uuid=str(job.uuid), task=job.task,
                args=job.args, kwargs=job.kwargs, context=job.context,
                parent_results=job.parent_results).encode()) for job in jobs))
        except OSError:
            pass  # the child died just now; reaping settles the jobs

    def begin(self, child: Child, key: tuple[int, int]) -> ClaimedJob | None:
        """The child said it began the job `key` (the head of its queue); None if unknown."""
        job = self.unqueue(child, key)
        if job is not None:
            now = time.monotonic()
            child.running = Running(job=job, started=now,
                                    deadline=None if job.timeout is None else now + job.timeout)
        return job

    def retract(self, child: Child) -> None:
        """Ask for the queued jobs back (SIGUSR1); the child answers "returned" with those
        it had not begun."""
        if child.queued and not child.retracting:
            child.retracting = True
            with contextlib.suppress(ProcessLookupError):  # gone: reaping puts them back
                os.kill(child.pid, signal.SIGUSR1)

    @staticmethod
    def unqueue(child: Child, key: tuple[int, int]) -> ClaimedJob | None:
        """Take the job `key` out of the child's queue; None if it is not there."""
        for index, job in enumerate(child.queued):
            if (job.id, job.attempt) == key:
                del child.queued[index]
                return job
        return None

    def ask_to_stop(self, child: Child) -> None:
        """Make the job's `should_stop()` true; it may still run to its end."""
        if child.running is not None and child.running.stop_asked_at is None:
            child.running.stop_asked_at = time.monotonic()
            try:
                wire.send(child.sock, ("stop", child.running.job.id, child.running.job.attempt))
            except OSError:
                pass  # the child is already gone; reaping will tell

    def kill(self, child: Child, reason: TryEnd) -> None:
        """SIGKILL a child; its try ends with `reason` once it is reaped."""
        if child.running is not None and child.running.kill_reason is None:
            child.running.kill_reason = reason
        child.killed = True
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signal.SIGKILL)

    def read(self, child: Child) -> None:
        """Move what a readable child sent into `child.messages`; its end marks it closed."""
        try:
            messages = child.reader.read()
        except OSError:
            messages = None
        if messages is None:
            child.closed = True
        else:
            child.messages += messages

    def reap(self) -> list[tuple[Child, str]]:
        """Children that exited, with how (`killed by SIGKILL`); the caller closes their socket."""
        gone = []
        for child in list(self.children.values()):
            try:
                pid, status = os.waitpid(child.pid, os.WNOHANG)
            except ChildProcessError:
                pid, status = child.pid, 0
            if pid == 0:
                continue
            if not child.closed:  # what it wrote before it died still counts
                self.read(child)
            child.closed = True
            del self.children[child.pid]
            gone.append((child, describe_exit(status)))
        return gone

    def close_all(self, deadline: float) -> None:
        """Close every socket (an idle child exits then); kill what is left at `deadline`."""
        for child in self.children.values():
            child.sock.close()
            child.closed = True
        while self.children and time.monotonic() < deadline:
            self.reap()
            if self.children:
                time.sleep(0.01)
        for child in list(self.children.values()):
            self.kill(child, crash_end("stopped with the worker"))
        while self.children:
            self.reap()
            if self.children:
                time.sleep(0.01)


def process_started_at(pid: int, when: datetime, tolerance: float = 60.0) -> bool:
    """Is process `pid` alive and not frozen (stopped processes count as gone, as a
    paused machine would), and did it start around `when` (not a reused pid)?"""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        with open("/proc/stat") as handle:
            boot = next(int(line.split()[1]) for line in handle if line.startswith("btime"))
    except (OSError, StopIteration, IndexError, ValueError):
        return False
    if fields[0] in ("Z", "T", "t", "X"):
        return False
    started = boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    return abs(started - when.timestamp()) <= tolerance


def crash_end(how: str, duration: float | None = None) -> TryEnd:
    return TryEnd(Verdict.RETRY, Outcome.CRASH, error_type="ProcessCrashed",
                  error_message=f"the job process {how}", duration=duration)
