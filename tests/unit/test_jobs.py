"""The transitions table: what may happen to a job in each state (SPEC 3)."""

from __future__ import annotations

from collections.abc import Iterable

from errand.jobs import (
    CANCEL_FROM,
    FINISHED,
    REQUEUE_FROM,
    RUNNING,
    SET_DONE_FROM,
    TRANSITIONS,
    Outcome,
    State,
)


def reachable(starts: Iterable[State]) -> set[State]:
    seen = set(starts)
    frontier = list(seen)
    while frontier:
        here = frontier.pop()
        for source, target in TRANSITIONS:
            if source == here and target not in seen:
                seen.add(target)
                frontier.append(target)
    return seen


def sources_into(target: State) -> set[State]:
    return {source for source, to in TRANSITIONS if to == target}


def test_state_and_outcome_names_match_the_spec() -> None:
    assert {s.value for s in State} == {
        "wait_dependencies", "pending", "enqueued", "started", "done", "failed", "cancelled"}
    assert {o.value for o in Outcome} == {
        "success", "error", "timeout", "crash", "cancelled", "interrupted"}


def test_every_state_but_wait_dependencies_is_reachable_from_pending() -> None:
    assert reachable([State.PENDING]) == set(State) - {State.WAIT_DEPENDENCIES}


def test_every_state_is_reachable_from_wait_dependencies() -> None:
    assert reachable([State.WAIT_DEPENDENCIES]) == set(State)


def test_no_transition_stays_in_the_same_state() -> None:
    assert [pair for pair in TRANSITIONS if pair[0] == pair[1]] == []


def test_every_transition_names_its_cause() -> None:
    assert all(cause.strip() for cause in TRANSITIONS.values())


def test_state_groups_partition_the_states() -> None:
    waiting = {State.WAIT_DEPENDENCIES, State.PENDING}
    assert {State.DONE, State.FAILED, State.CANCELLED} == FINISHED
    assert {State.ENQUEUED, State.STARTED} == RUNNING
    assert FINISHED | RUNNING | waiting == set(State)
    assert not FINISHED & RUNNING


def test_finished_states_leave_only_by_requeue_or_set_done() -> None:
    for (source, target), cause in TRANSITIONS.items():
        if source not in FINISHED:
            continue
        if target == State.PENDING:
            assert source in REQUEUE_FROM and cause == "requeue", (source, target)
        else:
            assert target == State.DONE, (source, target)
            assert source in SET_DONE_FROM and cause == "set done", (source, target)


def test_only_a_worker_starts_a_job() -> None:
    assert sources_into(State.ENQUEUED) == {State.PENDING}
    assert sources_into(State.STARTED) == {State.ENQUEUED}


def test_requeue_from_matches_the_spec_and_the_table() -> None:
    assert REQUEUE_FROM == FINISHED
    assert all((state, State.PENDING) in TRANSITIONS for state in REQUEUE_FROM)
    requeue_causes = {source for (source, _), cause in TRANSITIONS.items()
                      if "requeue" in cause}
    assert requeue_causes == REQUEUE_FROM


def test_cancel_from_matches_the_spec_and_the_table() -> None:
    assert set(State) - FINISHED == CANCEL_FROM
    assert sources_into(State.CANCELLED) == CANCEL_FROM
    assert all("cancel" in TRANSITIONS[(state, State.CANCELLED)] for state in CANCEL_FROM)


def test_set_done_from_matches_the_spec_and_the_table() -> None:
    assert {State.FAILED, State.PENDING, State.WAIT_DEPENDENCIES} == SET_DONE_FROM
    assert all(TRANSITIONS[(state, State.DONE)] == "set done" for state in SET_DONE_FROM)
    set_done_causes = {source for (source, _), cause in TRANSITIONS.items()
                       if cause == "set done"}
    assert set_done_causes == SET_DONE_FROM
    assert sources_into(State.DONE) == SET_DONE_FROM | {State.STARTED}


def test_a_running_job_can_be_put_back_when_its_worker_is_lost() -> None:
    for state in RUNNING:
        assert (state, State.PENDING) in TRANSITIONS
        assert (state, State.FAILED) in TRANSITIONS
