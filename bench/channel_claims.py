"""Cost of a claim under a 3-level channel tree, against `root` alone (no capacities).

For each backend, two fresh databases are filled with the same N ready no-op jobs,
spread over the channels of a 3-level tree. One worker drains each: `claim` up to
`--limit` jobs, `finish` them at once (so running counts stay bounded), until a claim
comes back empty. The "root" database is claimed with `channels=None` (the fast path:
one UPDATE); the "tree" database with the tree configured (the capacity-aware path).
The two drains take turns claim by claim, so a load spike on a shared machine hits both
alike. Capacities are large enough that no claim is ever throttled: both drains make the
same number of claims, and only the time spent inside `claim` is counted.

Prints one JSON line per backend; `overhead` is the tree's claim cost per job over
root's, minus 1 (target: at most 0.20), the median of `--repeat` rounds. From the
repository root:

    .venv/bin/python bench/channel_claims.py --backend all
"""

from __future__ import annotations

import argparse
import gc
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field
from typing import Protocol

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common

from errand import __version__
from errand.channels import ChannelConfig, parse_channels
from errand.jobs import Finish, NewJob, Outcome, State
from errand.storage import Backend, open_backend
from errand.storage.base import WorkerInfo

TREE = "root:64,root.a:32,root.a.x:16,root.a.y:16,root.b:32,root.b.z:16,root.c:16"
"""Three levels; with at most `--limit` (8) jobs running, no capacity ever binds."""
TARGET_OVERHEAD = 0.20
CONFIGS = ("root", "tree")


