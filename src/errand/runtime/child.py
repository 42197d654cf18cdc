"""The job process: receives tries from its supervisor, runs them one at a time, reports
each end before it starts the next.

It holds no database connection of its own (a job that enqueues jobs opens one through the
app), so killing it for a timeout, a cancel or a shutdown never leaves a transaction open.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import socket
import time
import traceback
from collections import deque
from dataclasses import dataclass
from typing import Any, NoReturn
from uuid import UUID

from errand import serialization
from errand.app import App
from errand.context import JobContext, running
from errand.errors import CancelJob, FailedJobError, RetryableJobError
from errand.jobs import Outcome
from errand.retry import TryEnd, Verdict
from errand.runtime import wire

PR_SET_PDEATHSIG = 1


@dataclass(slots=True)  # once per job: not frozen (see 'Hot-path rows' in jobs.py)
class RunMessage:
    """What the supervisor sends to run one try (as a plain tuple on the wire)."""

    job_id: int
    attempt: int
    uuid: str
    task: str
    args: str
    kwargs: str
    context: str
    parent_results: dict[str, str | None]  # parent uuid -> its result as stored JSON

    def encode(self) -> tuple[Any, ...]:
        return ("run", self.job_id, self.attempt, self.uuid, self.task, self.args,
                self.kwargs, self.context, self.parent_results)


def die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGKILL this process when its supervisor dies, even by kill -9."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the socket's end still ends an idle child
        pass
    if os.getppid() != parent_pid:  # the supervisor died before prctl took effect
        os._exit(1)


class PeakMemory:
    """Each try's peak RSS: Linux resets the peak when "5" is written to clear_refs, and
    getrusage reads it, two cheap system calls instead of parsing /proc/self/status."""

    def __init__(self) -> None:
        try:
            self._clear_refs: int | None = os.open("/proc/self/clear_refs", os.O_WRONLY)
        except OSError:
            self._clear_refs = None  # not Linux: no per-try figure

    def reset(self) -> None:
        if self._clear_refs is not None:
            try:
                os.write(self._clear_refs, b"5")
            except OSError:
                self._clear_refs = None

    def peak_mb(self) -> float | None:
        if self._clear_refs is None:
            return None
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class ChildRunner:
    """Runs tries inside the job process, talking to the supervisor over one socket.

    The supervisor may send next jobs while one runs. This process says when each job
    begins (in the end of the one before, or on its own after a wait) and when it ends,
    in that order. SIGUSR1 asks for the jobs not begun back (the running job turned out
    long): the handler answers at once, even in the middle of the job, unless it
    interrupted our own socket I/O, which then answers. Every message is true when sent,
    so the supervisor's books, read in order, are never wrong.
    """

    def __init__(self, app: App, sock: socket.socket) -> None:
        self.app = app
        self.sock = sock
        self.reader = wire.Reader(sock)
        self.inbox: deque[RunMessage] = deque()
        self.stops: set[tuple[int, int]] = set()  # tries asked to stop
        self.memory = PeakMemory()
        self._in_io = False
        self._give_back_asked = False

    def serve(self) -> NoReturn:
        message: RunMessage | None = None
        while True:
            if message is None:
                self._receive(wait=not self.inbox)
                try:
                    message = self.inbox.popleft()
                except IndexError:  # nothing yet, or all just given back
                    continue
                self._send(("begin", message.job_id, message.attempt))
            end = self.run(message)
            self.stops.discard((message.job_id, message.attempt))
            # The next job begins now, and the end says which: the supervisor never takes
            # a job for begun before this process has said so.
            self._receive(wait=False)
            following = self.inbox.popleft() if self.inbox else None
            self._send(("end", message.job_id, message.attempt, wire.pack_end(end),
                        *((following.job_id, following.attempt) if following else (None, None))))
            message = following

    def _receive(self, wait: bool) -> None:
        # Guarded up to the inbox: a give-back must see every job read, or the supervisor
        # and this process would disagree on what runs next.
        self._in_io = True
        try:
            try:
                messages = self.reader.read(wait)
            except OSError:
                messages = None
            self._take(messages)
        finally:
            self._in_io = False
        if self._give_back_asked:
            self._give_back()

    def _send(self, message: tuple[Any, ...]) -> None:
        self._in_io = True
        try:
            wire.send(self.sock, message)
        except OSError:
            os._exit(0)
        finally:
            self._in_io = False
        if self._give_back_asked:
            self._give_back()

    def _take(self, messages: list[tuple[Any, ...]] | None) -> None:
        if messages is None:  # the supervisor is gone
            os._exit(0)
        for message in messages:
            if message[0] == "stop":
                self.stops.add((message[1], message[2]))
            else:
                self.inbox.append(RunMessage(*message[1:]))

    def on_give_back(self, signum: int, frame: object) -> None:
        self._give_back_asked = True
        if not self._in_io:
            self._give_back()

    def _give_back(self) -> None:
        """Return every job sent but not begun, those still in the socket included."""
        self._give_back_asked = False
        self._in_io = True
        try:
            self._take(self.reader.read())
            keys = [(queued.job_id, queued.attempt) for queued in self.inbox]
            self.inbox.clear()
            wire.send(self.sock, ("returned", keys))
        except OSError:
            os._exit(0)
        finally:
            self._in_io = False

    def run(self, message: RunMessage) -> TryEnd:
        self.memory.reset()
        started = time.perf_counter()
        end = self._call(message)
        end.duration = time.perf_counter() - started
        end.memory_mb = self.memory.peak_mb()
        return end

    def _call(self, message: RunMessage) -> TryEnd:
        task = self.app.tasks.get(message.task)
        if task is None:
            return TryEnd(Verdict.FAIL, Outcome.ERROR, error_type="UnknownTaskError",
                          error_message=f"no task named {message.task!r} is registered in "
                                        "this worker's app")
        try:
            args, kwargs = serialization.decode_call(message.args, message.kwargs)
            context = serialization.loads(message.context)
            parents = {uuid: None if text is None else serialization.loads(text)
                       for uuid, text in message.parent_results.items()}
        except (ValueError, TypeError, KeyError) as exc:
            return TryEnd(Verdict.FAIL, Outcome.ERROR, error_type="MalformedJob",
                          error_message=f"cannot decode the stored arguments: {exc}")

        def report(percent: int, status: str | None) -> None:
            self._send(("progress", message.job_id, message.attempt, percent, status))

        def stop_requested() -> bool:
            key = (message.job_id, message.attempt)
            if key not in self.stops:
                self._receive(wait=False)
            return key in self.stops

        job = JobContext(UUID(message.uuid), message.attempt, context, parents, report,
                         stop_requested)
        try:
            with running(job, whole_process=True):
                value = task.fn(*args, **kwargs)
            return self._success(message.task, value)
        except RetryableJobError as exc:
            return _failure(Verdict.RETRY, Outcome.ERROR, exc, seconds=exc.seconds,
                            ignore_retry=exc.ignore_retry)
        except FailedJobError as exc:
            return _failure(Verdict.FAIL, Outcome.ERROR, exc)
        except CancelJob as exc:
            return _failure(Verdict.CANCEL, Outcome.CANCELLED, exc)
        except BaseException as exc:
            verdict = Verdict.RETRY if isinstance(exc, task.retry_on) else Verdict.FAIL
            return _failure(verdict, Outcome.ERROR, exc)

    def _success(self, task: str, value: Any) -> TryEnd:
        try:
            result = serialization.dumps(value, "the result")
        except Exception as exc:
            return _failure(Verdict.FAIL, Outcome.ERROR, exc)
        limit = self.app.settings.max_payload
        if len(result) * 4 > limit and len(result.encode()) > limit:
            return TryEnd(Verdict.FAIL, Outcome.ERROR, error_type="PayloadTooLarge",
                          error_message=f"the result of {task} takes {len(result.encode()):,} "
                                        f"bytes, over the {limit:,}-byte limit "
                                        "(ERRAND_MAX_PAYLOAD)")
        return TryEnd(Verdict.SUCCESS, Outcome.SUCCESS, result=result)


def _failure(verdict: Verdict, outcome: Outcome, exc: BaseException,
             seconds: float | None = None, ignore_retry: bool = False) -> TryEnd:
    return TryEnd(verdict, outcome, error_type=type(exc).__name__, error_message=str(exc),
                  traceback="".join(traceback.format_exception(exc)), seconds=seconds,
                  ignore_retry=ignore_retry)


def _ignore(signum: int, frame: object) -> None:
    """Ctrl-C or a SIGTERM to the process group: the supervisor handles the shutdown."""


def child_main(app: App, sock: socket.socket, parent_pid: int,
               inherited: list[socket.socket]) -> NoReturn:
    """Entry point of a freshly forked job process; never returns."""
    try:
        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGINT, signal.SIGTERM):
            # The supervisor decides when jobs stop. A handler, not SIG_IGN: programs the
            # job starts get the default action back when they exec.
            signal.signal(signum, _ignore)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for other in inherited:
            other.close()
        die_with_parent(parent_pid)
        runner = ChildRunner(app, sock)
        signal.signal(signal.SIGUSR1, runner.on_give_back)
        signal.siginterrupt(signal.SIGUSR1, False)  # the job's system calls carry on
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})  # blocked since fork
        runner.serve()
    finally:
        os._exit(70)
