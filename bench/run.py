"""Run every speed benchmark (errand and its peers) and write bench/RESULTS.md.

    .venv/bin/python bench/run.py                 # everything (about half an hour)
    .venv/bin/python bench/run.py --only latency,end_to_end
    .venv/bin/python bench/run.py --smoke         # each errand script once on a tiny N

Each workload's JSON lines are kept in bench/results/<workload>.jsonl (git-ignored);
RESULTS.md is built from the latest file of every workload, so one workload can be run
again alone. `--smoke` skips the peers and RESULTS.md and exits non-zero if any script
fails: it is what CI runs to keep the scripts working (no timed assertion anywhere).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import harness
import peers

RESULTS_DIR = os.path.join(harness.BENCH_DIR, "results")
RESULTS_MD = os.path.join(harness.BENCH_DIR, "RESULTS.md")

# workload -> (script, arguments of a full run, arguments of a smoke run)
WORKLOADS: dict[str, tuple[str, list[str], list[str]]] = {
    "enqueue_single": ("enqueue_single.py", ["--with-peers"], ["--jobs", "50"]),
    "enqueue_bulk": ("enqueue_bulk.py", ["--with-peers"], ["--jobs", "50"]),
    "end_to_end": ("end_to_end.py", ["--with-peers"], ["--jobs", "50"]),
    "latency": ("latency.py", ["--with-peers"], ["--jobs", "20", "--interval", "0.005"]),
    "history": ("history.py", [], ["--jobs", "50", "--history", "500"]),
    "memory": ("memory.py", [], ["--jobs", "50"]),
}

QUICK = {"enqueue_single": ["--jobs", "1000"], "enqueue_bulk": ["--jobs", "1000"],
         "end_to_end": ["--jobs", "1000"], "latency": ["--jobs", "50"],
         "history": ["--jobs", "1000", "--history", "100000"], "memory": ["--jobs", "10000"]}


def run_script(name: str, extra: list[str]) -> list[dict[str, Any]]:
    """Run one workload's script; return its JSON lines (stderr passes through)."""
    script, _, _ = WORKLOADS[name]
    command = [sys.executable, os.path.join(harness.BENCH_DIR, script), *extra]
    harness.note(" ".join(command[1:]))
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{script} exited with status {done.returncode}")
    records = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    if not records:
        raise RuntimeError(f"{script} printed no JSON line")
    return records


def smoke(backend: str) -> int:
    failed = []
    for name, (_, _, tiny) in WORKLOADS.items():
        try:
            run_script(name, [*tiny, "--repeat", "1", "--backend", backend])
        except RuntimeError as exc:
            print(f"FAILED {name}: {exc}", file=sys.stderr)
            failed.append(name)
    print(f"smoke: {len(WORKLOADS) - len(failed)} of {len(WORKLOADS)} scripts ran"
          + (f"; failed: {', '.join(failed)}" if failed else ""), file=sys.stderr)
    return 1 if failed else 0


# -- the machine -----------------------------------------------------------------------


def cpu_model() -> str:
    with open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def ram_gb() -> float:
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024
    return 0.0


def git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True,
                          cwd=harness.BENCH_DIR, check=False).stdout.strip()


def git_commit() -> str:
    return git("rev-parse", "--short", "HEAD")


def src_version() -> str:
    """The tree of src/ at HEAD (commits that touch only tests or docs keep it), and
    whether the working copy of src/ differs from it."""
    dirty = git("status", "--porcelain", "--", "../src")
    return git("rev-parse", "--short", "HEAD:src") + ("+modified" if dirty else "")


