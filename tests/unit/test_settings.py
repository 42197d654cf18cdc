"""Every ERRAND_* environment variable, its default, and its error message."""

from __future__ import annotations

import dataclasses
import os

import pytest

from errand.errors import ConfigurationError
from errand.settings import DEFAULT_DATABASE_URL, Settings, no_delay_enabled

EVERY_VARIABLE = {
    "ERRAND_DATABASE_URL": "postgresql://u@db.example/prod",
    "ERRAND_APP": "proj.tasks:app",
    "ERRAND_CHANNELS": "root:4,root.mail:2",
    "ERRAND_NO_DELAY": "1",
    "ERRAND_CONCURRENCY": "3",
    "ERRAND_LEASE": "12.5",
    "ERRAND_SHUTDOWN_GRACE": "7",
    "ERRAND_CANCEL_GRACE": "0.5",
    "ERRAND_POLL_INTERVAL": "0.2",
    "ERRAND_MAX_PAYLOAD": "2048",
}


def test_defaults() -> None:
    settings = Settings.from_env({})
    assert settings.database_url == DEFAULT_DATABASE_URL == "sqlite:///errand.db"
    assert settings.app is None
    assert settings.channels is None
    assert settings.no_delay is False
    assert settings.concurrency == (os.cpu_count() or 1)
    assert settings.lease == 30.0
    assert settings.shutdown_grace == 30.0
    assert settings.cancel_grace == 5.0
    assert settings.poll_interval is None
    assert settings.max_payload == 1024 * 1024


def test_every_variable_is_read() -> None:
    settings = Settings.from_env(EVERY_VARIABLE)
    assert settings == Settings(
        database_url="postgresql://u@db.example/prod", app="proj.tasks:app",
        channels="root:4,root.mail:2", no_delay=True, concurrency=3, lease=12.5,
        shutdown_grace=7.0, cancel_grace=0.5, poll_interval=0.2, max_payload=2048)
    assert type(settings.concurrency) is int
    assert type(settings.max_payload) is int
    assert type(settings.shutdown_grace) is float


def test_every_setting_has_a_variable() -> None:
    fields = {field.name for field in dataclasses.fields(Settings)}
    assert {"ERRAND_" + name.upper() for name in fields} == set(EVERY_VARIABLE)


def test_values_are_stripped_and_blank_values_mean_the_default() -> None:
    settings = Settings.from_env({"ERRAND_CONCURRENCY": " 4 ", "ERRAND_LEASE": "  ",
                                  "ERRAND_APP": "", "ERRAND_DATABASE_URL": " sqlite:///x.db\n"})
    assert settings.concurrency == 4
    assert settings.lease == 30.0
    assert settings.app is None
    assert settings.database_url == "sqlite:///x.db"


def test_other_variables_are_ignored() -> None:
    assert Settings.from_env({"ERRAND_BOGUS": "1", "LEASE": "9"}) == Settings.from_env({})


def test_given_env_replaces_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ERRAND_LEASE", "99")
    assert Settings.from_env({}).lease == 30.0
    assert Settings.from_env().lease == 99.0


@pytest.mark.parametrize(("raw", "expected"), [
    ("1", True), ("true", True), ("TRUE", True), ("yes", True), ("On", True),
    ("0", False), ("false", False), ("no", False), ("OFF", False),
])
def test_flags(raw: str, expected: bool) -> None:
    assert Settings.from_env({"ERRAND_NO_DELAY": raw}).no_delay is expected


@pytest.mark.parametrize(("variable", "raw", "fragment"), [
    ("ERRAND_NO_DELAY", "maybe", "must be 1 or 0"),
    ("ERRAND_CONCURRENCY", "0", "must be at least 1"),
    ("ERRAND_CONCURRENCY", "-2", "must be at least 1"),
    ("ERRAND_CONCURRENCY", "four", "must be a whole number"),
    ("ERRAND_CONCURRENCY", "2.5", "must be a whole number"),
    ("ERRAND_MAX_PAYLOAD", "0", "must be at least 1"),
    ("ERRAND_MAX_PAYLOAD", "1MB", "must be a whole number"),
    ("ERRAND_LEASE", "-1", "must be a finite number of seconds"),
    ("ERRAND_LEASE", "soon", "must be a number of seconds"),
    ("ERRAND_SHUTDOWN_GRACE", "-3", "must be a finite number of seconds"),
    ("ERRAND_CANCEL_GRACE", "5s", "must be a number of seconds"),
    ("ERRAND_POLL_INTERVAL", "x", "must be a number of seconds"),
])
def test_bad_value_is_refused_naming_the_variable(variable: str, raw: str,
                                                  fragment: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env({variable: raw})
    message = str(caught.value)
    assert message.startswith(variable + " ")
    assert fragment in message
    assert repr(raw) in message


@pytest.mark.parametrize(("variable", "raw"), [
    ("ERRAND_LEASE", "nan"), ("ERRAND_LEASE", "inf"), ("ERRAND_POLL_INTERVAL", "nan"),
])
def test_non_finite_seconds_are_refused(variable: str, raw: str) -> None:
    with pytest.raises(ConfigurationError, match=variable):
        Settings.from_env({variable: raw})


def test_with_overrides_replaces_only_given_values() -> None:
    base = Settings.from_env({"ERRAND_APP": "a:app", "ERRAND_CONCURRENCY": "2"})
    changed = base.with_overrides(concurrency=8, app=None, channels="root:1")
    assert (changed.concurrency, changed.app, changed.channels) == (8, "a:app", "root:1")
    assert base.concurrency == 2


@pytest.mark.parametrize(("env", "expected"), [
    ({}, False), ({"ERRAND_NO_DELAY": ""}, False), ({"ERRAND_NO_DELAY": "  "}, False),
    ({"ERRAND_NO_DELAY": "0"}, False), ({"ERRAND_NO_DELAY": "no"}, False),
    ({"ERRAND_NO_DELAY": "1"}, True), ({"ERRAND_NO_DELAY": " yes "}, True),
])
def test_no_delay_enabled(env: dict[str, str], expected: bool) -> None:
    assert no_delay_enabled(env) is expected


def test_no_delay_enabled_refuses_a_bad_value() -> None:
    with pytest.raises(ConfigurationError, match="ERRAND_NO_DELAY must be 1 or 0"):
        no_delay_enabled({"ERRAND_NO_DELAY": "sometimes"})


def test_no_delay_enabled_reads_os_environ_at_each_call(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ERRAND_NO_DELAY", raising=False)
    assert no_delay_enabled() is False
    monkeypatch.setenv("ERRAND_NO_DELAY", "1")
    assert no_delay_enabled() is True
