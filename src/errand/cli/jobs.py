"""`errand jobs list|show|requeue|cancel|set-done|purge`."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from typing import Any

from rich.progress import Progress, SpinnerColumn, TextColumn

from errand import ops, serialization
from errand.cli import render
from errand.cli.appload import load_app
from errand.errors import ConfigurationError
from errand.jobs import State

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


_LONGEST = 100 * 365 * 86400  # beyond this, times overflow the databases' date types


def parse_duration(text: str, option: str = "duration") -> float:
    """`30d`, `12h`, `15m`, `90s` or plain seconds.

    Parsed by the command, not by argparse, so a bad value is one `errand: error:` line.
    """
    match = _DURATION.match(text)
    if not match:
        raise ConfigurationError(
            f"{option}: {text!r} is not a duration; write it like 30d, 12h, 15m or 90s")
    seconds = float(match.group(1)) * _UNIT[match.group(2)]
    if seconds > _LONGEST:
        raise ConfigurationError(f"{option}: {text!r} is too long; at most 100 years")
    return seconds


def parse_states(text: str) -> list[State]:
    states = []
    for name in text.split(","):
        try:
            states.append(State(name.strip()))
        except ValueError:
            raise ConfigurationError(
                f"unknown state {name.strip()!r}; states are "
                f"{', '.join(s.value for s in State)}") from None
    return states


def add_arguments(parser: argparse.ArgumentParser,
                  common: Callable[[argparse.ArgumentParser], None]) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    def action(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = actions.add_parser(name, help=help_text, description=help_text)
        common(sub)
        return sub

    listing = action("list", "jobs, newest first")
    listing.add_argument("--state", help="only jobs in this state")
    listing.add_argument("--channel", help="only jobs of this channel (and its sub-channels)")
    listing.add_argument("--task", help="only jobs of this task")
    listing.add_argument("--limit", type=int, default=100, help="at most this many (100)")
    listing.add_argument("--json", action="store_true", help="print JSON")

    show = action("show", "one job and its tries")
    show.add_argument("uuid")
    show.add_argument("--follow", action="store_true",
                      help="draw a live progress bar until the job ends")
    show.add_argument("--json", action="store_true", help="print JSON")

    for name, help_text in (("requeue", "run failed, cancelled or done jobs again"),
                            ("cancel", "cancel jobs that have not finished"),
                            ("set-done", "mark failed, pending or waiting jobs done")):
        sub = action(name, help_text)
        sub.add_argument("uuids", nargs="*", metavar="UUID")
        sub.add_argument("--state", help="every job in this state instead of UUIDs")
        if name == "set-done":
            sub.add_argument("--result", help="the result to record, as JSON")
        sub.add_argument("--json", action="store_true", help="print JSON")

    purge = action("purge", "delete old finished jobs and their tries")
    purge.add_argument("--older-than", required=True,
                       help="age since the job ended: 30d, 12h, 15m, 90s")
    purge.add_argument("--state", default="done,cancelled",
                       help="finished states to delete, comma-separated (default: "
                            "done,cancelled)")
    purge.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    app = load_app(args)
    handler: Callable[[Any, argparse.Namespace], int] = {
        "list": _list, "show": _show, "purge": _purge,
    }.get(args.action, _change)
    return handler(app, args)


def _list(app: Any, args: argparse.Namespace) -> int:
    if args.state is not None:
        parse_states(args.state)
    if args.limit < 1:
        raise ConfigurationError(f"--limit must be at least 1, got {args.limit}")
    jobs = app.jobs(state=args.state, channel=args.channel, task=args.task, limit=args.limit)
    if args.json:
        render.print_json([render.job_dict(job) for job in jobs])
    elif jobs:
        render.console.print(render.jobs_table(jobs))
    else:
        render.console.print("no jobs")
    return 0


def _show(app: Any, args: argparse.Namespace) -> int:
    job = app.job(args.uuid)
    if args.follow and not job.finished:
        job.wait(progress=True)
    logs = job.logs
    if args.json:
        render.print_json({**render.job_dict(job),
                           "logs": [render.attempt_dict(entry) for entry in logs]})
    else:
        render.show_job(job, logs)
    return 0


def _change(app: Any, args: argparse.Namespace) -> int:
    if bool(args.uuids) == bool(args.state):
        raise ConfigurationError(f"jobs {args.action} takes job UUIDs or --state, not both "
                                 "nor neither")
    if args.state:
        uuids = [uuid for state in parse_states(args.state)
                 for uuid in app.backend.uuids_in_state(state)]
    else:
        uuids = [ops.parse_uuid(text) for text in args.uuids]
    result = None
    if getattr(args, "result", None) is not None:
        try:
            result = serialization.dumps(serialization.loads(args.result), "--result")
        except ValueError as exc:
            raise ConfigurationError(f"--result is not valid JSON: {exc}") from None
    report = ops.change_jobs(app.backend, args.action, uuids, result)
    if args.json:
        render.print_json({"changed": [str(u) for u in report.changed],
                           "refused": {str(u): why for u, why in report.refused.items()}})
    else:
        past = {"requeue": "requeued", "cancel": "cancelled", "set-done": "set done"}
        render.console.print(f"{past[args.action]} {len(report.changed)} job(s)")
        for uuid, why in report.refused.items():
            render.console.print(f"[yellow]{uuid}[/]: {why}")
    return 1 if report.refused else 0


def _purge(app: Any, args: argparse.Namespace) -> int:
    older_than = parse_duration(args.older_than, "--older-than")
    states = parse_states(args.state)
    # Disabled when piped: the spinner is for people, and would leave a blank line.
    with Progress(SpinnerColumn(), TextColumn("{task.description}"),
                  console=render.console, transient=True,
                  disable=not render.console.is_terminal) as progress:
        bar = progress.add_task("purging…")
        total = ops.purge(app.backend, older_than, states,
                          lambda done: progress.update(bar, description=f"purged {done:,} jobs"))
    if args.json:
        render.print_json({"purged": total})
    else:
        render.console.print(f"purged {total:,} job(s)")
    return 0
