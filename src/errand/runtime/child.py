"""The job process: receives one try at a time from its supervisor, runs it, reports the end.

It holds no database connection of its own (a job that enqueues jobs opens one through the
app), so killing it for a timeout, a cancel or a shutdown never leaves a transaction open.
"""

from __future__ import annotations

import ctypes
import os
import signal
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, NoReturn
from uuid import UUID

from errand import serialization
from errand.app import App
from errand.context import JobContext, running
from errand.errors import CancelJob, FailedJobError, RetryableJobError
from errand.jobs import Outcome
from errand.retry import TryEnd, Verdict

PR_SET_PDEATHSIG = 1


@dataclass(frozen=True, slots=True)
class RunMessage:
    """What the supervisor sends to run one try."""

    job_id: int
    attempt: int
    uuid: UUID
    task: str
    args: str
    kwargs: str
    context: str
    parent_results: dict[str, str | None]  # parent uuid -> its result as stored JSON


def die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGKILL this process when its supervisor dies, even by kill -9."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the pipe EOF still ends an idle child
        pass
    if os.getppid() != parent_pid:  # the supervisor died before prctl took effect
        os._exit(1)


def _reset_peak_memory() -> bool:
    """Reset the peak RSS counter so each try reports its own peak (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _peak_memory_mb() -> float | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


class ChildRunner:
    """Runs tries inside the job process, talking to the supervisor over one pipe."""

    def __init__(self, app: App, conn: Connection) -> None:
        self.app = app
        self.conn = conn
        self._stop = False

    def serve(self) -> NoReturn:
        while True:
            try:
                message = self.conn.recv()
            except (EOFError, OSError):
                os._exit(0)
            if isinstance(message, RunMessage):
                self._stop = False
                end = self.run(message)
                try:
                    self.conn.send(("end", message.job_id, message.attempt, end))
                except OSError:
                    os._exit(0)

    def _stop_requested(self) -> bool:
        while not self._stop and self.conn.poll(0):
            if self.conn.recv() == "stop":
                self._stop = True
        return self._stop

    def run(self, message: RunMessage) -> TryEnd:
        _reset_peak_memory()
        started = time.perf_counter()
        end = self._call(message)
        duration = time.perf_counter() - started
        return TryEnd(
            verdict=end.verdict, outcome=end.outcome, result=end.result,
            error_type=end.error_type, error_message=end.error_message,
            traceback=end.traceback, seconds=end.seconds, ignore_retry=end.ignore_retry,
            duration=duration, memory_mb=_peak_memory_mb())

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
            self.conn.send(("progress", message.job_id, message.attempt, percent, status))

        job = JobContext(message.uuid, message.attempt, context, parents, report,
                         self._stop_requested)
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


def child_main(app: App, conn: Connection, parent_pid: int,
               inherited: list[Connection]) -> NoReturn:
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
        ChildRunner(app, conn).serve()
    finally:
        os._exit(70)
