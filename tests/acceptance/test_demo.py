"""Acceptance test of `errand demo` (SPEC section 9): the real command in a fresh folder, then
the `errand.db` it leaves behind, read back through the public API and `errand jobs list`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import errand

DEMO_TIMEOUT = 180
# The shell running the tests must not steer the demo (ERRAND_NO_DELAY, another database...).
CLEAN_ENV = {**os.environ, **{name: "" for name in os.environ if name.startswith("ERRAND_")}}

INVOICES = "account.invoice.process_batch"
EMAIL = "mail.send"
REPORT = "report.generate"
BANK = "account.bank_statement.import"
TRACKING = "stock.picking.sync_tracking"


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "errand", *args], cwd=cwd, env=CLEAN_ENV,
                          capture_output=True, text=True, timeout=DEMO_TIMEOUT, check=False)


def run_demo(folder: Path) -> subprocess.CompletedProcess[str]:
    done = run("demo", cwd=folder)
    assert done.returncode == 0, (
        f"errand demo exited {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}")
    return done


@contextmanager
def stored_jobs(folder: Path) -> Iterator[dict[str, list[errand.Job[Any]]]]:
    """Every job of the folder's errand.db, oldest first, grouped by task."""
    app = errand.App(f"sqlite:///{folder / 'errand.db'}")
    try:
        grouped: dict[str, list[errand.Job[Any]]] = defaultdict(list)
        for job in reversed(app.jobs(limit=1000)):
            grouped[job.task].append(job)
        yield grouped
    finally:
        app.close()


def outcomes(job: errand.Job[Any]) -> list[str]:
    return [str(entry.outcome) for entry in job.logs]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One run of `errand demo` in an empty folder: the folder and what it printed."""
    folder = tmp_path_factory.mktemp("demo")
    return folder, run_demo(folder).stdout


@pytest.fixture(scope="module")
def jobs(demo: tuple[Path, str]) -> Iterator[dict[str, list[errand.Job[Any]]]]:
    with stored_jobs(demo[0]) as grouped:
        yield grouped


def test_the_demo_ends_with_a_summary_and_points_at_errand_db(demo: tuple[Path, str]) -> None:
    folder, out = demo
    assert (folder / "errand.db").is_file()
    assert "summary" in out
    assert "Every job ended as expected" in out
    assert "errand jobs list" in out
    assert "errand jobs show" in out


def test_it_runs_the_whole_scenario(jobs: dict[str, list[errand.Job[Any]]]) -> None:
    counts = {task: len(found) for task, found in jobs.items()}
    assert counts == {INVOICES: 3, EMAIL: 6, REPORT: 1, BANK: 1, TRACKING: 1}


def test_invoices_emails_and_the_report_are_done(jobs: dict[str, list[errand.Job[Any]]]) -> None:
    for task in (INVOICES, EMAIL, REPORT):
        for job in jobs[task]:
            assert job.state == errand.State.DONE, (task, job.state, job.error)
            assert outcomes(job) == ["success"], (task, outcomes(job))
    assert [job.result["posted"] for job in jobs[INVOICES]] == [4, 4, 4]
    assert all(job.result["message_id"].endswith("@mail.errand.demo>") for job in jobs[EMAIL])


def test_emails_have_priority_5_and_go_before_the_invoices(
        jobs: dict[str, list[errand.Job[Any]]]) -> None:
    emails = jobs[EMAIL]
    assert {(job.priority, job.channel) for job in emails} == {(5, "root.mail")}
    assert {job.priority for job in jobs[INVOICES]} == {10}
    scheduled = [job for job in emails if job.eta - job.created_at > timedelta(seconds=3)]
    assert len(scheduled) == 1, "one reminder is sent with an eta"
    assert scheduled[0].logs[0].started_at >= scheduled[0].eta
    immediate = [job for job in emails if job not in scheduled]
    # Claimed first, the emails fill the 4 job processes; the fifth begins with the first
    # invoice, when those end together (a race of milliseconds), so it is only certain to
    # begin before any invoice has ended.
    email_starts = sorted(job.logs[0].started_at for job in immediate)
    first_invoice_start = min(job.logs[0].started_at for job in jobs[INVOICES])
    first_invoice_end = min(job.logs[0].ended_at for job in jobs[INVOICES])
    assert email_starts[3] < first_invoice_start
    assert email_starts[-1] < first_invoice_end


def test_the_report_reports_progress_up_to_100(jobs: dict[str, list[errand.Job[Any]]]) -> None:
    [report] = jobs[REPORT]
    assert report.progress == 100
    # Cleared when a try starts: a message here was reported while the report ran.
    assert report.status_message is not None and "rows" in report.status_message
    assert report.priority == 20
    [only_try] = report.logs
    assert only_try.outcome == "success"
    assert only_try.duration is not None and only_try.duration > 3, "a long report"


def test_the_flaky_job_fails_once_then_succeeds(jobs: dict[str, list[errand.Job[Any]]]) -> None:
    [bank] = jobs[BANK]
    assert bank.state == errand.State.DONE
    assert bank.attempt == 2
    first, second = bank.logs
    assert (first.attempt, first.outcome, second.attempt, second.outcome) == (
        1, "error", 2, "success")
    assert first.error is not None and first.error.startswith("RetryableJobError")
    assert bank.result == {"statement": "First Bank 2025-03", "lines": 37}


def test_the_hanging_job_is_killed_at_its_timeout_twice_then_fails(
        jobs: dict[str, list[errand.Job[Any]]]) -> None:
    [tracking] = jobs[TRACKING]
    assert tracking.state == errand.State.FAILED
    assert tracking.timeout == 2
    assert outcomes(tracking) == ["timeout", "timeout"]
    for entry in tracking.logs:
        assert entry.duration is not None and 2 <= entry.duration < 10
    assert tracking.error is not None and tracking.error.startswith("TimeoutError")


def test_errand_jobs_list_shows_the_demo_jobs(demo: tuple[Path, str]) -> None:
    folder, _ = demo
    listed = run("jobs", "list", cwd=folder)
    assert listed.returncode == 0, listed.stderr
    for task in (INVOICES, EMAIL, REPORT, BANK, TRACKING):
        assert task in listed.stdout


def test_a_second_run_in_the_same_folder_watches_only_its_own_jobs(
        demo: tuple[Path, str], tmp_path: Path) -> None:
    folder, _ = demo
    for path in folder.glob("errand.db*"):  # the database, and its WAL files if any
        shutil.copy(path, tmp_path / path.name)
    run_demo(tmp_path)
    with stored_jobs(tmp_path) as again:
        assert {task: len(found) for task, found in again.items()} == {
            INVOICES: 6, EMAIL: 12, REPORT: 2, BANK: 2, TRACKING: 2}
        assert [job.state for job in again[TRACKING]] == [errand.State.FAILED] * 2
        assert [outcomes(job) for job in again[BANK]] == [["error", "success"]] * 2
        others = [job for task in (INVOICES, EMAIL, REPORT) for job in again[task]]
        assert all(job.state == errand.State.DONE for job in others)
