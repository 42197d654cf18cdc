"""The tasks of `errand demo`: a small back office (invoices, mail, reports, a bank, a carrier).

The work is simulated with short sleeps so the demo shows queueing, priorities, progress,
retries and timeouts in a few seconds; every outcome is fixed, so a test can check it.
The worker imports this module as `errand.demo.tasks:app`; the runner sets the database.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import errand

app = errand.App()

INVOICE_SECONDS = 0.35
EMAIL_SECONDS = 0.6
REPORT_STEPS = 16
REPORT_STEP_SECONDS = 0.4
CARRIER_POLL_SECONDS = 0.5


def _job() -> errand.JobContext:
    """The running job; these tasks only make sense inside a worker (or under NO_DELAY)."""
    job = errand.current_job()
    if job is None:
        raise errand.FailedJobError("this demo task must run as a job")
    return job


def invoice_number(invoice_id: int) -> str:
    return f"INV/2025/{invoice_id:04d}"


def invoice_amount(invoice_id: int) -> float:
    """A made-up but stable amount, so each run posts the same totals."""
    return round(120 + (invoice_id * 7919 % 900) + (invoice_id % 4) * 0.25, 2)


@app.task(name="account.invoice.process_batch")
def process_invoices(invoice_ids: list[int]) -> dict[str, Any]:
    """Validate and post a batch of draft invoices."""
    job = _job()
    for done, invoice_id in enumerate(invoice_ids):
        job.set_progress(100 * done / len(invoice_ids), f"posting {invoice_number(invoice_id)}")
        time.sleep(INVOICE_SECONDS)
    return {"posted": len(invoice_ids),
            "amount_total": round(sum(invoice_amount(i) for i in invoice_ids), 2)}


@app.task(name="mail.send", channel="root.mail", priority=5, max_retries=3,
          retry_pattern={1: 10, 3: 60})
def send_email(to: str, subject: str, body: str = "") -> dict[str, str]:
    """Send one email through the outgoing mail server."""
    _job().set_progress(50, f"SMTP: sending to {to}")
    time.sleep(EMAIL_SECONDS)
    digest = hashlib.sha1(f"{to}\n{subject}\n{body}".encode()).hexdigest()[:12]
    return {"message_id": f"<{digest}@mail.errand.demo>"}


@app.task(name="report.generate")
def generate_report(name: str, months: int = 12) -> dict[str, int]:
    """Build a long report, reporting how far it got."""
    job = _job()
    rows = 0
    for step in range(REPORT_STEPS):
        month = 1 + step * months // REPORT_STEPS
        job.set_progress(100 * step / REPORT_STEPS,
                         f"aggregating month {month}/{months} ({rows:,} rows)")
        time.sleep(REPORT_STEP_SECONDS)
        rows += 1250 + 37 * step
    job.set_progress(100, f"{name}: {rows:,} rows rendered")
    return {"rows": rows, "pages": rows // 400}


@app.task(name="account.bank_statement.import")
def import_bank_statement(bank: str, period: str) -> dict[str, Any]:
    """Fetch a bank statement; the bank is busy on the first call, as banks are."""
    job = _job()
    job.set_progress(20, f"connecting to {bank}")
    time.sleep(0.5)
    if job.attempt == 1:
        raise errand.RetryableJobError(f"{bank} answered 503 Service Unavailable", seconds=1)
    job.set_progress(60, f"reading the {period} statement")
    time.sleep(0.8)
    return {"statement": f"{bank} {period}", "lines": 37}


@app.task(name="stock.picking.sync_tracking", timeout=2, max_retries=1, retry_pattern={1: 1})
def sync_tracking(carrier: str, picking: str) -> dict[str, str]:
    """Ask the carrier for tracking numbers; its API hangs, so the worker kills the try."""
    job = _job()
    waited = 0.0
    while True:  # the timeout ends this loop: the worker kills the process
        job.set_progress(0, f"{carrier}: no answer about {picking} yet ({waited:.1f} s)")
        time.sleep(CARRIER_POLL_SECONDS)
        waited += CARRIER_POLL_SECONDS