class Scratch(Protocol):
    """Where a run's databases come from (see common.py)."""

    def fresh(self, name: str) -> str: ...

    def analyze(self, url: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Drain:
    """One drain of a queue: how many claims and jobs, and where the time went."""

    claims: int
    jobs: int
    claim_seconds: float
    loop_seconds: float
    claim_p50: float

    @property
    def seconds_per_job(self) -> float:
        return self.claim_seconds / self.jobs


@dataclass(slots=True)
class Lane:
    """One configuration's database and worker, drained one claim at a time."""

    config: str
    backend: Backend
    worker_id: str
    channels: dict[str, ChannelConfig] | None
    limit: int
    latencies: list[float] = field(default_factory=list)
    loop_seconds: float = 0.0
    jobs: int = 0
    done: bool = False

    def step(self) -> None:
        """Claim once (timed) and finish what was claimed as done."""
        clock = time.perf_counter
        started = clock()
        claimed = self.backend.claim(self.worker_id, self.limit, self.channels)
        self.latencies.append(clock() - started)
        if claimed:
            self.jobs += len(claimed)
            self.backend.finish(self.worker_id, [
                Finish(id=job.id, attempt=job.attempt, state=State.DONE,
                       outcome=Outcome.SUCCESS, retries=job.retries, duration=0.0)
                for job in claimed])
        else:
            self.done = True
        self.loop_seconds += clock() - started

    def result(self) -> Drain:
        return Drain(claims=len(self.latencies), jobs=self.jobs,
                     claim_seconds=sum(self.latencies), loop_seconds=self.loop_seconds,
                     claim_p50=common.median(self.latencies))


def open_lane(scratch: Scratch, config: str, jobs: Sequence[NewJob], limit: int,
              analyze: bool = True) -> Lane:
    """A fresh database holding `jobs`, and a registered worker claiming under `config`."""
    backend = open_backend(scratch.fresh(config), pooled=False)
    try:
        common.fill(backend, jobs)
        worker_id = f"bench-{config}-{os.getpid()}"
        backend.register_worker(WorkerInfo(
            id=worker_id, host=socket.gethostname(), pid=os.getpid(), concurrency=limit,
            channels=TREE if config == "tree" else None, version=__version__))
        channels: dict[str, ChannelConfig] | None = None
        if config == "tree":  # as a worker does: store its channels, claim with what is stored
            for channel in parse_channels(TREE).values():
                backend.save_channel(channel)
            channels = backend.channel_settings()
        if analyze:
            scratch.analyze(backend.url)
    except BaseException:
        backend.close()
        raise
    return Lane(config=config, backend=backend, worker_id=worker_id, channels=channels,
                limit=limit)


def run_round(scratch: Scratch, jobs: int, limit: int, analyze: bool = True
              ) -> dict[str, Drain]:
    """Drain a root database and a tree database of `jobs` jobs each, claims alternating."""
    work = common.noop_jobs(list(parse_channels(TREE)), jobs)
    with ExitStack() as stack:
        lanes = []
        for config in CONFIGS:
            lane = open_lane(scratch, config, work, limit, analyze)
            stack.callback(lane.backend.close)
            lanes.append(lane)
        gc.collect()
        turn = 0
        while not all(lane.done for lane in lanes):
            for lane in lanes if turn % 2 == 0 else lanes[::-1]:
                if not lane.done:
                    lane.step()
            turn += 1
    results = {lane.config: lane.result() for lane in lanes}
    expected_claims = -(-jobs // limit) + 1  # the last, empty claim ends the drain
    for config, drained in results.items():
        if drained.jobs != jobs or drained.claims != expected_claims:
            raise SystemExit(f"{config}: drained {drained.jobs} jobs in {drained.claims} "
                             f"claims, expected {jobs} in {expected_claims} "
                             "(was a claim throttled?)")
    return results


def measure(backend_name: str, scratch: Scratch, jobs: int, limit: int, repeat: int,
            analyze: bool = True) -> list[dict[str, Drain]]:
    """`repeat` rounds; each round's figures go to stderr as they come."""
    rounds = []
    for number in range(1, repeat + 1):
        results = run_round(scratch, jobs, limit, analyze)
        rounds.append(results)
        root, tree = results["root"], results["tree"]
        print(f"# {backend_name} round {number}: {jobs} jobs, {root.claims} claims each; "
              f"claims root {root.claim_seconds:.3f} s, tree {tree.claim_seconds:.3f} s "
              f"(overhead {tree.claim_seconds / root.claim_seconds - 1:+.1%})",
              file=sys.stderr, flush=True)
    return rounds


def summarize(backend_name: str, rounds: list[dict[str, Drain]], jobs: int, limit: int,
              versions: dict[str, str]) -> dict[str, object]:
    """The JSON record of one backend: medians over the rounds."""
    def med(value: Callable[[dict[str, Drain]], float]) -> float:
        return common.median([value(results) for results in rounds])

    root_cost = med(lambda r: r["root"].seconds_per_job)
    tree_cost = med(lambda r: r["tree"].seconds_per_job)
    overhead = med(lambda r: r["tree"].seconds_per_job / r["root"].seconds_per_job) - 1
    return {
        "bench": "channel_claims",
        "backend": backend_name,
        "jobs": jobs,
        "claim_limit": limit,
        "repeat": len(rounds),
        "tree": TREE,
        "root_only_claims_per_s": round(med(lambda r: r["root"].claims
                                            / r["root"].claim_seconds), 1),
        "tree_claims_per_s": round(med(lambda r: r["tree"].claims
                                       / r["tree"].claim_seconds), 1),
        "root_only_jobs_per_s": round(1 / root_cost, 1),
        "tree_jobs_per_s": round(1 / tree_cost, 1),
        "root_only_claim_p50_us": round(med(lambda r: r["root"].claim_p50) * 1e6, 1),
        "tree_claim_p50_us": round(med(lambda r: r["tree"].claim_p50) * 1e6, 1),
        "overhead": round(overhead, 3),
        "target_overhead": TARGET_OVERHEAD,
        "met": overhead <= TARGET_OVERHEAD,
        "overhead_p50_claim": round(med(lambda r: r["tree"].claim_p50
                                        / r["root"].claim_p50) - 1, 3),
        "overhead_with_finish": round(med(lambda r: r["tree"].loop_seconds
                                          / r["root"].loop_seconds) - 1, 3),
        **versions,
    }


def scratch_for(backend_name: str, args: argparse.Namespace
                ) -> AbstractContextManager[common.PostgresScratch | common.SqliteScratch]:
    if backend_name == "postgres":
        return common.postgres_scratch(args.postgres_url)
    return common.sqlite_scratch(args.sqlite_dir)


def backends(choice: str) -> Iterator[str]:
    yield from ("postgres", "sqlite") if choice == "all" else (choice,)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("postgres", "sqlite", "all"), default="all")
    parser.add_argument("--jobs", type=int, default=10_000, help="jobs per drain (10000)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="rounds; the median is reported (3)")
    parser.add_argument("--limit", type=int, default=8,
                        help="jobs asked per claim, as by a worker with that many idle "
                             "processes (8)")
    parser.add_argument("--postgres-url", default=common.DEFAULT_POSTGRES_URL,
                        help="a database on the server to use; the bench creates and drops "
                             f"its own database {common.BENCH_DATABASE!r} next to it "
                             "(default: $ERRAND_TEST_POSTGRES or the local test database)")
    parser.add_argument("--sqlite-dir", default=None,
                        help="where the temporary SQLite files go (default: the system's "
                             "temporary folder)")
    parser.add_argument("--no-analyze", dest="analyze", action="store_false",
                        help="PostgreSQL: skip the VACUUM ANALYZE after filling, as on a "
                             "table autovacuum has not visited yet")
    parser.add_argument("--check", action="store_true",
                        help="exit with status 1 if a backend misses the target")
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.repeat < 1 or args.limit < 1:
        parser.error("--jobs, --repeat and --limit must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    missed = False
    for backend_name in backends(args.backend):
        with scratch_for(backend_name, args) as scratch:
            versions = {"errand": f"{__version__} ({common.source_revision()})",
                        "python": common.python_version(), "sqlite": common.sqlite_version()}
            if isinstance(scratch, common.PostgresScratch):
                versions["postgres"] = scratch.version
            rounds = measure(backend_name, scratch, args.jobs, args.limit, args.repeat,
                             args.analyze)
        record = summarize(backend_name, rounds, args.jobs, args.limit, versions)
        if backend_name == "postgres":
            record["analyzed"] = args.analyze
        common.emit(record)
        missed = missed or not record["met"]
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
