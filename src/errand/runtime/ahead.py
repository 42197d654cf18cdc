"""How far ahead of its job processes the supervisor works: how many jobs to claim beyond
the idle processes' needs, and how many next jobs a busy process may hold.

Both follow the rate at which jobs have been ending: claim ahead the jobs that will start
within the horizon, so a process that finishes gets its next job without waiting for the
database. Long jobs end slowly, so nothing is claimed ahead for them, nor under channel
capacities, which claimed jobs count against.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from errand.channels import ChannelConfig

HORIZON = 0.05
# At most this many per job process: a round claims 128 jobs for little more than 16
# (measured end to end: PostgreSQL 5,600 jobs/s at 16, 8,800 at 128; SQLite 8,900, 9,900).
PER_PROCESS = 128
RATE_WINDOW = 0.1
# Or sooner, once this many jobs have ended: a worker that starts on a full queue claims
# one job per idle process until it knows the rate, and measured end to end it ran 90 of
# its first 100 ms that way (1,000 jobs/s, a tenth of its pace once it claims ahead).
RATE_ENDS = 16
# While jobs are that short, each busy process also holds up to PIPELINE_DEPTH next jobs,
# so it never waits for the supervisor between two jobs; jobs held behind one running
# longer than RETRACT_AFTER are asked back, so they wait no longer than that.
# Measured end to end against 8: SQLite +13% at 32 (the supervisor, sharing the GIL with
# the round thread, is sometimes late to feed), PostgreSQL unchanged; 64 gains no more.
PIPELINE_DEPTH = 32
RETRACT_AFTER = 0.05


class ClaimAhead:
    """The recent end rate of one worker's jobs, and what it allows."""

    def __init__(self, concurrency: int) -> None:
        self.concurrency = concurrency
        self.allowed = False  # until the channel settings are known
        self.rate = 0.0
        self._ends = 0
        self._since = time.monotonic()

    def ended(self) -> None:
        self._ends += 1

    def follow(self, channels: Mapping[str, ChannelConfig]) -> None:
        """Claim ahead only where no capacity, sequence or pause applies."""
        self.allowed = not any(c.counts_running for c in channels.values())

    def jobs(self) -> int:
        """How many jobs to hold claimed beyond the idle processes' needs."""
        if not self.allowed:
            return 0
        now = time.monotonic()
        if now - self._since >= RATE_WINDOW or (self._ends >= RATE_ENDS and now > self._since):
            self.rate = self._ends / (now - self._since)
            self._ends = 0
            self._since = now
        return min(int(self.rate * HORIZON), PER_PROCESS * self.concurrency)

    def depth(self) -> int:
        """How many next jobs a busy process may hold."""
        return min(self.jobs() // self.concurrency, PIPELINE_DEPTH)
