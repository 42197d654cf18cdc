"""`errand migrate | worker | enqueue | workers | channels | stats`."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from typing import Any

from rich.table import Table

from errand import ops, serialization
from errand.app import App
from errand.channels import parse_channels
from errand.cli import render
from errand.cli.appload import load_app
from errand.cli.jobs import parse_duration
from errand.errors import ConfigurationError
from errand.jobs import State
from errand.runtime.supervisor import Worker


def add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON")


def add_worker_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--channels", help="channel capacities, e.g. root:4,root.mail:2 "
                                           "(default: the app's, or $ERRAND_CHANNELS)")
    parser.add_argument("--concurrency", type=int, help="job processes (default: "
                                                        "$ERRAND_CONCURRENCY, else CPU count)")
    parser.add_argument("--burst", action="store_true", help="exit once no job is ready")
    parser.add_argument("--duration", help="exit after this long (90s, 15m, 2h)")
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"], help="(default: info)")


def add_enqueue_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="the task's name")
    parser.add_argument("--args", default="[]", help="positional arguments, a JSON array")
    parser.add_argument("--kwargs", default="{}", help="keyword arguments, a JSON object")
    parser.add_argument("--priority", type=int, help="lower runs first (default: the task's)")
    parser.add_argument("--eta", help="not before this long from now (90s, 15m, 2h)")
    parser.add_argument("--channel", help="channel (default: the task's)")
    add_json(parser)


def run(args: argparse.Namespace) -> int:
    command = args.command
    if command == "migrate":
        return _migrate(load_app(args))
    if command == "worker":
        return _worker(load_app(args, needed_for="errand worker"), args)
    if command == "enqueue":
        return _enqueue(load_app(args, needed_for="errand enqueue"), args)
    if command == "workers":
        return _workers(load_app(args), args)
    if command == "channels":
        return _channels(load_app(args), args)
    return _stats(load_app(args), args)


def _migrate(app: App) -> int:
    applied = app.migrate()
    version = app.backend.schema_version()
    if applied:
        render.console.print(f"applied migrations {', '.join(map(str, applied))}; "
                             f"schema at version {version}")
    else:
        render.console.print(f"schema already at version {version}")
    return 0


def _worker(app: App, args: argparse.Namespace) -> int:
    logging.getLogger("errand").setLevel(args.log_level.upper())
    if args.concurrency is not None and args.concurrency < 1:
        raise ConfigurationError("--concurrency must be at least 1")
    duration = None if args.duration is None else parse_duration(args.duration, "--duration")
    if args.channels is not None:
        parse_channels(args.channels)  # a typo is an error now, not a silent default
    worker = Worker(app, concurrency=args.concurrency, burst=args.burst,
                    duration=duration, channels=args.channels)
    return worker.run()


def _json_argument(text: str, option: str, kind: type) -> Any:
    try:
        value = serialization.loads(text)
    except ValueError as exc:
        raise ConfigurationError(f"{option} is not valid JSON: {exc}") from None
    if not isinstance(value, kind):
        expected = "array" if kind is list else "object"
        raise ConfigurationError(f"{option} must be a JSON {expected}, got {text!r}")
    return value


def _enqueue(app: App, args: argparse.Namespace) -> int:
    positional = _json_argument(args.args, "--args", list)
    keywords = _json_argument(args.kwargs, "--kwargs", dict)
    options: dict[str, Any] = {}
    if args.priority is not None:
        options["priority"] = args.priority
    if args.eta is not None:
        options["eta"] = parse_duration(args.eta, "--eta")
    if args.channel is not None:
        options["channel"] = args.channel
    job = app.enqueue(args.name, positional, keywords, **options)
    if args.json:
        render.print_json(render.job_dict(job))
    else:
        print(job.uuid)
    return 0


def _workers(app: App, args: argparse.Namespace) -> int:
    workers = app.backend.list_workers()
    lease = app.settings.lease
    if args.json:
        render.print_json([{
            "id": w.id, "host": w.host, "pid": w.pid, "status": ops.worker_status(w, lease),
            "started_at": render.iso(w.started_at), "heartbeat_age": w.heartbeat_age,
            "concurrency": w.concurrency, "running": w.running, "jobs_done": w.jobs_done,
        } for w in workers])
        return 0
    if not workers:
        render.console.print("no workers")
        return 0
    table = Table(show_edge=False, pad_edge=False)
    for column in ("worker", "host", "pid", "status", "started", "heartbeat", "running",
                   "jobs done"):
        table.add_column(column, overflow="fold")
    for w in workers:
        table.add_row(w.id, w.host, str(w.pid), render.styled(ops.worker_status(w, lease)),
                      render.when(w.started_at), f"{w.heartbeat_age:.1f} s ago",
                      f"{w.running}/{w.concurrency}", f"{w.jobs_done:,}")
    render.console.print(table)
    return 0


def add_channels_arguments(parser: argparse.ArgumentParser,
                           common: Callable[[argparse.ArgumentParser], None]) -> None:
    add_json(parser)
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    change = actions.add_parser("set", help="set a channel's capacity (every worker, "
                                             "within a second)")
    common(change)
    add_json(change)
    change.add_argument("name")
    change.add_argument("capacity", type=int)
    change.add_argument("--sequential", action="store_true",
                        help="one job at a time, in order; stops at a failed job")
    for name, help_text in (("pause", "start no more jobs of a channel"),
                            ("resume", "start jobs of a paused channel again")):
        action = actions.add_parser(name, help=help_text)
        action.add_argument("name")
        common(action)
        add_json(action)


def _channels(app: App, args: argparse.Namespace) -> int:
    action = getattr(args, "action", None)
    if action == "set":
        app.channels.set(args.name, args.capacity, sequential=args.sequential)
    elif action == "pause":
        app.channels.pause(args.name)
    elif action == "resume":
        app.channels.resume(args.name)
    rows = app.channels.status()
    if args.json:
        render.print_json([vars(row) for row in rows])
        return 0
    table = Table(show_edge=False, pad_edge=False)
    for column in ("channel", "capacity", "running", "pending", "waiting", "state"):
        table.add_column(column)
    for row in rows:
        capacity = "—" if row.capacity is None else str(row.capacity)
        if row.sequential:
            capacity += " sequential"
        table.add_row(row.name, capacity, str(row.running), str(row.pending), str(row.waiting),
                      "[yellow]paused[/]" if row.paused else "")
    render.console.print(table)
    return 0


def _stats(app: App, args: argparse.Namespace) -> int:
    if not 0 < args.days <= 36500:  # also refuses nan
        raise ConfigurationError(
            f"--days must be more than 0 and at most 36500, got {args.days:g}")
    stats = ops.task_stats(app.backend.stats(args.days))
    if args.json:
        render.print_json([{
            "task": s.task, "total": s.total,
            "counts": {str(state): n for state, n in s.counts.items()},
            "failure_rate": s.failure_rate, "avg_duration": s.avg_duration,
            "max_duration": s.max_duration,
        } for s in stats])
        return 0
    if not stats:
        render.console.print(f"no jobs in the last {args.days:g} days")
        return 0
    table = Table(title=f"jobs created in the last {args.days:g} days", show_edge=False,
                  pad_edge=False, title_justify="left")
    for column in ("task", "total", "done", "failed", "cancelled", "waiting/running",
                   "failure rate", "avg time", "max time"):
        table.add_column(column, justify="left" if column == "task" else "right")
    for s in stats:
        active = sum(n for state, n in s.counts.items()
                     if state not in (State.DONE, State.FAILED, State.CANCELLED))
        rate = "" if s.failure_rate is None else f"{s.failure_rate:.1%}"
        table.add_row(s.task, f"{s.total:,}", f"{s.counts.get(State.DONE, 0):,}",
                      f"{s.counts.get(State.FAILED, 0):,}",
                      f"{s.counts.get(State.CANCELLED, 0):,}", f"{active:,}", rate,
                      render.seconds(s.avg_duration), render.seconds(s.max_duration))
    render.console.print(table)
    return 0
