"""`errand`: the command line. Errors print one line and exit non-zero; no traceback for
user mistakes (bad JSON, unknown uuid, unknown task, unreachable database)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from errand import __version__
from errand.cli import admin, jobs
from errand.demo import run as demo
from errand.errors import ErrandError


def _common(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: given before or after the command name, the option keeps its value.
    parser.add_argument("--database-url", default=argparse.SUPPRESS,
                        help="database URL (default: $ERRAND_DATABASE_URL, else "
                             "sqlite:///errand.db)")
    parser.add_argument("--app", default=argparse.SUPPRESS,
                        help="module:attribute of your errand.App (default: $ERRAND_APP)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="errand", description="errand: background jobs kept in your own database.")
    parser.add_argument("--version", action="version", version=f"errand {__version__}")
    _common(parser)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        _common(sub)
        return sub

    demo.add_arguments(command("demo", "quick start: a real scenario on SQLite, run live "
                                       "by a worker"))
    command("migrate", "create or upgrade the schema")
    admin.add_worker_arguments(command("worker", "run jobs"))
    admin.add_enqueue_arguments(command("enqueue", "store a job for a task, by name"))
    jobs.add_arguments(command("jobs", "list, show and steer jobs"), _common)
    admin.add_json(command("workers", "workers, their heartbeat and their jobs"))
    admin.add_channels_arguments(command("channels", "channels, their capacity and their "
                                                     "jobs; set, pause, resume"), _common)
    stats = command("stats", "jobs per task over the last days")
    stats.add_argument("--days", type=float, default=7.0, help="period (default: 7)")
    admin.add_json(stats)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(args, "log_level", "info").upper(), stream=sys.stderr,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    try:
        return dispatch(args)
    except ErrandError as exc:
        print(f"errand: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def dispatch(args: argparse.Namespace) -> int:
    if args.command == "demo":
        return demo.run_demo(args)
    if args.command == "jobs":
        return jobs.run(args)
    return admin.run(args)
