"""The worker's supervisor: one thread, one event loop, and the only process that talks to
the database on the worker's behalf.

It claims jobs for idle job processes, writes their ends in batches, heartbeats, rescues
the jobs of dead workers, enforces timeouts, cancels and shutdown by killing processes, and
keeps going through database outages (results wait in memory until they can be written;
fencing makes a repeated write harmless).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import selectors
import signal
import socket
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from errand import __version__
from errand.app import App
from errand.channels import ChannelConfig, parse_channels
from errand.errors import DatabaseError
from errand.jobs import ClaimedJob, Finish, Outcome
from errand.retry import TryEnd, Verdict, settle
from errand.runtime import wire
from errand.runtime.ahead import RETRACT_AFTER, ClaimAhead
from errand.runtime.pool import Child, Pool, crash_end, process_started_at
from errand.runtime.rounds import ClaimLane, Round, RoundThread, Started
from errand.runtime.signals import SignalWakeup
from errand.settings import Settings
from errand.storage import Backend, open_backend
from errand.storage.base import Progress, Waker, WorkerInfo

log = logging.getLogger("errand.worker")

PROGRESS_FLUSH_INTERVAL = 0.25
CHANNEL_REFRESH_INTERVAL = 0.5  # capacity changes reach every worker within a second
BLOCKED_RETRY = 0.1  # ready jobs held back by capacities: look again this soon
STARTED_DELAY = 0.005  # a short job's start is written with its end, in one batch
LOST_CHECK_DELAY = 0.2  # after news that a running job may have been cancelled
MAX_DB_BACKOFF = 5.0


# The process was killed for the try it ran, which had just ended and let the next begin.
KILLED_FOR_ANOTHER = TryEnd(Verdict.REQUEUE, Outcome.INTERRUPTED, error_type="ProcessStopped",
                            error_message="the job process was stopped for the try before "
                                          "this one (its timeout, cancel or a shutdown)")


class Worker:
    """`errand worker`: runs jobs of `app` in `concurrency` child processes until stopped."""

    def __init__(self, app: App, *, concurrency: int | None = None, burst: bool = False,
                 duration: float | None = None, channels: str | None = None,
                 settings: Settings | None = None) -> None:
        self.app = app
        self.settings = settings or app.settings
        self.concurrency = concurrency or self.settings.concurrency
        self.burst = burst
        self.duration = duration
        self.channels = channels
        self.id = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.lease = self.settings.lease

        self.backend: Backend | None = None
        self.waker: Waker | None = None
        self.pool = Pool(app)
        # poll(), not epoll: epoll remembers a socket the job processes also hold open
        # even after libpq closed ours, and would then report it ready forever.
        self.selector = selectors.PollSelector()
        self.waker_fd: int | None = None

        self.finishes: list[Finish] = []
        self.started: Started = {}
        self.started_since = 0.0
        self.progress: dict[int, Progress] = {}
        self.ready: deque[ClaimedJob] = deque()  # claimed, not yet handed to a process
        self.cancelled_ahead: set[tuple[int, int]] = set()  # queued in a process, then lost
        self.rounds = RoundThread()
        self.round: Round | None = None  # on the round thread
        self.claim_lane: ClaimLane | None = None  # where claims run beside the writes
        self.ahead = ClaimAhead(self.concurrency)

        now = time.monotonic()
        self.began = now
        self.stopping = False
        self.stop_deadline: float | None = None
        self.hard_stop = False
        self.want_claim = True
        self.nothing_ready = False
        self.wake_at: float | None = None
        self.db_down_since: float | None = None
        self.db_ok_since = now
        self.db_retry_at = 0.0
        self.db_backoff = 0.1
        self.next_heartbeat = now
        self.last_beat = now
        self.next_lost_check: float | None = None
        self.next_rescue = now
        self.next_progress_flush = now
        self.next_poll = now
        self.channel_settings: dict[str, ChannelConfig] = {}
        self.next_channel_refresh = now
        self.waker_news = False
        self.jobs_run = 0

    # -- lifecycle -------------------------------------------------------------------------

    def run(self) -> int:
        """Work until stopped (signal, `--duration`, or `--burst` with nothing ready); 0 = clean."""
        self.signals = SignalWakeup(self.selector)
        self.selector.register(self.rounds.fileno(), selectors.EVENT_READ, "round")
        try:
            self.backend = open_backend(self.app.database_url, pooled=False)
            if self.backend.claims_apart:
                url = self.app.database_url
                self.claim_lane = ClaimLane(lambda: open_backend(url, pooled=False))
            self.backend.register_worker(WorkerInfo(
                id=self.id, host=socket.gethostname(), pid=os.getpid(),
                concurrency=self.concurrency, channels=self.channels, version=__version__))
            configured = (parse_channels(self.channels) if self.channels is not None
                          else self.app.channels.configured)
            for config in configured.values():
                self.backend.save_channel(config)
            self._open_waker()
            for _ in range(self.concurrency):
                self._spawn()
            log.info("worker %s ready: %d job processes on %s", self.id, self.concurrency,
                     self.backend.dialect)
            while not self._finished():
                self._step()
            return 0
        finally:
            self._shutdown()

    def request_stop(self) -> None:
        """Stop claiming; running jobs get the grace period, then go back to pending."""
        if self.stopping:
            return
        self.stopping = True
        self.stop_deadline = time.monotonic() + self.settings.shutdown_grace
        log.info("stopping: %d running job(s) get %.0f s to finish", len(self.pool.busy()),
                 self.settings.shutdown_grace)
        for child in self.pool.holding():
            self.pool.ask_to_stop(child)
            self.pool.retract(child)

    def _take_stop_signals(self) -> None:
        while self.signals.stops:
            signum = self.signals.stops.popleft()
            if self.stopping:
                log.warning("second %s: stopping now", signal.Signals(signum).name)
                self.hard_stop = True
            else:
                self.request_stop()

    def _finished(self) -> bool:
        if self.hard_stop:
            return True
        if self.stopping:
            return not self.pool.holding() and not self._writes_pending() and self.round is None
        if (self.duration is not None and time.monotonic() - self.began >= self.duration):
            self.request_stop()
            return False
        if self.burst and self.nothing_ready and not self.pool.holding() and not self.ready \
                and not self._writes_pending() and self.round is None:
            log.info("burst: no job is ready, exiting")
            self.stopping = True
            return True
        return False

    def _shutdown(self) -> None:
        self.stopping = True
        for child in self.pool.holding():
            self.pool.kill(child, TryEnd(Verdict.REQUEUE, Outcome.INTERRUPTED,
                                         error_type="WorkerShutdown",
                                         error_message="the worker stopped before the job ended"))
        deadline = time.monotonic() + 2.0
        while self.pool.holding() and time.monotonic() < deadline:
            self._reap()
            if self.pool.holding():
                time.sleep(0.005)
        self.pool.close_all(deadline=time.monotonic() + 2.0)
        self.rounds.close()  # lets a round in flight end
        if self.round is not None:
            with contextlib.suppress(DatabaseError):  # what it carried is written below
                self._collect_round()
        if self.claim_lane is not None:
            self.claim_lane.close()
        self._final_flush()
        self.signals.restore()
        if self.waker is not None:
            self.waker.close()
        if self.backend is not None:
            self.backend.close()
        self.selector.close()
        if self.backend is not None:  # it started; otherwise the error says it all
            log.info("worker %s stopped after %d job(s)", self.id, self.jobs_run)

    # -- the loop ----------------------------------------------------------------------

    def _step(self) -> None:
        for key, _ in self.selector.select(self._timeout()):
            if key.data == "signal":
                self.signals.drain()
            elif key.data == "waker":
                self.waker_news = True
            elif key.data == "round":
                self.rounds.drain()
            else:
                self.pool.read(key.data)
        self._take_stop_signals()
        for child in list(self.pool.children.values()):
            self._handle_messages(child)  # first: feeding needs the books up to date
        if self.round is not None and self.round.future is not None \
                and self.round.future.done():
            try:
                self._collect_round()
            except DatabaseError as exc:
                self._database_failed(exc)
        self._reap()
        self._feed()
        self._enforce_deadlines()
        if self.hard_stop:
            return
        self._sync()

    def _timeout(self) -> float:
        now = time.monotonic()
        if self.hard_stop:
            return 0.0
        writable = self.round is None and now >= self.db_retry_at
        if writable and self.finishes:
            return 0.0
        idle = bool(self.pool.idle()) and not self.stopping
        if writable and self.want_claim and (idle or len(self.ready) < self._claim_ahead()):
            return 0.0
        moments = []
        if self.round is None:  # otherwise the round's end wakes the loop
            moments += [self.next_heartbeat, self.next_rescue]
            if self.started:
                moments.append(max(self.started_since + STARTED_DELAY, self.db_retry_at))
            if self.db_down_since is not None:
                moments.append(self.db_retry_at)
            if self.next_lost_check is not None:
                moments.append(self.next_lost_check)
            if self.progress:
                moments.append(self.next_progress_flush)
        if self.wake_at is not None:
            moments.append(self.wake_at)
        if self.waker_fd is None or idle:
            moments.append(self.next_poll)
        if self.stop_deadline is not None:
            moments.append(self.stop_deadline)
        if self.duration is not None and not self.stopping:
            moments.append(self.began + self.duration)
        for child in self.pool.busy():
            running = child.running
            assert running is not None
            if running.deadline is not None:
                moments.append(running.deadline)
            if child.queued and not child.retracting:
                moments.append(running.started + RETRACT_AFTER)
            if running.lost and running.stop_asked_at is not None:
                moments.append(running.stop_asked_at + self.settings.cancel_grace)
        return max(0.0, min(moments, default=now + 1.0) - now)

    def _spawn(self) -> None:
        child = self.pool.spawn()
        self.selector.register(child.sock, selectors.EVENT_READ, child)

    def _feed(self) -> None:
        """Hand claimed jobs to idle processes, then (short jobs) a next one to busy ones."""
        if not self.ready or self.stopping:
            return
        for child in self.pool.idle():
            if not self.ready:
                return
            self.pool.start(child, [self.ready.popleft()])
        depth = self.ahead.depth()
        for child in self.pool.pipelined(depth, RETRACT_AFTER):
            room = min(depth - len(child.queued), len(self.ready))
            if room > 0:
                self.pool.start(child, [self.ready.popleft() for _ in range(room)])

    def _started(self, job: ClaimedJob, pid: int) -> None:
        if not self.started:
            self.started_since = time.monotonic()
        self.started[(job.id, job.attempt)] = pid

    def _claim_ahead(self) -> int:
        return 0 if self.stopping else self.ahead.jobs()

    def _handle_messages(self, child: Child) -> None:
        messages, child.messages = child.messages, []
        for message in messages:
            kind = message[0]
            if kind == "returned":  # the answer to a retract
                for job_id, attempt in reversed(message[1]):
                    self._returned(child, (job_id, attempt))
                child.retracting = False
                continue
            if kind == "begin":
                self._begin(child, (message[1], message[2]))
                continue
            running = child.running
            if running is None or running.job.id != message[1] \
                    or running.job.attempt != message[2]:
                continue
            if kind == "progress":
                self.progress[running.job.id] = Progress(
                    id=running.job.id, attempt=running.job.attempt, percent=message[3],
                    message=message[4])
            elif kind == "end":
                self._end(child, wire.unpack_end(message[3]))
                if message[4] is not None:  # and the next one has begun
                    self._begin(child, (message[4], message[5]))

    def _begin(self, child: Child, key: tuple[int, int]) -> None:
        job = self.pool.begin(child, key)
        if job is None:
            log.error("job process %d began job %d try %d, which it was not sent",
                      child.pid, *key)
            return
        self._started(job, child.pid)
        if key in self.cancelled_ahead:
            self.cancelled_ahead.discard(key)
            self._lose(child)
        elif self.stopping:  # begun before the process saw the stop
            self.pool.ask_to_stop(child)

    def _returned(self, child: Child, key: tuple[int, int]) -> None:
        """A job asked back had not begun: claimed again, waiting for any process."""
        job = self.pool.unqueue(child, key)
        if job is None:
            return
        if key in self.cancelled_ahead:
            self.cancelled_ahead.discard(key)
        else:
            self.ready.appendleft(job)

    def _end(self, child: Child, end: TryEnd) -> None:
        running = child.running
        assert running is not None
        child.running = None
        job = running.job
        if end.verdict is Verdict.CANCEL and running.stop_asked_at is not None \
                and not running.lost:
            # The job gave up because the worker is shutting down, not because the work
            # is irrelevant: run it again later, without counting the try.
            end = TryEnd(Verdict.REQUEUE, Outcome.INTERRUPTED, error_type="WorkerShutdown",
                         error_message=f"stopped early for a worker shutdown "
                                       f"({end.error_message})", duration=end.duration,
                         memory_mb=end.memory_mb)
        start_unwritten = self.started.pop((job.id, job.attempt), None) is not None
        finish = settle(job, end, child.pid, start_unwritten)
        self.finishes.append(finish)
        self.want_claim = True
        self.nothing_ready = False  # a retry may be ready now: a claim must tell
        self.jobs_run += 1
        self.ahead.ended()
        if finish.outcome is Outcome.SUCCESS:  # thousands a second: only when asked for
            if log.isEnabledFor(logging.DEBUG):
                log.debug("%s %s done in %.3f s", job.task, job.uuid, end.duration or 0.0)
        else:
            log.warning("%s %s try %d: %s (%s: %s) -> %s", job.task, job.uuid, job.attempt,
                        finish.outcome, finish.error_type, finish.error_message, finish.state)

    def _reap(self) -> None:
        for child, how in self.pool.reap():
            self.selector.unregister(child.sock)
            child.sock.close()
            self._handle_messages(child)
            for job in reversed(list(child.queued)):  # the process never said it began them
                self._returned(child, (job.id, job.attempt))
            if child.running is not None:
                elapsed = time.monotonic() - child.running.started
                self._end(child, child.running.kill_reason or (
                    KILLED_FOR_ANOTHER if child.killed else crash_end(how, elapsed)))
            if not self.stopping and not self.hard_stop:
                self._spawn()

    def _enforce_deadlines(self) -> None:
        now = time.monotonic()
        for child in self.pool.busy():
            running = child.running
            assert running is not None
            if child.queued and now >= running.started + RETRACT_AFTER:
                self.pool.retract(child)  # held behind a long job: let another take it
            if running.kill_reason is not None:
                continue
            if self.hard_stop or (self.stop_deadline is not None and now >= self.stop_deadline):
                self.pool.kill(child, TryEnd(
                    Verdict.REQUEUE, Outcome.INTERRUPTED, error_type="WorkerShutdown",
                    error_message="the worker stopped before the job ended"))
            elif running.deadline is not None and now >= running.deadline:
                self.pool.kill(child, TryEnd(
                    Verdict.RETRY, Outcome.TIMEOUT, error_type="TimeoutError",
                    error_message=f"killed after {running.job.timeout:g} s (the job's timeout)",
                    duration=now - running.started))
            elif running.lost and running.stop_asked_at is not None \
                    and now >= running.stop_asked_at + self.settings.cancel_grace:
                self.pool.kill(child, TryEnd(
                    Verdict.CANCEL, Outcome.CANCELLED, error_type="Cancelled",
                    error_message="cancelled while running; the job process was stopped",
                    duration=now - running.started))

    # -- the database ----------------------------------------------------------------------

    def _writes_pending(self) -> bool:
        return bool(self.finishes or self.started)

    def _open_waker(self) -> None:
        assert self.backend is not None
        self.waker = self.backend.waker()
        self.waker_fd = self.waker.fileno()
        if self.waker_fd is not None:
            self.selector.register(self.waker_fd, selectors.EVENT_READ, "waker")

    def _close_waker(self) -> None:
        """Drop the waker; its connection may be long dead, so ask it nothing."""
        if self.waker_fd is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(self.waker_fd)
            self.waker_fd = None
        if self.waker is not None:
            with contextlib.suppress(Exception):
                self.waker.close()
            self.waker = None

    def _sync(self) -> None:
        now = time.monotonic()
        if now < self.db_retry_at:
            return
        try:
            self._sync_once(now)
        except DatabaseError as exc:
            self._database_failed(exc)
        else:
            if self.db_down_since is not None:
                log.warning("database reachable again after %.1f s",
                            time.monotonic() - self.db_down_since)
                self.db_down_since = None
            self.db_backoff = 0.1

    def _database_failed(self, exc: DatabaseError) -> None:
        now = time.monotonic()
        if self.db_down_since is None:
            self.db_down_since = now
            log.error("%s; retrying (running jobs go on, results are kept)", exc)
        self._close_waker()
        # Its other connection may be dead too: start afresh (once a round in flight ends).
        if self.backend is not None and self.round is None:
            with contextlib.suppress(Exception):
                self.backend.close()
            if self.claim_lane is not None:
                self.claim_lane.reset()
        self.db_retry_at = now + self.db_backoff
        self.db_backoff = min(self.db_backoff * 2, MAX_DB_BACKOFF)

    def _sync_once(self, now: float) -> None:
        backend = self.backend
        assert backend is not None
        if self.waker is None:
            self._open_waker()
            self.want_claim = True
            self.next_heartbeat = now
        if self.db_down_since is not None:
            self._flush(backend, now)  # ends first: the heartbeat puts back unknown claims
            self._heartbeat(backend)  # prove we are alive, then count a fresh lease
            self.db_ok_since = now
        self._poll_waker(now)
        if self.wake_at is not None and now >= self.wake_at:
            self.wake_at = None
            self.want_claim = True
        if self.round is not None:
            return  # the round thread has the connection
        if now >= self.next_channel_refresh:
            self.channel_settings = backend.channel_settings()
            self.ahead.follow(self.channel_settings)
            self.next_channel_refresh = now + CHANNEL_REFRESH_INTERVAL
        if now >= self.next_heartbeat or (self.next_lost_check is not None
                                          and now >= self.next_lost_check):
            self._heartbeat(backend)
        if now >= self.next_rescue:
            self.next_rescue = now + self.lease / 2
            if now - self.db_ok_since >= self.lease:  # after an outage, let others heartbeat
                rescued = backend.rescue(self.lease, self._alive_here(backend))
                if rescued:
                    log.warning("rescued %d job(s) of workers that stopped heartbeating",
                                len(rescued))
                    self.want_claim = True
        self._exchange(backend, now)

    def _alive_here(self, backend: Backend) -> list[str]:
        """Silent workers of this host whose process still runs: slow, not dead (a SQLite
        file busy for longer than a lease, say). Their jobs must not run twice."""
        host = socket.gethostname()
        return [worker.id for worker in backend.list_workers()
                if worker.state == "running" and worker.heartbeat_age > self.lease
                and worker.host == host and process_started_at(worker.pid, worker.started_at)]

    def _flush(self, backend: Backend, now: float) -> None:
        if self.started:
            backend.mark_started(self.id, [(job_id, attempt, pid) for (job_id, attempt), pid
                                           in self.started.items()])
            self.started = {}
        if self.progress and (self.finishes or now >= self.next_progress_flush):
            backend.save_progress(list(self.progress.values()))
            self.progress = {}
            self.next_progress_flush = now + PROGRESS_FLUSH_INTERVAL
        if self.finishes:
            finishes, self.finishes = self.finishes, []
            try:
                self._report_unapplied(finishes, set(backend.finish(self.id, finishes)))
            except DatabaseError:
                self.finishes = finishes + self.finishes
                raise

    def _poll_waker(self, now: float) -> None:
        waker = self.waker
        assert waker is not None
        if self.waker_fd is None:
            if now < self.next_poll or not self.pool.children:
                return
            self.next_poll = now + (self.settings.poll_interval or waker.poll_interval)
        elif not self.waker_news:
            if now >= self.next_poll:  # a safety net under LISTEN/NOTIFY
                self.next_poll = now + (self.settings.poll_interval or waker.poll_interval)
                self.want_claim = True
            return
        self.waker_news = False
        work, control = waker.check()
        if work:
            self.want_claim = True
        if control:  # a cancel, or a channel changed: look at both soon
            self.next_channel_refresh = now
            self.want_claim = True
        if control and self.pool.holding() and self.next_lost_check is None:
            self.next_lost_check = now + (LOST_CHECK_DELAY if self.waker_fd is None else 0.0)

    def _heartbeat(self, backend: Backend) -> None:
        now = time.monotonic()
        running = [(c.running.job.id, c.running.job.attempt)
                   for c in self.pool.busy() if c.running is not None]
        running += [(job.id, job.attempt) for job in self.ready]
        running += [(job.id, job.attempt) for c in self.pool.holding() for job in c.queued]
        running += [(finish.id, finish.attempt) for finish in self.finishes]  # not written yet
        lost = backend.heartbeat(self.id, running)
        if lost is not None:
            # Jobs the database says are ours but no process of ours runs: a claim whose
            # answer was lost with the connection. Put them back.
            orphans = backend.release_unknown(self.id, running)
            if orphans:
                log.warning("put back %d job(s) claimed for this worker whose claim answer "
                            "was lost", len(orphans))
                self.want_claim = True
        if lost is None:
            log.warning("worker %s was forgotten by the database; registering again", self.id)
            backend.register_worker(WorkerInfo(
                id=self.id, host=socket.gethostname(), pid=os.getpid(),
                concurrency=self.concurrency, channels=self.channels, version=__version__))
            lost = backend.heartbeat(self.id, running) or []
        if now - self.last_beat > self.lease / 2:
            # We were frozen (SIGSTOP, a paused VM, a blocked call): so may our neighbours
            # have been. Give them a lease to heartbeat before rescuing their jobs.
            self.db_ok_since = now
        self.last_beat = now
        self.next_heartbeat = now + self.lease / 4
        self.next_lost_check = None
        lost_ids = set(lost)
        if lost_ids and self.ready:
            kept = [job for job in self.ready if job.id not in lost_ids]
            if len(kept) < len(self.ready):
                log.warning("%d job(s) claimed ahead were cancelled or taken over before "
                            "they started", len(self.ready) - len(kept))
                self.ready = deque(kept)
        for child in self.pool.holding():
            lost_ahead = {(job.id, job.attempt) for job in child.queued if job.id in lost_ids}
            if lost_ahead:
                self.cancelled_ahead |= lost_ahead
                self.pool.retract(child)
            if child.running is not None and child.running.job.id in lost_ids:
                self._lose(child)

    def _lose(self, child: Child) -> None:
        """The running job was cancelled or taken over: stop its process."""
        running = child.running
        assert running is not None
        if not running.lost:
            running.lost = True
            log.warning("%s %s was cancelled or taken over; stopping its process",
                        running.job.task, running.job.uuid)
            self.pool.ask_to_stop(child)

    def _exchange(self, backend: Backend, now: float) -> None:
        """Write the round's starts, progress and ends, and claim jobs for idle processes
        (and ahead), in one batch: one round trip on PostgreSQL, one commit on SQLite.
        While processes are busy it runs on the round thread, so they are fed meanwhile."""
        claim = 0
        if self.want_claim and not self.stopping:
            claim = max(len(self.pool.idle()) + self._claim_ahead() - len(self.ready), 0)
        progress = list(self.progress.values()) if self.progress and (
            self.finishes or now >= self.next_progress_flush) else []
        starts_due = bool(self.started) and (now >= self.started_since + STARTED_DELAY
                                             or self.stopping)
        if not (claim or starts_due or progress or self.finishes):
            return
        round_ = Round(started=self.started, progress=progress, finishes=self.finishes,
                       claim=claim, channels=self.channel_settings)
        self.started, self.finishes = {}, []
        if progress:
            self.progress = {}
            self.next_progress_flush = now + PROGRESS_FLUSH_INTERVAL
        self.round = round_
        lane = self.claim_lane
        if self.pool.holding():
            self.rounds.submit(round_, lambda: round_.run(backend, self.id, lane))
        else:  # nothing to feed meanwhile: spare the thread hop (start latency)
            self._take_round(round_, lambda: round_.run(backend, self.id, lane))

    def _collect_round(self) -> None:
        assert self.round is not None and self.round.future is not None
        self._take_round(self.round, self.round.future.result)

    def _take_round(self, round_: Round,
                    answer: Callable[[], tuple[list[int], list[ClaimedJob]]]) -> None:
        """Take a round's answer (or its failure: what it carried is written again)."""
        try:
            applied, jobs = answer()
        except BaseException:
            self.round = None
            self.started = {**round_.started, **self.started}
            self.finishes = round_.finishes + self.finishes
            for update in round_.progress:
                self.progress.setdefault(update.id, update)
            raise
        self.round = None
        self._report_unapplied(round_.finishes, set(applied))
        if round_.claim_error is not None:
            raise round_.claim_error  # the ends are written; the claim is tried again later
        if not round_.claim:
            return
        self.ready.extend(jobs)
        self._feed()
        if len(jobs) < round_.claim:
            # Ends that came in meanwhile may make retries or dependent jobs ready once
            # written: the next round claims again (on SQLite no one else would tell us).
            self.want_claim = bool(self.finishes)
            eta = self.backend.next_eta() if self.backend is not None else None
            self.nothing_ready = not (jobs or self.ready or self.finishes) and (
                eta is None or eta > 0)
            if eta is not None:  # due now but held back (capacity, lock): look again soon
                self.wake_at = time.monotonic() + (eta if eta > 0 else BLOCKED_RETRY)
        else:
            self.nothing_ready = False

    def _report_unapplied(self, finishes: list[Finish], applied: set[int]) -> None:
        for finish in finishes:
            if finish.id not in applied:
                log.warning("job %d try %d was no longer ours (cancelled or rescued); "
                            "its end was not applied to the job", finish.id, finish.attempt)

    def _final_flush(self) -> None:
        """Write what is left; if the database stays away, rescue will put the jobs back."""
        if self.backend is None:
            return
        deadline = time.monotonic() + 5.0
        while True:
            try:
                self._flush(self.backend, time.monotonic())
                if self.ready:  # claimed ahead, never started: give them back untouched
                    self.backend.unclaim(self.id, [(job.id, job.attempt) for job in self.ready])
                    log.info("gave back %d job(s) claimed ahead", len(self.ready))
                    self.ready.clear()
                self.backend.stop_worker(self.id)
                return
            except DatabaseError as exc:
                if time.monotonic() >= deadline:
                    log.error("could not write the last results (%s); the jobs will be "
                              "rescued as interrupted", exc)
                    return
                time.sleep(0.2)


def run_worker(app: App, **options: Any) -> int:
    return Worker(app, **options).run()