def machine(postgres_url: str, trees: list[str], commits: list[str]) -> dict[str, Any]:
    from importlib.metadata import version

    import errand
    info: dict[str, Any] = {
        "CPU": cpu_model(), "cores": os.cpu_count(), "RAM": f"{ram_gb():.1f} GB",
        "kernel": f"{platform.system()} {platform.release()}",
        "Python": harness.python_version(),
        "SQLite": f"{sqlite3.sqlite_version} (WAL; synchronous=FULL for errand, set "
                  "explicitly, and for Huey, SQLite's compiled default)",
        "errand": f"{errand.__version__}; src/ tree measured: {', '.join(trees)} (HEAD at "
                  f"the time: {', '.join(commits)})"
                  + (" - src CHANGED between workloads: compare rows with care"
                     if len(trees) > 1 else ""),
        "psycopg (errand)": version("psycopg"),
    }
    try:
        settings = harness.postgres_settings(postgres_url)
        info["PostgreSQL"] = (f"{harness.postgres_version(postgres_url)} ("
                              + ", ".join(f"{k}={v}" for k, v in settings.items()) + ")")
    except Exception as exc:  # reported, not fatal: the SQLite rows still stand
        info["PostgreSQL"] = f"unreachable ({exc})"
    try:
        info.update({f"{name} (peers' venv)": v for name, v in peers.versions().items()})
    except Exception as exc:
        info["peers"] = f"unavailable ({exc})"
    return info


# -- the table ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """How one table row is read from the JSON lines of a workload."""

    workload: str
    label: str
    backend: str
    peer: str | None
    metric: str
    unit: str
    target: str
    check: Callable[[dict[str, Any], dict[str, Any] | None], bool | None]
    ratio: Callable[[dict[str, Any], dict[str, Any]], float] | None = None


def faster(factor: float) -> Callable[[dict[str, Any], dict[str, Any] | None], bool | None]:
    def check(ours: dict[str, Any], theirs: dict[str, Any] | None) -> bool | None:
        if theirs is None:
            return None
        return bool(throughput(ours, theirs) >= factor)
    return check


def no_target(ours: dict[str, Any], theirs: dict[str, Any] | None) -> bool | None:
    return None


def paired(metric: str) -> Callable[[dict[str, Any], dict[str, Any]], float]:
    """errand / peer, round by round (they ran back to back), then the median: steadier on
    a shared machine than the ratio of the two medians."""
    def ratio(ours: dict[str, Any], theirs: dict[str, Any]) -> float:
        pairs = zip(ours.get("per_round", [ours]), theirs.get("per_round", [theirs]),
                    strict=False)
        return harness.median([a[metric] / b[metric] for a, b in pairs])
    return ratio


throughput, p50_ratio, p99_ratio = paired("jobs_per_s"), paired("p50_ms"), paired("p99_ms")


