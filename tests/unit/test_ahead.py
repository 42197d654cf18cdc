"""ClaimAhead: how far ahead of its job processes a worker claims."""

from __future__ import annotations

import time

from errand.channels import ChannelConfig
from errand.runtime.ahead import PER_PROCESS, RATE_ENDS, ClaimAhead


def test_nothing_is_claimed_ahead_before_any_job_ended() -> None:
    ahead = ClaimAhead(concurrency=2)
    ahead.follow({})
    assert ahead.jobs() == 0
    assert ahead.depth() == 0


def test_the_rate_is_known_after_a_few_ends_without_waiting_for_the_window() -> None:
    ahead = ClaimAhead(concurrency=2)
    ahead.follow({})
    ahead._since = time.monotonic()  # a fresh window: it cannot have elapsed below
    for _ in range(RATE_ENDS - 1):
        ahead.ended()
    assert ahead.jobs() == 0  # too few ends to tell a rate yet
    ahead.ended()
    # RATE_ENDS ends in well under a window: short jobs, claimed ahead at the cap.
    assert ahead.jobs() == PER_PROCESS * 2
    assert ahead.depth() > 0


def test_a_capacity_stops_claims_ahead() -> None:
    ahead = ClaimAhead(concurrency=2)
    ahead.follow({"root": ChannelConfig(name="root", capacity=4)})
    for _ in range(RATE_ENDS):
        ahead.ended()
    assert ahead.jobs() == 0
