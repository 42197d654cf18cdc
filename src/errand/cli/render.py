"""How the CLI shows things: rich tables for people, plain JSON for scripts (`--json`)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from errand import serialization
from errand.handle import Attempt, Job

console = Console(highlight=False)
if not console.is_terminal:  # piped: don't squeeze tables into 80 columns
    console.width = max(console.width, 200)

STATE_STYLES = {
    "wait_dependencies": "magenta", "pending": "blue", "enqueued": "cyan", "started": "cyan",
    "done": "green", "failed": "red", "cancelled": "yellow",
    "success": "green", "error": "red", "timeout": "red", "crash": "red",
    "interrupted": "yellow", "running": "green", "stopped": "dim", "dead": "red",
}


def styled(value: Any) -> str:
    text = str(value)
    style = STATE_STYLES.get(text)
    return f"[{style}]{escape(text)}[/]" if style else escape(text)


def when(value: datetime | None) -> str:
    return "" if value is None else value.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def seconds(value: float | None) -> str:
    if value is None:
        return ""
    if value < 1:
        return f"{value * 1000:.1f} ms"
    if value < 120:
        return f"{value:.2f} s"
    return f"{value / 60:.1f} min"


def short(value: Any, width: int = 60) -> str:
    text = value if isinstance(value, str) else json.dumps(
        serialization.to_jsonable(value, "value"), ensure_ascii=False)
    return text if len(text) <= width else text[: width - 1] + "…"


def plain(value: Any) -> Any:
    """A value as plain JSON (tagged types become their tagged form)."""
    return serialization.to_jsonable(value, "value")


def job_dict(job: Job[Any]) -> dict[str, Any]:
    return {
        "uuid": str(job.uuid), "task": job.task, "description": job.description,
        "state": str(job.state), "channel": job.channel, "priority": job.priority,
        "eta": iso(job.eta), "attempt": job.attempt, "retries": job.retries,
        "max_retries": job.max_retries, "timeout": job.timeout, "progress": job.progress,
        "status_message": job.status_message, "args": plain(job.args),
        "kwargs": plain(job.kwargs), "result": plain(job.result), "error": job.error,
        "worker": job.worker, "created_at": iso(job.created_at),
        "started_at": iso(job.started_at), "ended_at": iso(job.ended_at),
    }


def attempt_dict(entry: Attempt) -> dict[str, Any]:
    return {
        "attempt": entry.attempt, "started_at": iso(entry.started_at),
        "ended_at": iso(entry.ended_at), "duration": entry.duration,
        "outcome": None if entry.outcome is None else str(entry.outcome),
        "result": plain(entry.result), "error": entry.error, "traceback": entry.traceback,
        "worker": entry.worker, "pid": entry.pid, "memory_mb": entry.memory_mb,
    }


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


def jobs_table(jobs: list[Job[Any]]) -> Table:
    table = Table(show_edge=False, pad_edge=False)
    table.add_column("uuid", no_wrap=True)
    table.add_column("task", overflow="fold")
    table.add_column("state", no_wrap=True)
    table.add_column("channel", overflow="fold")
    table.add_column("prio", justify="right")
    table.add_column("try", justify="right")
    table.add_column("%", justify="right")
    table.add_column("created", no_wrap=True)
    table.add_column("result / error", overflow="fold")
    for job in jobs:
        outcome = job.error if job.error else ("" if job.result is None else short(job.result))
        table.add_row(str(job.uuid), escape(job.task), styled(job.state), escape(job.channel),
                      str(job.priority), str(job.attempt), str(job.progress),
                      when(job.created_at), escape(short(outcome)))
    return table


def show_job(job: Job[Any], logs: list[Attempt]) -> None:
    fields = [
        ("task", escape(job.task)), ("description", escape(job.description)),
        ("state", styled(job.state)), ("channel", escape(job.channel)),
        ("priority", str(job.priority)),
        ("tries", f"{job.attempt} (retries counted {job.retries} of "
                  f"{job.max_retries or 'unlimited'})"),
        ("timeout", seconds(job.timeout) or "none"), ("eta", when(job.eta)),
        ("created", when(job.created_at)), ("started", when(job.started_at)),
        ("ended", when(job.ended_at)),
        ("progress", f"{job.progress}%" + (f"  {escape(job.status_message)}"
                                          if job.status_message else "")),
        ("args", escape(short(job.args, 200))), ("kwargs", escape(short(job.kwargs, 200))),
    ]
    if job.result is not None:
        fields.append(("result", escape(short(job.result, 400))))
    if job.error:
        fields.append(("error", f"[red]{escape(job.error)}[/]"))
    console.print(f"[bold]job {job.uuid}[/]")
    for name, value in fields:
        console.print(f"  [dim]{name:<12}[/] {value}")
    if not logs:
        return
    table = Table(title="tries", show_edge=False, pad_edge=False, title_justify="left")
    for column in ("#", "outcome", "started", "duration", "worker", "pid", "peak MB", "error"):
        table.add_column(column, overflow="fold")
    for entry in logs:
        table.add_row(
            str(entry.attempt), styled(entry.outcome or "running"), when(entry.started_at),
            seconds(entry.duration), escape(entry.worker or ""),
            "" if entry.pid is None else str(entry.pid),
            "" if entry.memory_mb is None else f"{entry.memory_mb:.1f}",
            escape(entry.error or ""))
    console.print()
    console.print(table)
    last = logs[-1]
    if last.traceback:
        console.print("\n[dim]traceback of the last try:[/]")
        console.print(escape(last.traceback.rstrip()))