ROWS = [
    Row("enqueue_single", "a. enqueue one at a time", "postgres", "pgqueuer", "jobs_per_s",
        "jobs/s", ">= 1.0x pgqueuer", faster(1.0), throughput),
    Row("enqueue_single", "a. enqueue one at a time", "postgres", "procrastinate",
        "jobs_per_s", "jobs/s", "—", no_target, throughput),
    Row("enqueue_single", "a. enqueue one at a time", "sqlite", "huey", "jobs_per_s",
        "jobs/s", "—", no_target, throughput),
    Row("enqueue_bulk", "b. bulk enqueue (delay_many)", "postgres", "pgqueuer", "jobs_per_s",
        "jobs/s", ">= 1.5x pgqueuer", faster(1.5), throughput),
    Row("enqueue_bulk", "b. bulk enqueue (delay_many)", "postgres", "procrastinate",
        "jobs_per_s", "jobs/s", "—", no_target, throughput),
    Row("enqueue_bulk", "b. bulk enqueue (delay_many)", "sqlite", None, "jobs_per_s",
        "jobs/s", "— (Huey has no bulk enqueue)", no_target),
    Row("end_to_end", "c. end to end, 2 processes", "postgres", "pgqueuer", "jobs_per_s",
        "jobs/s", ">= 1.5x pgqueuer", faster(1.5), throughput),
    Row("end_to_end", "c. end to end, 2 processes", "postgres", "procrastinate",
        "jobs_per_s", "jobs/s", "—", no_target, throughput),
    Row("end_to_end", "c. end to end, 2 processes", "sqlite", "huey", "jobs_per_s", "jobs/s",
        ">= 2x Huey", faster(2.0), throughput),
    Row("latency", "d. latency p50", "postgres", "pgqueuer", "p50_ms", "ms",
        "<= pgqueuer's", lambda o, t: None if t is None else bool(p50_ratio(o, t) <= 1.0),
        p50_ratio),
    Row("latency", "d. latency p99", "postgres", "pgqueuer", "p99_ms", "ms", "<= 10 ms",
        lambda o, t: bool(o["p99_ms"] <= 10.0), p99_ratio),
    Row("latency", "d. latency p50", "postgres", "procrastinate", "p50_ms", "ms", "—",
        no_target, p50_ratio),
    Row("latency", "d. latency p99", "postgres", "procrastinate", "p99_ms", "ms", "—",
        no_target, p99_ratio),
    Row("latency", "d. latency p50", "sqlite", "huey", "p50_ms", "ms", "—", no_target,
        p50_ratio),
    Row("latency", "d. latency p99", "sqlite", "huey", "p99_ms", "ms", "—", no_target,
        p99_ratio),
    Row("history", "e. claim cycle, 1M finished vs empty", "postgres", None, "overhead",
        "overhead", "<= +20%", lambda o, t: bool(o["overhead"] <= 0.20)),
    Row("history", "e. claim cycle, 1M finished vs empty", "sqlite", None, "overhead",
        "overhead", "<= +20%", lambda o, t: bool(o["overhead"] <= 0.20)),
    Row("memory", "f. supervisor RSS growth, 100k jobs", "postgres", None, "growth_mb", "MB",
        "< 5 MB", lambda o, t: bool(o["growth_mb"] < 5.0)),
    Row("memory", "f. supervisor RSS growth, 100k jobs", "sqlite", None, "growth_mb", "MB",
        "< 5 MB", lambda o, t: bool(o["growth_mb"] < 5.0)),
]


def find(records: list[dict[str, Any]], backend: str, system: str) -> dict[str, Any] | None:
    for record in records:
        if record["backend"] == backend and record["system"] == system:
            return record
    return None


def shown(value: float, unit: str) -> str:
    if unit == "overhead":
        return f"{value:+.1%}"
    if unit == "MB":
        return f"{value:+.2f} MB"
    if unit == "ms":
        return f"{value:.2f} ms"
    return f"{value:,.0f} {unit}"


def table(results: dict[str, list[dict[str, Any]]]) -> list[str]:
    lines = ["| workload | backend | errand | peer | ratio | target | met? |",
             "|---|---|---|---|---|---|---|"]
    for row in ROWS:
        records = results.get(row.workload)
        ours = find(records, row.backend, "errand") if records else None
        if ours is None:
            continue
        theirs = find(records or [], row.backend, row.peer) if row.peer else None
        peer = (f"{row.peer} {shown(theirs[row.metric], row.unit)}" if theirs
                else (f"{row.peer}: not measured" if row.peer else "—"))
        ratio = (f"{row.ratio(ours, theirs):.2f}x" if theirs is not None and row.ratio
                 else "—")
        verdict = row.check(ours, theirs)
        met = "—" if verdict is None else ("yes" if verdict else "**no**")
        lines.append(f"| {row.label} | {row.backend} | {shown(ours[row.metric], row.unit)} "
                     f"| {peer} | {ratio} | {row.target} | {met} |")
    return lines


