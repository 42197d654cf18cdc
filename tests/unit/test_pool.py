"""`describe_exit` on real wait statuses of forked children; which children the supervisor
tops up with next jobs."""

from __future__ import annotations

import faulthandler
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from uuid import UUID

import pytest

from errand.jobs import ClaimedJob
from errand.runtime import wire
from errand.runtime.pool import Child, Pool, Running, describe_exit

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="fork and signals as on Linux")


def status_of_child(body: Callable[[], None], kill_with: int | None = None) -> int:
    """Fork a child that runs `body` (never returning into pytest) and reap it."""
    pid = os.fork()
    if pid == 0:  # the child
        try:
            faulthandler.disable()
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            body()
        finally:
            os._exit(99)
    if kill_with is not None:
        os.kill(pid, kill_with)
    _, status = os.waitpid(pid, 0)
    return status


def sleep_long() -> None:
    time.sleep(60)


def test_abort_is_named_sigabrt() -> None:
    assert describe_exit(status_of_child(os.abort)) == "was killed by SIGABRT"


def test_sigkill_is_named() -> None:
    status = status_of_child(sleep_long, kill_with=signal.SIGKILL)
    assert describe_exit(status) == "was killed by SIGKILL"


def test_segfault_signal_is_named() -> None:
    status = status_of_child(lambda: os.kill(os.getpid(), signal.SIGSEGV))
    assert describe_exit(status) == "was killed by SIGSEGV"


def test_exit_code_is_given() -> None:
    assert describe_exit(status_of_child(lambda: os._exit(3))) == "exited with code 3"
    assert describe_exit(status_of_child(lambda: os._exit(0))) == "exited with code 0"


def test_a_signal_without_a_name_is_given_by_number() -> None:
    number = signal.SIGRTMIN + 6
    status = status_of_child(sleep_long, kill_with=number)
    assert describe_exit(status) == f"was killed by signal {number}"


def test_process_started_at_tells_a_live_process_from_a_reused_or_dead_pid() -> None:
    from datetime import UTC, datetime, timedelta

    from errand.runtime.pool import process_started_at

    child = subprocess.Popen(["sleep", "30"])
    try:
        now = datetime.now(UTC)
        assert process_started_at(child.pid, now)
        assert not process_started_at(child.pid, now - timedelta(hours=1))  # pid reused
    finally:
        child.kill()
        child.wait()
    assert not process_started_at(child.pid, now)  # gone


def test_a_stopped_process_counts_as_gone() -> None:
    from datetime import UTC, datetime

    from errand.runtime.pool import process_started_at

    child = subprocess.Popen(["sleep", "30"])
    try:
        now = datetime.now(UTC)
        os.kill(child.pid, signal.SIGSTOP)
        for _ in range(100):
            with open(f"/proc/{child.pid}/stat") as handle:
                if handle.read().rsplit(")", 1)[1].split()[0] == "T":
                    break
        assert not process_started_at(child.pid, now)
        os.kill(child.pid, signal.SIGCONT)
    finally:
        child.kill()
        child.wait()


def job(number: int) -> ClaimedJob:
    return ClaimedJob(id=number, uuid=UUID(int=number), task="t", args="[]",
                      kwargs="{}", context="{}", attempt=1, retries=0, max_retries=5,
                      retry_pattern=None, timeout=None, channel="root")


def test_a_child_sent_a_job_it_has_not_begun_is_topped_up_like_a_busy_one() -> None:
    """A short job can begin and end before its begin is read: feeding only children
    known to be busy would hand such a child one job per round trip."""
    pool = Pool(app=None)  # type: ignore[arg-type]  # the books only: nothing is spawned
    sockets: list[socket.socket] = []

    def child(pid: int, queued: int, begun_ago: float | None) -> Child:
        ours, theirs = socket.socketpair()
        sockets.extend((ours, theirs))
        made = Child(pid=pid, sock=ours, reader=wire.Reader(ours))
        made.queued.extend(job(pid * 100 + n) for n in range(queued))
        if begun_ago is not None:
            made.running = Running(job=job(pid * 100 + 99), started=time.monotonic() - begun_ago,
                                   deadline=None)
        pool.children[pid] = made
        return made

    try:
        sent = child(1, queued=1, begun_ago=None)  # just sent its first job
        busy = child(2, queued=3, begun_ago=0.0)  # a short job running
        idle = child(3, queued=0, begun_ago=None)  # nothing: fed as idle, not here
        long = child(4, queued=1, begun_ago=10.0)  # held behind a long job: no more
        full = child(5, queued=8, begun_ago=0.0)
        assert pool.pipelined(depth=8, younger_than=0.05) == [sent, busy]
        assert pool.idle() == [idle]
        assert long not in pool.pipelined(8, 0.05) and full not in pool.pipelined(8, 0.05)
    finally:
        for each in sockets:
            each.close()
