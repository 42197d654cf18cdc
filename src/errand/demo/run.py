"""`errand demo`: enqueue a small back-office scenario, run it with a real worker, watch it live.

Only the jobs this run enqueued are watched, so running the demo again in the same folder
works; `errand.db` is left behind for `errand jobs list` and `errand jobs show`.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from rich.console import Group
from rich.live import Live
from rich.markup import escape
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from errand.app import App
from errand.cli import render
from errand.errors import ConfigurationError
from errand.handle import Job
from errand.jobs import State
from errand.settings import DEFAULT_DATABASE_URL, no_delay_enabled

DEADLINE = 90.0
REFRESH_SECONDS = 0.25
STOP_WAIT = 10.0


@dataclass
class DemoJob:
    """One job of the scenario, what it stands for, and how it should end."""

    label: str
    job: Job[Any]
    expect: State = State.DONE


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--concurrency", type=int, default=4,
                        help="job processes of the demo's worker (default: 4)")


def run_demo(args: argparse.Namespace) -> int:
    """Run the scenario; 0 when every job ended as the scenario expects."""
    if no_delay_enabled():
        raise ConfigurationError("errand demo runs its jobs in a real worker: unset "
                                 "ERRAND_NO_DELAY")
    if args.concurrency < 1:
        raise ConfigurationError("--concurrency must be at least 1")
    # Imported here, not at the top: every `errand` command imports this module, and only
    # the demo should build the demo's App.
    from errand.demo.tasks import app

    url = getattr(args, "database_url", None) or DEFAULT_DATABASE_URL
    app.use_database(url)
    try:
        jobs = _enqueue()
        _intro(url, jobs, args.concurrency)
        return _run_worker(app, url, jobs, args.concurrency)
    finally:
        app.close()


def _enqueue() -> list[DemoJob]:
    """The scenario: month-end invoicing, its emails, a report, a bank import, a carrier."""
    from errand.demo import tasks

    jobs = [DemoJob(f"invoices {ids[0]}-{ids[-1]}", tasks.process_invoices.delay(ids))
            for ids in ([1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12])]
    customers = ["alice@acme.example", "bob@globex.example", "carol@initech.example",
                 "dave@umbrella.example", "erin@hooli.example"]
    emails = tasks.send_email.delay_many(
        [((to, f"Your invoice {tasks.invoice_number(n)}"), {"body": "Please find it attached."})
         for n, to in enumerate(customers, start=1)])
    jobs += [DemoJob(job.args[0].split(".")[0], job) for job in emails]
    reminder = tasks.send_email.with_delay(eta=4)(
        "frank@stark.example", "Reminder: invoice INV/2024/0917 is overdue")
    jobs.append(DemoJob("reminder, eta 4 s", reminder))
    report = tasks.generate_report.with_delay(priority=20)("sales by month 2025", months=12)
    jobs.append(DemoJob("sales by month", report))
    jobs.append(DemoJob("First Bank 2025-03",
                        tasks.import_bank_statement.delay("First Bank", "2025-03")))
    jobs.append(DemoJob("carrier hangs",
                        tasks.sync_tracking.delay("Speedy Parcels", "WH/OUT/00042"),
                        expect=State.FAILED))
    return jobs


def _intro(url: str, jobs: list[DemoJob], concurrency: int) -> None:
    console = render.console
    console.print(f"[bold]errand demo[/]: a month-end back office, kept in {escape(url)}\n")
    console.print(
        f"Enqueued {len(jobs)} jobs: 3 invoice batches, 6 emails (priority 5, so they go "
        "first; one not before 4 s), a long report with live progress (priority 20), a bank "
        "import that fails once and is retried, and a carrier sync that hangs past its 2 s "
        "timeout, is killed, retried once and fails.")
    console.print(f"Starting a worker with {concurrency} job processes...\n")


def _run_worker(app: App, url: str, jobs: list[DemoJob], concurrency: int) -> int:
    """Start a real worker, watch until every job has finished, then stop the worker."""
    command = [sys.executable, "-m", "errand", "worker", "--app", "errand.demo.tasks:app",
               "--database-url", url, "--concurrency", str(concurrency),
               "--log-level", "warning"]
    with tempfile.TemporaryFile("w+") as log:
        # Its own session: Ctrl-C reaches the demo only, which then stops the worker itself.
        worker = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
        began = time.monotonic()
        finished = False
        try:
            problem = _watch(jobs, worker, began)
            finished = problem is None
        finally:
            _stop(worker, at_once=not finished)
        elapsed = time.monotonic() - began
        if problem is not None:
            render.console.print(f"\n[red]errand demo: {problem}[/]")
            log.seek(0)
            tail = log.read().splitlines()[-15:]
            if tail:
                render.console.print("[dim]last lines of the worker's output:[/]")
                render.console.print(escape("\n".join(tail)))
            return 1
    return _summary(app, jobs, elapsed, url)


def _watch(jobs: list[DemoJob], worker: subprocess.Popen[Any], began: float) -> str | None:
    """Redraw the jobs until all have finished; return what went wrong, if anything did."""
    with Live(_live_view(jobs, worker.pid, 0.0), console=render.console,
              refresh_per_second=4) as live:
        while True:
            for entry in jobs:
                entry.job.refresh()
            elapsed = time.monotonic() - began
            live.update(_live_view(jobs, worker.pid, elapsed))
            if all(entry.job.finished for entry in jobs):
                return None
            code = worker.poll()
            if code is not None:
                return f"the worker exited early (exit code {code})"
            if elapsed > DEADLINE:
                return f"the jobs did not finish within {DEADLINE:g} s"
            time.sleep(REFRESH_SECONDS)


def _line(text: str, style: str = "") -> Text:
    """A cell kept on one line: cut with an ellipsis when the terminal is narrow."""
    return Text(text, style=style, no_wrap=True, overflow="ellipsis")


def _live_view(jobs: list[DemoJob], pid: int, elapsed: float) -> Group:
    # Columns without a width shrink first when the terminal is narrow.
    table = Table(show_edge=False, pad_edge=False)
    table.add_column("task")
    table.add_column("job")
    table.add_column("prio", width=4, justify="right")
    table.add_column("state", width=7)
    table.add_column("try", width=3, justify="right")
    table.add_column("progress", width=15)
    table.add_column("status")
    now = datetime.now(UTC)
    for entry in jobs:
        job = entry.job
        bar = Table.grid(padding=(0, 1))
        bar.add_row(ProgressBar(total=100, completed=job.progress, width=10),
                    f"{job.progress:>3}%")
        table.add_row(_line(job.task), _line(entry.label), str(job.priority),
                      render.styled(job.state), str(job.attempt), bar, _status(job, now))
    counts = {state: sum(1 for e in jobs if e.job.state == state) for state in State}
    running = counts[State.ENQUEUED] + counts[State.STARTED]
    header = (f"[bold]worker pid {pid}[/]  {elapsed:5.1f} s   "
              f"[green]{counts[State.DONE]} done[/]  [cyan]{running} running[/]  "
              f"[blue]{counts[State.PENDING]} pending[/]  [red]{counts[State.FAILED]} failed[/]")
    return Group(header, table)


def _status(job: Job[Any], now: datetime) -> Text:
    """The live status line: progress message, or why it waits, or how it ended."""
    if job.state == State.DONE:
        return _line(render.short(job.result), "green")
    if job.state == State.FAILED:
        return _line(job.error or "", "red")
    if job.state == State.PENDING:
        wait = max((job.eta - now).total_seconds(), 0.0)
        if job.error:
            return _line(f"retry in {wait:.1f} s after {job.error}", "yellow")
        return _line(f"due in {wait:.1f} s" if wait else "waiting for a free job process")
    return _line(job.status_message or "")


def _stop(worker: subprocess.Popen[Any], at_once: bool) -> None:
    """SIGTERM the worker; a second one (when at_once) puts running jobs back at once."""
    if worker.poll() is not None:
        return
    worker.send_signal(signal.SIGTERM)
    if at_once:
        try:
            worker.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            worker.send_signal(signal.SIGTERM)
    try:
        worker.wait(timeout=STOP_WAIT)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()


def _summary(app: App, jobs: list[DemoJob], elapsed: float, url: str) -> int:
    table = Table(title="summary", title_justify="left", show_edge=False, pad_edge=False)
    table.add_column("task")
    table.add_column("job")
    table.add_column("state", width=6)
    table.add_column("tries", width=20)
    table.add_column("run time", width=8, justify="right")
    table.add_column("result / error")
    for entry in jobs:
        job = entry.job
        logs = job.logs
        outcomes = ", ".join(render.styled(log.outcome or "running") for log in logs)
        outcome = (_line(job.error, "red") if job.error else _line(render.short(job.result)))
        table.add_row(_line(job.task), _line(entry.label), render.styled(job.state),
                      f"{job.attempt} ({outcomes})",
                      render.seconds(sum(log.duration or 0.0 for log in logs)), outcome)
    console = render.console
    console.print()
    console.print(table)
    console.print()
    unexpected = [entry for entry in jobs if entry.job.state != entry.expect]
    for entry in unexpected:
        console.print(f"[red]{entry.job.task} ({escape(entry.label)}) ended "
                      f"{entry.job.state}, expected {entry.expect}[/]")
    if unexpected:
        return 1
    console.print(f"[green]Every job ended as expected[/] in {elapsed:.1f} s.")
    where = "" if url == DEFAULT_DATABASE_URL else f" --database-url {escape(url)}"
    timed_out = next(entry.job for entry in jobs if entry.expect == State.FAILED)
    console.print(f"The jobs stay in {escape(app.database_url)}: look around with "
                  f"[bold]errand jobs list{where}[/], or see the tries of the timed-out job "
                  f"with [bold]errand jobs show{where} {timed_out.uuid}[/]")
    return 0
