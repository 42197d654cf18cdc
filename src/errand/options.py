"""Job options (SPEC section 2): their names, their checks, and how defaults combine.

A task's defaults and a call's options go through the same checks, so a typo or a wrong
type fails where it is written, naming the option, before anything is stored.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypedDict

from errand.errors import ConfigurationError
from errand.retry import validate_pattern

DEFAULT_PRIORITY = 10
DEFAULT_MAX_RETRIES = 5
ROOT_CHANNEL = "root"

_CHANNEL = re.compile(r"root(\.[A-Za-z0-9_-]+)*")


class TaskDefaults(TypedDict, total=False):
    """Options a task may set as its defaults (`@app.task(priority=5, ...)`)."""

    priority: int
    eta: float | timedelta | datetime | None
    max_retries: int
    retry_pattern: Mapping[int, float] | None
    timeout: float | None
    channel: str
    description: str
    context: Mapping[str, Any]


class JobOptions(TaskDefaults, total=False):
    """Options of `with_delay`, `enqueue`, `Delayable.set`: a task's defaults, plus two that
    only make sense per call (an identity key names one job; a connection is the caller's)."""

    identity_key: str | None
    connection: Any


TASK_DEFAULT_NAMES = frozenset(TaskDefaults.__annotations__)
OPTION_NAMES = TASK_DEFAULT_NAMES | frozenset(JobOptions.__annotations__)


@dataclass(frozen=True, slots=True)
class Resolved:
    """Options after defaults, checked; eta split into absolute and relative parts."""

    priority: int
    max_retries: int
    retry_pattern: dict[int, float] | None
    timeout: float | None
    channel: str
    description: str | None
    identity_key: str | None
    context: Mapping[str, Any]
    connection: Any
    eta_at: datetime | None
    eta_in: float


def check(options: Mapping[str, Any], allowed: frozenset[str] = OPTION_NAMES) -> None:
    """Refuse unknown option names and values of the wrong type, naming the option."""
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ConfigurationError(
            f"unknown option {unknown[0]!r}; valid options: {', '.join(sorted(allowed))}")
    for name, value in options.items():
        _CHECKS[name](value)


def resolve(defaults: Mapping[str, Any], options: Mapping[str, Any]) -> Resolved:
    """Combine task defaults with call options (already checked) into what gets stored."""
    merged = {**defaults, **options}
    eta_at, eta_in = split_eta(merged.get("eta"))
    return Resolved(
        priority=merged.get("priority", DEFAULT_PRIORITY),
        max_retries=merged.get("max_retries", DEFAULT_MAX_RETRIES),
        retry_pattern=validate_pattern(merged.get("retry_pattern")),
        timeout=merged.get("timeout"),
        channel=merged.get("channel", ROOT_CHANNEL),
        description=merged.get("description"),
        identity_key=merged.get("identity_key"),
        context=merged.get("context") or {},
        connection=merged.get("connection"),
        eta_at=eta_at,
        eta_in=eta_in,
    )


def split_eta(eta: float | timedelta | datetime | None) -> tuple[datetime | None, float]:
    """An eta as (absolute time, or None; seconds from the database's now)."""
    if eta is None:
        return None, 0.0
    if isinstance(eta, datetime):
        return eta, 0.0
    if isinstance(eta, timedelta):
        return None, max(eta.total_seconds(), 0.0)
    return None, max(float(eta), 0.0)


INT_RANGE = (-(2**31), 2**31 - 1)  # both databases store these in 32-bit columns
MAX_ETA_SECONDS = 100 * 365 * 86400.0


def _int(name: str, minimum: int = INT_RANGE[0]) -> Any:
    def checker(value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigurationError(f"{name} must be an int, got {value!r}")
        if not minimum <= value <= INT_RANGE[1]:
            raise ConfigurationError(
                f"{name} must be between {minimum} and {INT_RANGE[1]}, got {value}")
    return checker


def _check_eta(value: Any) -> None:
    if value is None:
        return
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ConfigurationError(
                f"eta must be a timezone-aware datetime, got the naive {value.isoformat()}")
        seconds = (value - datetime.now(UTC)).total_seconds()
    elif isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, bool) or not isinstance(value, int | float) \
            or not math.isfinite(value):
        raise ConfigurationError(
            f"eta must be seconds from now, a timedelta or an aware datetime, got {value!r}")
    else:
        seconds = float(value)
    if seconds > MAX_ETA_SECONDS:
        raise ConfigurationError(f"eta must be within 100 years, got {value!r}")


def _check_timeout(value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigurationError(f"timeout must be a positive number of seconds, got {value!r}")


def _check_channel(value: Any) -> None:
    if not isinstance(value, str) or not _CHANNEL.fullmatch(value):
        raise ConfigurationError(
            f"channel must be 'root' or a dotted name under it such as 'root.mail', "
            f"got {value!r}")


def _check_text(name: str) -> Any:
    def checker(value: Any) -> None:
        if not isinstance(value, str):
            raise ConfigurationError(f"{name} must be a string, got {value!r}")
    return checker


def _check_identity_key(value: Any) -> None:
    if value is not None and (not isinstance(value, str) or not value):
        raise ConfigurationError(f"identity_key must be a non-empty string, got {value!r}")


def _check_context(value: Any) -> None:
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"context must be a dict, got {value!r}")


_CHECKS: dict[str, Any] = {
    "priority": _int("priority"),
    "eta": _check_eta,
    "max_retries": _int("max_retries", minimum=0),
    "retry_pattern": validate_pattern,
    "timeout": _check_timeout,
    "channel": _check_channel,
    "description": _check_text("description"),
    "identity_key": _check_identity_key,
    "context": _check_context,
    "connection": lambda value: None,
}
