"""Job options: names, value checks, defaults and how task defaults combine (SPEC 2)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from errand.errors import ConfigurationError
from errand.options import (
    DEFAULT_MAX_RETRIES,
    DEFAULT_PRIORITY,
    OPTION_NAMES,
    ROOT_CHANNEL,
    TASK_DEFAULT_NAMES,
    check,
    resolve,
    split_eta,
)

AWARE = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_defaults_match_the_spec() -> None:
    assert (DEFAULT_PRIORITY, DEFAULT_MAX_RETRIES, ROOT_CHANNEL) == (10, 5, "root")


def test_check_accepts_every_option_with_a_good_value() -> None:
    check({
        "priority": -3, "eta": 60, "max_retries": 0, "retry_pattern": {1: 10, 5: 60},
        "timeout": 0.5, "channel": "root.mail.bulk-2_x", "description": "Send",
        "context": {"user": 1}, "connection": object(),
    })


@pytest.mark.parametrize("eta", [None, 0, 1.5, -5, timedelta(minutes=2), AWARE,
                                 datetime(2030, 1, 1, tzinfo=timezone(timedelta(hours=9)))])
def test_check_accepts_every_form_of_eta(eta: Any) -> None:
    check({"eta": eta})


@pytest.mark.parametrize("channel", ["root", "root.mail", "root.a.b.c", "root.A-1_b"])
def test_check_accepts_channels_under_root(channel: str) -> None:
    check({"channel": channel})


def test_unknown_option_is_refused_listing_the_valid_ones() -> None:
    with pytest.raises(ConfigurationError) as caught:
        check({"priorty": 1})
    message = str(caught.value)
    assert "'priorty'" in message
    for name in OPTION_NAMES:
        assert name in message


def test_connection_is_not_a_task_default() -> None:
    assert "connection" not in TASK_DEFAULT_NAMES
    assert TASK_DEFAULT_NAMES < OPTION_NAMES
    with pytest.raises(ConfigurationError, match="unknown option 'connection'"):
        check({"connection": object()}, TASK_DEFAULT_NAMES)


BAD_VALUES = [
    ("priority", "1", "priority must be an int"),
    ("priority", 1.0, "priority must be an int"),
    ("priority", True, "priority must be an int"),
    ("priority", None, "priority must be an int"),
    ("max_retries", -1, "max_retries must be between 0 and"),
    ("priority", 2**31, "priority must be between"),
    ("eta", 1e15, "within 100 years"),
    ("max_retries", "3", "max_retries must be an int"),
    ("max_retries", False, "max_retries must be an int"),
    ("eta", datetime(2030, 1, 1), "timezone-aware"),
    ("eta", float("nan"), "eta must be"),
    ("eta", float("inf"), "eta must be"),
    ("eta", float("-inf"), "eta must be"),
    ("eta", "60", "eta must be"),
    ("eta", True, "eta must be"),
    ("timeout", 0, "timeout must be a positive number"),
    ("timeout", -1, "timeout must be a positive number"),
    ("timeout", float("nan"), "timeout must be a positive number"),
    ("timeout", "30", "timeout must be a positive number"),
    ("timeout", True, "timeout must be a positive number"),
    ("channel", "mail", "channel must be 'root'"),
    ("channel", "root..x", "channel must be 'root'"),
    ("channel", "root.", "channel must be 'root'"),
    ("channel", "Root", "channel must be 'root'"),
    ("channel", "rootmail", "channel must be 'root'"),
    ("channel", ".root", "channel must be 'root'"),
    ("channel", "root.mail box", "channel must be 'root'"),
    ("channel", "", "channel must be 'root'"),
    ("channel", None, "channel must be 'root'"),
    ("retry_pattern", {0: 10}, "retry_pattern keys"),
    ("description", 5, "description must be a string"),
    ("context", ["a"], "context must be a dict"),
]


@pytest.mark.parametrize(("name", "value", "fragment"), BAD_VALUES,
                         ids=[f"{n}={v!r}" for n, v, _ in BAD_VALUES])
def test_bad_value_is_refused_naming_the_option(name: str, value: Any, fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        check({name: value})


@pytest.mark.parametrize("channel", ["root\n", "root.mail\n"])
def test_channel_with_a_trailing_newline_is_refused(channel: str) -> None:
    with pytest.raises(ConfigurationError):
        check({"channel": channel})


# -- resolve ---------------------------------------------------------------------------

def test_resolve_applies_the_defaults() -> None:
    resolved = resolve({}, {})
    assert resolved.priority == 10
    assert resolved.max_retries == 5
    assert resolved.channel == "root"
    assert resolved.retry_pattern is None
    assert resolved.timeout is None
    assert resolved.description is None
    assert resolved.context == {}
    assert resolved.connection is None
    assert (resolved.eta_at, resolved.eta_in) == (None, 0.0)


def test_resolve_puts_call_options_over_task_defaults() -> None:
    defaults = {"priority": 5, "channel": "root.mail", "max_retries": 3, "timeout": 30,
                "description": "Send an email"}
    resolved = resolve(defaults, {"priority": 1, "description": "Welcome mail"})
    assert resolved.priority == 1
    assert resolved.description == "Welcome mail"
    assert resolved.channel == "root.mail"
    assert resolved.max_retries == 3
    assert resolved.timeout == 30


def test_resolve_lets_a_call_clear_a_default_timeout() -> None:
    assert resolve({"timeout": 30}, {"timeout": None}).timeout is None


def test_resolve_validates_and_sorts_the_retry_pattern() -> None:
    resolved = resolve({"retry_pattern": {10: 300, 1: 10}}, {})
    assert resolved.retry_pattern == {1: 10.0, 10: 300.0}
    assert list(resolved.retry_pattern) == [1, 10]


def test_resolve_splits_a_default_eta() -> None:
    assert resolve({"eta": 30}, {}).eta_in == 30.0
    assert resolve({"eta": 30}, {"eta": AWARE}).eta_at == AWARE


def test_resolve_keeps_context_and_connection() -> None:
    connection = object()
    resolved = resolve({"context": {"a": 1}}, {"connection": connection})
    assert resolved.context == {"a": 1}
    assert resolved.connection is connection


# -- split_eta -------------------------------------------------------------------------

@pytest.mark.parametrize(("eta", "expected"), [
    (None, (None, 0.0)),
    (0, (None, 0.0)),
    (60, (None, 60.0)),
    (1.5, (None, 1.5)),
    (timedelta(minutes=2, milliseconds=500), (None, 120.5)),
    (AWARE, (AWARE, 0.0)),
    (-5, (None, 0.0)),
    (timedelta(seconds=-5), (None, 0.0)),
])
def test_split_eta(eta: Any, expected: tuple[datetime | None, float]) -> None:
    eta_at, eta_in = split_eta(eta)
    assert (eta_at, eta_in) == expected
    assert type(eta_in) is float
