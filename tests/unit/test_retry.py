"""How the end of a try settles a job: retry pattern, max_retries, ignore_retry (SPEC 4)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any
from uuid import UUID

import pytest

from errand.errors import ConfigurationError
from errand.jobs import TRANSITIONS, ClaimedJob, Finish, Outcome, State
from errand.retry import (
    DEFAULT_RETRY_DELAY,
    TryEnd,
    Verdict,
    decode_pattern,
    encode_pattern,
    retry_delay,
    settle,
    validate_pattern,
)


def claimed(retries: int = 0, max_retries: int = 5, attempt: int = 1,
            pattern: Mapping[int, float] | None = None) -> ClaimedJob:
    return ClaimedJob(
        id=42, uuid=UUID(int=42), task="mail.send", args="[]", kwargs="{}", context="{}",
        attempt=attempt, retries=retries, max_retries=max_retries,
        retry_pattern=encode_pattern(validate_pattern(pattern)), timeout=None,
        channel="root")


def error(**fields: Any) -> TryEnd:
    return TryEnd(Verdict.RETRY, Outcome.ERROR, error_type="OSError", error_message="boom",
                  **fields)


# -- retry_delay -----------------------------------------------------------------------

def test_default_retry_delay_is_ten_minutes() -> None:
    assert DEFAULT_RETRY_DELAY == 600.0


@pytest.mark.parametrize(("retry_number", "seconds"), [
    (1, 10), (2, 10), (4, 10), (5, 60), (6, 60), (100, 60),
])
def test_retry_delay_follows_the_pattern(retry_number: int, seconds: float) -> None:
    assert retry_delay({1: 10, 5: 60}, retry_number) == seconds


def test_retry_delay_ignores_the_order_the_pattern_was_written_in() -> None:
    pattern = {10: 300, 1: 10, 5: 60}
    assert [retry_delay(pattern, n) for n in (1, 4, 5, 9, 10, 11)] == [10, 10, 60, 60, 300, 300]


@pytest.mark.parametrize("pattern", [None, {}])
def test_retry_delay_without_a_pattern_is_the_default(pattern: dict[int, float] | None) -> None:
    assert retry_delay(pattern, 1) == DEFAULT_RETRY_DELAY
    assert retry_delay(pattern, 7) == DEFAULT_RETRY_DELAY


def test_retry_delay_before_the_first_key_is_the_default() -> None:
    assert retry_delay({3: 30}, 1) == DEFAULT_RETRY_DELAY
    assert retry_delay({3: 30}, 2) == DEFAULT_RETRY_DELAY
    assert retry_delay({3: 30}, 3) == 30


def test_retry_delay_of_zero_seconds_is_kept() -> None:
    assert retry_delay({1: 0}, 1) == 0


# -- validate_pattern ------------------------------------------------------------------

def test_validate_pattern_sorts_keys_and_makes_seconds_floats() -> None:
    checked = validate_pattern({5: 60, 1: 10})
    assert checked == {1: 10.0, 5: 60.0}
    assert checked is not None
    assert list(checked) == [1, 5]
    assert all(type(v) is float for v in checked.values())


def test_validate_pattern_accepts_none() -> None:
    assert validate_pattern(None) is None


@pytest.mark.parametrize(("pattern", "fragment"), [
    ({}, "non-empty"),
    ([(1, 10)], "non-empty dict"),
    ("1:10", "non-empty dict"),
    ({0: 10}, "keys are try numbers"),
    ({-1: 10}, "keys are try numbers"),
    ({"1": 10}, "keys are try numbers"),
    ({1.0: 10}, "keys are try numbers"),
    ({True: 10}, "keys are try numbers"),
    ({1: -1}, "values are seconds"),
    ({1: "10"}, "values are seconds"),
    ({1: None}, "values are seconds"),
    ({1: True}, "values are seconds"),
])
def test_validate_pattern_refuses_bad_patterns(pattern: Any, fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        validate_pattern(pattern)


@pytest.mark.parametrize("seconds", [float("nan"), float("inf")])
def test_validate_pattern_refuses_non_finite_seconds(seconds: float) -> None:
    with pytest.raises(ConfigurationError):
        validate_pattern({1: seconds})


def test_pattern_encoding_round_trips() -> None:
    pattern = validate_pattern({1: 10, 5: 60.5})
    assert decode_pattern(encode_pattern(pattern)) == pattern
    assert encode_pattern(None) is None
    assert decode_pattern(None) is None


# -- settle: every verdict -------------------------------------------------------------

def test_success_settles_done_with_its_result() -> None:
    finish = settle(claimed(retries=2), TryEnd(Verdict.SUCCESS, Outcome.SUCCESS, result="[1]"))
    assert (finish.state, finish.retries, finish.delay) == (State.DONE, 2, 0.0)
    assert finish.result == "[1]"
    assert finish.outcome is Outcome.SUCCESS


def test_cancel_settles_cancelled() -> None:
    finish = settle(claimed(), TryEnd(Verdict.CANCEL, Outcome.CANCELLED, error_type="CancelJob"))
    assert (finish.state, finish.retries, finish.delay) == (State.CANCELLED, 0, 0.0)


def test_fail_settles_failed_even_with_retries_left() -> None:
    finish = settle(claimed(retries=0, max_retries=5),
                    TryEnd(Verdict.FAIL, Outcome.ERROR, error_type="FailedJobError"))
    assert (finish.state, finish.retries, finish.delay) == (State.FAILED, 0, 0.0)


def test_requeue_goes_back_to_pending_at_once_without_counting() -> None:
    finish = settle(claimed(retries=3, max_retries=3, pattern={1: 10}),
                    TryEnd(Verdict.REQUEUE, Outcome.INTERRUPTED))
    assert (finish.state, finish.retries, finish.delay) == (State.PENDING, 3, 0.0)
    assert finish.outcome is Outcome.INTERRUPTED


def test_retry_is_counted_and_waits_per_the_pattern() -> None:
    finish = settle(claimed(retries=4, max_retries=10, pattern={1: 10, 5: 60}), error())
    assert (finish.state, finish.retries, finish.delay) == (State.PENDING, 5, 60.0)


def test_retry_without_a_pattern_waits_the_default() -> None:
    finish = settle(claimed(pattern=None), error())
    assert (finish.state, finish.retries, finish.delay) == (State.PENDING, 1, DEFAULT_RETRY_DELAY)


def test_max_retries_three_gives_exactly_four_tries() -> None:
    """Tries 1-3 fail and are retried (retries 1, 2, 3); the fourth failure is final."""
    job = claimed(retries=0, max_retries=3, attempt=1, pattern={1: 10, 3: 30})
    decisions: list[Finish] = []
    while True:
        finish = settle(job, error())
        decisions.append(finish)
        if finish.state is not State.PENDING:
            break
        assert len(decisions) < 10, "never stops retrying"
        job = replace(job, retries=finish.retries, attempt=job.attempt + 1)
    assert [f.state for f in decisions] == [State.PENDING] * 3 + [State.FAILED]
    assert [f.retries for f in decisions] == [1, 2, 3, 3]
    assert [f.delay for f in decisions] == [10.0, 10.0, 30.0, 0.0]
    assert [f.attempt for f in decisions] == [1, 2, 3, 4]


def test_max_retries_one_fails_on_the_second_error() -> None:
    assert settle(claimed(retries=0, max_retries=1), error()).state is State.PENDING
    assert settle(claimed(retries=1, max_retries=1), error()).state is State.FAILED


def test_max_retries_zero_means_unlimited() -> None:
    finish = settle(claimed(retries=1000, max_retries=0, pattern={1: 5}), error())
    assert (finish.state, finish.retries, finish.delay) == (State.PENDING, 1001, 5.0)


def test_ignore_retry_does_not_count_even_when_out_of_retries() -> None:
    finish = settle(claimed(retries=3, max_retries=3, pattern={1: 10, 4: 40}),
                    error(ignore_retry=True))
    assert (finish.state, finish.retries) == (State.PENDING, 3)
    assert finish.delay == 40.0  # waits as the next retry would


def test_seconds_overrides_the_pattern() -> None:
    finish = settle(claimed(pattern={1: 10}), error(seconds=2.5))
    assert (finish.state, finish.retries, finish.delay) == (State.PENDING, 1, 2.5)


def test_seconds_zero_overrides_the_pattern() -> None:
    assert settle(claimed(pattern={1: 10}), error(seconds=0)).delay == 0


def test_seconds_overrides_the_pattern_with_ignore_retry() -> None:
    finish = settle(claimed(retries=1, pattern={1: 10}), error(seconds=3, ignore_retry=True))
    assert (finish.state, finish.retries, finish.delay) == (State.PENDING, 1, 3)


def test_seconds_does_not_bypass_max_retries() -> None:
    finish = settle(claimed(retries=2, max_retries=2), error(seconds=1))
    assert finish.state is State.FAILED


def test_timeout_is_a_counted_retry_logged_as_timeout() -> None:
    finish = settle(claimed(retries=0, max_retries=2, pattern={1: 7}),
                    TryEnd(Verdict.RETRY, Outcome.TIMEOUT, error_type="TimeoutError"))
    assert (finish.state, finish.retries, finish.delay) == (State.PENDING, 1, 7.0)
    assert finish.outcome is Outcome.TIMEOUT


def test_finish_carries_the_try_details_and_the_fencing_token() -> None:
    job = claimed(retries=1, max_retries=5, attempt=7)
    end = TryEnd(Verdict.RETRY, Outcome.CRASH, result=None, error_type="Crash",
                 error_message="was killed by SIGKILL", traceback="tb", duration=1.25,
                 memory_mb=88.5)
    finish = settle(job, end)
    assert finish.id == 42
    assert finish.attempt == 7  # the attempt, not the retry count
    assert finish.outcome is Outcome.CRASH
    assert (finish.error_type, finish.error_message) == ("Crash", "was killed by SIGKILL")
    assert finish.traceback == "tb"
    assert finish.duration == 1.25
    assert finish.memory_mb == 88.5


@pytest.mark.parametrize("end", [
    TryEnd(Verdict.SUCCESS, Outcome.SUCCESS),
    TryEnd(Verdict.CANCEL, Outcome.CANCELLED),
    TryEnd(Verdict.FAIL, Outcome.ERROR),
    TryEnd(Verdict.REQUEUE, Outcome.INTERRUPTED),
    TryEnd(Verdict.RETRY, Outcome.ERROR),
    TryEnd(Verdict.RETRY, Outcome.ERROR, ignore_retry=True),
], ids=lambda end: f"{end.verdict}-{end.outcome}-{end.ignore_retry}")
@pytest.mark.parametrize("retries", [0, 5])
def test_every_settled_state_is_a_transition_from_started(end: TryEnd, retries: int) -> None:
    finish = settle(claimed(retries=retries, max_retries=5), end)
    assert (State.STARTED, finish.state) in TRANSITIONS