def details(results: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Every JSON line, so no figure of the run is lost (rounds, extra fields)."""
    lines = []
    for name, records in results.items():
        lines += [f"### {name}", "", "```"]
        lines += [json.dumps({k: v for k, v in record.items() if k != "per_round"})
                  for record in records]
        lines += ["```", ""]
    return lines


def write_results(postgres_url: str, started: str,
                  loads: tuple[float, float] | None) -> None:
    results: dict[str, list[dict[str, Any]]] = {}
    stamps = []
    for name in WORKLOADS:
        path = os.path.join(RESULTS_DIR, f"{name}.jsonl")
        if os.path.exists(path):
            with open(path) as handle:
                results[name] = [json.loads(line) for line in handle if line.strip()]
            stamp = results[name][0].get("measured") or dt.datetime.fromtimestamp(
                os.path.getmtime(path)).strftime("%Y-%m-%d %H:%M")
            stamps.append(f"{name} {stamp}")
    trees = sorted({str(r.get("errand_src", "?")) for rs in results.values() for r in rs})
    commits = sorted({str(r.get("errand_commit", "?")) for rs in results.values() for r in rs})
    info = machine(postgres_url, trees, commits)
    lines = [
        "# errand speed benchmarks: results",
        "",
        f"Written by `bench/run.py` on {started} (workloads measured: {', '.join(stamps)}). "
        + (f"Load average (1 min) at start {loads[0]:.2f}, at end {loads[1]:.2f}; "
           if loads else "Table rebuilt from bench/results/; ")
        + "each result line gives the load when each system's rounds began (`load_1m`). How each "
        "system is configured, and what each workload does: `bench/README.md`. Figures are "
        "medians of the rounds; errand and its peers take turns round by round, and the "
        "ratio is the median of the per-round ratios (errand / peer, measured back to "
        "back), which a load spike on this shared machine disturbs less than the ratio of "
        "the medians.",
        "",
        *table(results),
        "",
        "## Machine",
        "",
        *[f"- {key}: {value}" for key, value in info.items()],
        "",
        "## Every result line",
        "",
        *details(results),
    ]
    with open(RESULTS_MD, "w") as handle:
        handle.write("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true",
                        help="each errand script once on a tiny N, no peers; exit 1 on failure")
    parser.add_argument("--backend", choices=("postgres", "sqlite", "all"), default="all")
    parser.add_argument("--only", help="comma-separated workloads (default: all)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds per workload (3)")
    parser.add_argument("--postgres-url", default=harness.DEFAULT_POSTGRES_URL)
    parser.add_argument("--quick", action="store_true",
                        help="a tenth of every N (to try the whole pipeline; not for results)")
    parser.add_argument("--table-only", action="store_true",
                        help="rebuild RESULTS.md from bench/results/ without running")
    args = parser.parse_args(argv)
    if args.smoke:
        return smoke(args.backend)
    names = list(WORKLOADS) if not args.only else args.only.split(",")
    unknown = set(names) - set(WORKLOADS)
    if unknown:
        parser.error(f"unknown workload(s): {', '.join(sorted(unknown))}")
    started = time.strftime("%Y-%m-%d %H:%M %Z")
    load_start = harness.load_average()
    failed: list[str] = []
    if not args.table_only:
        peers.ensure_venv()
        os.makedirs(RESULTS_DIR, exist_ok=True)
        for name in names:
            extra = [*WORKLOADS[name][1], "--backend", args.backend,
                     "--postgres-url", args.postgres_url]
            if name != "memory":
                extra += ["--repeat", str(args.repeat)]
            if args.quick:
                extra += QUICK[name]
            before, began = src_version(), time.strftime("%Y-%m-%d %H:%M")
            try:
                records = run_script(name, extra)
            except RuntimeError as exc:  # go on with the others; the table shows the gap
                harness.note(f"FAILED {name}: {exc}")
                failed.append(name)
                continue
            after = src_version()
            for record in records:  # src may move under a long run: say which code ran
                record["errand_src"] = before if after == before else f"{before}..{after}"
                record["errand_commit"] = git_commit()
                record["measured"] = f"{began}-{time.strftime('%H:%M')}"
            with open(os.path.join(RESULTS_DIR, f"{name}.jsonl"), "w") as handle:
                handle.writelines(json.dumps(record) + "\n" for record in records)
    write_results(args.postgres_url, started,
                  None if args.table_only else (load_start, harness.load_average()))
    harness.note(f"wrote {RESULTS_MD}" + (f"; FAILED: {', '.join(failed)} (their rows come "
                                          "from an earlier run, if any)" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
